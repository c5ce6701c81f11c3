"""The one evaluation transform: resize the short side to 256/224 of the input size, centre crop."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from engine.backbones import IMAGENET_MEAN, IMAGENET_STD


def resize_size(input_size: int) -> int:
    """The short-side resize before the centre crop (256 for 224, the paper's protocol)."""
    return int(round(input_size * 256 / 224))


def eval_transform(input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, input_size, input_size)."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize_size(input_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(input_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def denormalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo :func:`eval_transform`'s normalisation (for overlays), values in [0, 1]."""
    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    return (batch * s + m).clamp(0, 1)
