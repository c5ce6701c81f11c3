"""Backbones, the attention head, the inference feature, and checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from engine.attention import AttentionHead, attention_pool
from engine.backbones import WeightsError, create_backbone, list_backbones, read_state_dict
from engine.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from engine.encoder import create_encoder


def test_registry_lists_required_backbones():
    assert {"resnet18", "resnet50", "efficientnet_lite0", "tinycnn"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("vgg99")


@pytest.mark.parametrize("name,channels", [("tinycnn", 256), ("resnet18", 512), ("resnet50", 2048),
                                           ("efficientnet_lite0", 1280)])
def test_backbones_expose_last_feature_map(name, channels):
    bb = create_backbone(name).eval()
    with torch.no_grad():
        fmap = bb(torch.randn(2, 3, 64, 64))
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, channels) and bb.out_channels == channels
    assert set(bb.stages) == {"layer1", "layer2", "layer3", "layer4"}


def test_attention_head_is_relu_maxout_of_1x1_conv():
    torch.manual_seed(0)
    head = AttentionHead(5, k=3)
    fmap = torch.randn(2, 5, 4, 4)
    manual = torch.einsum("bchw,kc->bkhw", fmap, head.conv.weight[:, :, 0, 0]) + head.conv.bias.view(1, -1, 1, 1)
    expected = manual.clamp(min=0).max(dim=1, keepdim=True).values
    assert torch.allclose(head(fmap), expected, atol=1e-6)
    assert head(fmap).shape == (2, 1, 4, 4)


def test_inference_feature_is_l2norm_of_attention_pooled_map():
    torch.manual_seed(0)
    enc = create_encoder("tinycnn", pooling="attention").eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        fmap = enc.forward_features(x)
        a = enc.attention(fmap)
        expected = F.normalize((fmap * a).mean(dim=(2, 3)), dim=1)
        got = enc(x)
        gap = enc.forward_head(fmap, pooling="gap")
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(gap, F.normalize(fmap.mean(dim=(2, 3)), dim=1), atol=1e-6)
    assert torch.allclose(attention_pool(fmap, None), fmap.mean(dim=(2, 3)))


def test_fresh_encoder_defaults_to_gap():
    assert create_encoder("tinycnn").config.pooling == "gap"


def test_checkpoint_roundtrip_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    enc = create_encoder("tinycnn", pooling="attention").eval()
    with torch.no_grad():  # make BN statistics non-trivial
        enc.train()(torch.randn(4, 3, 96, 96))
    enc.eval()
    fp = save_checkpoint(enc, tmp_path / "ck", training={"method": "ppssl"})
    back = create_encoder(str(tmp_path / "ck"))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(enc(x), back(x))
    assert back.fingerprint == fp and back.config.pooling == "attention"
    cfg = read_checkpoint_config(tmp_path / "ck")
    assert cfg["training"] == {"method": "ppssl"} and cfg["encoder"]["feature_dim"] == 256


def test_tampered_weights_are_refused(tmp_path):
    enc = create_encoder("tinycnn")
    save_checkpoint(enc, tmp_path / "ck")
    wfile = tmp_path / "ck" / "model.safetensors"
    data = bytearray(wfile.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's bytes
    wfile.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified"):
        load_checkpoint(tmp_path / "ck")


def test_weights_from_another_checkpoint_are_refused(tmp_path):
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "a")
    torch.manual_seed(123)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "a")


def test_malformed_config_is_refused(tmp_path):
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a ppssl-encoder"):
        load_checkpoint(tmp_path / "ck")


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED','w').write('x')",))


def test_pickle_payload_weights_are_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"conv.weight": _Boom()}))
    with pytest.raises(WeightsError):
        read_state_dict(bad)
    assert not (tmp_path / "PWNED").exists()


def test_local_weights_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = create_encoder("resnet18")
    state = {k.removeprefix("body."): v for k, v in src.backbone.state_dict().items()}
    # torchvision names: body.0 -> conv1 ... map back through the known Sequential order
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    tv_state = {}
    for k, v in state.items():
        idx, rest = k.split(".", 1)
        tv_state[f"{names[int(idx)]}.{rest}"] = v
    save_file(tv_state, str(tmp_path / "r18.safetensors"))
    loaded = create_encoder("resnet18", weights=str(tmp_path / "r18.safetensors"))
    for (ka, a), (kb, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        if ka.startswith("backbone."):
            assert torch.equal(a, b), ka
    with pytest.raises(WeightsError, match="does not fit"):
        create_encoder("resnet50", weights=str(tmp_path / "r18.safetensors"))


def test_same_name_and_weights_give_identical_encoders():
    """An index records a backbone name + weights and must be able to rebuild the very same encoder."""
    torch.manual_seed(0)
    a = create_encoder("efficientnet_lite0", weights="imagenet", pooling="attention")
    torch.manual_seed(1)
    b = create_encoder("efficientnet_lite0", weights="imagenet", pooling="attention")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_one_rule_for_checkpoint_or_backbone(tmp_path, monkeypatch):
    """engine.encoder.is_checkpoint_ref decides for both create_encoder and the indexer's EncoderSpec."""
    from engine.encoder import is_checkpoint_ref
    from indexer.encoders import EncoderSpec

    monkeypatch.chdir(tmp_path)
    assert is_checkpoint_ref("tinycnn") is False
    assert is_checkpoint_ref("runs/x/last") is True and is_checkpoint_ref("model.safetensors") is True
    (tmp_path / "mine").mkdir()
    assert is_checkpoint_ref("mine") is True
    assert EncoderSpec.parse("mine").checkpoint is not None and EncoderSpec.parse("tinycnn").backbone == "tinycnn"
    (tmp_path / "tinycnn").mkdir()  # a folder named like a backbone: ambiguous, refused by both
    with pytest.raises(ValueError, match="both a backbone name"):
        is_checkpoint_ref("tinycnn")
    with pytest.raises(ValueError, match="both a backbone name"):
        EncoderSpec.parse("tinycnn")
    assert is_checkpoint_ref("./tinycnn") is True


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)])
def test_eval_transform_matches_torchvision_normalisation(mean, std):
    """The fused uint8 -> normalised float step gives torchvision's ToDtype + Normalize values, as a plain
    contiguous tensor (what collate and channels_last conversion expect)."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from engine.preprocess import eval_transform

    rng = np.random.default_rng(0)
    for shape in ((300, 227, 3), (200, 640, 3), (64, 64, 3)):
        im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        ref = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])(im)
        out = eval_transform(224, mean, std)(im)
        assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.is_contiguous()
        assert out.shape == ref.shape == (3, 224, 224)
        torch.testing.assert_close(out, ref.as_subclass(torch.Tensor), rtol=0, atol=1e-5)


def test_normalisation_refuses_float_input():
    from engine.preprocess import ToNormalizedFloat

    with pytest.raises(TypeError, match="uint8"):
        ToNormalizedFloat((0.5,) * 3, (0.5,) * 3)(torch.zeros(3, 4, 4))
