"""Retrieval GradCAM and attention overlays against hand-computed references (tinycnn, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.encoder import create_encoder
from engine.gradcam import (SimilarityTarget, attention_overlay, cam_model, display_crop, overlay,
                            retrieval_gradcam)


def _photo(seed: int, w: int = 140, h: int = 110) -> Image.Image:
    """A structured test image: smooth colour field plus a bright blob at a seed-dependent spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), xx * yy], -1) * 0.3 + 0.4
    cy, cx = rng.integers(20, h - 20), rng.integers(20, w - 20)
    img[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < 150] = rng.random(3)
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    enc = create_encoder("tinycnn").eval()
    # Non-trivial BN statistics so the maps are not dominated by the random-init scale.
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return enc


def _reference_cams(enc, query_feature: np.ndarray, images: list[Image.Image]) -> np.ndarray:
    """GradCAM by hand: w_c = mean_hw d(sim)/dF_c, cam = relu(sum_c w_c F_c), then the library's
    normalise -> resize to the input size -> normalise (pytorch_grad_cam.utils.image.scale_cam_image).

    The batch is the same as the one under test: batched and single-image convolutions round
    differently, which the min-max normalisation would amplify where a raw map is nearly flat.
    """
    from pytorch_grad_cam.utils.image import scale_cam_image

    x = torch.stack([enc.transform()(img) for img in images])
    with torch.enable_grad():
        fmap = enc.forward_features(x)
        sims = enc.forward_head(fmap) @ torch.from_numpy(query_feature)
        (grad,) = torch.autograd.grad(sims.sum(), fmap)  # eval-mode BN: samples are independent
    w = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((w * fmap).sum(1)).detach().numpy()  # (B, h, w)
    size = enc.config.input_size
    return scale_cam_image(scale_cam_image(cam, (size, size)))


def test_retrieval_gradcam_matches_hand_computed_autograd(encoder):
    query, results = _photo(1), [_photo(2), _photo(3), _photo(4)]
    with torch.no_grad():
        q = encoder(encoder.transform()(query)[None])[0].numpy()
    size = encoder.config.input_size
    maps = retrieval_gradcam(cam_model(encoder), q, results, size=size)
    assert len(maps) == 3
    refs = _reference_cams(encoder, q, results)
    nonzero = 0
    for got, ref in zip(maps, refs):
        assert got.shape == (size, size) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-4)
        nonzero += ref.max() > 0.5
    assert nonzero >= 2  # the comparison is not between two blank maps
    # A different query explains the same result differently.
    with torch.no_grad():
        q2 = encoder(encoder.transform()(_photo(9))[None])[0].numpy()
    other = retrieval_gradcam(cam_model(encoder), q2, results[:1], size=size)[0]
    assert np.abs(other - maps[0]).max() > 0.05


def test_gradcam_leaves_the_serving_encoder_untouched(encoder):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = cam_model(encoder)
    q = np.ones(encoder.feature_dim, np.float32) / np.sqrt(encoder.feature_dim)
    maps = retrieval_gradcam(model, q, [_photo(5)])
    assert maps[0].shape == (224, 224) and 0.0 <= maps[0].min() and maps[0].max() <= 1.0
    assert all(p.grad is None for p in encoder.parameters())
    for name, stage in model.backbone.stages.items():
        assert not stage._forward_hooks, f"hook left on {name}"
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="unknown layer"):
        retrieval_gradcam(model, q, [_photo(5)], layer="layer9")


def test_similarity_target_is_inner_product():
    q = np.array([0.6, 0.8, 0.0], np.float32)
    out = torch.tensor([0.0, 1.0, 5.0])
    assert float(SimilarityTarget(q)(out)) == pytest.approx(0.8)


def test_attention_overlay_is_the_models_map_upsampled(encoder):
    img = _photo(6)
    heat = attention_overlay(encoder, img, size=192)
    with torch.no_grad():
        a = encoder.attention(encoder.forward_features(encoder.transform()(img)[None]))
    ref = F.interpolate(a, size=(192, 192), mode="bilinear", align_corners=False)[0, 0].numpy()
    ref = (ref - ref.min()) / (ref.max() - ref.min() + 1e-7)
    assert heat.shape == (192, 192)
    np.testing.assert_allclose(heat, ref, atol=1e-5)


@pytest.mark.parametrize("view", ["center", "full", "pad"])
def test_display_crop_matches_eval_transform_geometry(encoder, view):
    img = _photo(7, w=300, h=120)
    before, encoder.config.view = encoder.config.view, view
    try:
        crop = display_crop(img, encoder.config.input_size, size=encoder.config.input_size, view=view,
                            mean=encoder.config.mean)
        x = encoder.transform()(img)
    finally:
        encoder.config.view = before
    mean = torch.tensor(encoder.config.mean).view(3, 1, 1)
    std = torch.tensor(encoder.config.std).view(3, 1, 1)
    ref = (x * std + mean).permute(1, 2, 0).numpy()
    assert crop.shape == ref.shape
    assert np.abs(crop - ref).mean() < 0.02  # same geometry; only the resampling filter differs


def test_overlay_opacity_extremes():
    rgb = np.full((8, 8, 3), 0.5, np.float32)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    assert np.array_equal(overlay(rgb, heat, 0.0), np.full((8, 8, 3), 128, np.uint8))
    full = overlay(rgb, heat, 1.0)
    assert full[3, 3, 0] > 100 and full[3, 3, 2] < 50  # JET: hot = red
    assert full[0, 0, 2] > 100 and full[0, 0, 0] < 50  # cold = blue
    half = overlay(rgb, heat, 0.5)
    assert not np.array_equal(half, full)
    with pytest.raises(ValueError):
        overlay(rgb, np.zeros((4, 4), np.float32), 0.5)
