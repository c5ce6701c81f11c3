"""The one evaluation transform: resize the short side to 256/224 of the input size, centre crop."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from engine.backbones import IMAGENET_MEAN, IMAGENET_STD


def resize_size(input_size: int) -> int:
    """The short-side resize before the centre crop (256 for 224, the paper's protocol)."""
    return int(round(input_size * 256 / 224))


class CapAspectRatio(torch.nn.Module):
    """Centre-crop the long side to at most ``max_ratio`` x the short side.

    The eval pipeline keeps only the centre of the image, so this changes nothing for ordinary photos but keeps
    a 20000x10 strip (or a tiny PNG claiming 100000x2) from being resized to a gigantic intermediate.
    """

    def __init__(self, max_ratio: float = 4.0):
        super().__init__()
        self.max_ratio = max_ratio

    def forward(self, img):
        h, w = v2.functional.get_size(img)
        short = min(h, w)
        cap = max(1, int(short * self.max_ratio))
        if max(h, w) <= cap:
            return img
        return v2.functional.center_crop(img, [min(h, cap), min(w, cap)])


def eval_transform(input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, input_size, input_size)."""
    return v2.Compose([
        v2.ToImage(),
        CapAspectRatio(4.0),
        v2.Resize(resize_size(input_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(input_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])
