"""The one evaluation transform: resize the short side to 256/224 of the input size, centre crop."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
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


class ToNormalizedFloat(torch.nn.Module):
    """uint8 image tensor -> ``(x / 255 - mean) / std`` as float32, in one pass.

    Same values as ``v2.ToDtype(float32, scale=True)`` + ``v2.Normalize`` (to float rounding), in one pass over
    a contiguous result: those two convert a strided (HWC-backed) view and allocate twice, which cost more than
    the JPEG decode of a small photo (the build's data path: ``benchmarks/embed_throughput --data-only``).

    A CPU image is converted by numpy, which starts no threads: this runs in the decode and view threads beside
    the model, and a torch op there would start an OpenMP team in each such thread; libgomp then counts more
    threads than cores and its threads stop spinning between the model's parallel regions (on 2 cores: 1,725
    sleeps per training step, the step 1.088x as long: ``benchmarks/results/data_threads.md``). The same float32
    multiply then add as the torch ops (tested to 1e-6).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        std_t = torch.as_tensor(list(std), dtype=torch.float64).view(-1, 1, 1)
        mean_t = torch.as_tensor(list(mean), dtype=torch.float64).view(-1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).float()
        self.shift = (-mean_t / std_t).float()

    def forward(self, img):
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {type(img).__name__} "
                            f"{getattr(img, 'dtype', '')}".rstrip())
        x = img.as_subclass(torch.Tensor)
        if x.device.type != "cpu":
            x = x.to(torch.float32, memory_format=torch.contiguous_format)
            return x.mul_(self.scale.to(x.device)).add_(self.shift.to(x.device))
        out = np.empty(tuple(x.shape), np.float32)  # C order: a contiguous tensor
        np.multiply(x.numpy(), self.scale.numpy(), out=out)
        out += self.shift.numpy()
        return torch.from_numpy(out)


def eval_transform(input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, input_size, input_size)."""
    return v2.Compose([
        v2.ToImage(),
        CapAspectRatio(4.0),
        v2.Resize(resize_size(input_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(input_size),
        ToNormalizedFloat(mean, std),
    ])


#: how the photo is fitted into the square input (``EncoderConfig.view``)
VIEWS = ("center", "full", "pad")


class PadToSquare(torch.nn.Module):
    """Pad the short side of a uint8 image tensor symmetrically to make it square, with a constant fill.

    A CPU image is padded by numpy (no torch threads in the decode threads: :class:`ToNormalizedFloat`)."""

    def __init__(self, fill: Sequence[int]):
        super().__init__()
        self.fill = [int(v) for v in fill]

    def forward(self, img):
        h, w = v2.functional.get_size(img)
        if h == w:
            return img
        side = max(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        x = img.as_subclass(torch.Tensor) if isinstance(img, torch.Tensor) else None
        if x is None or x.device.type != "cpu" or x.ndim != 3 or len(self.fill) != x.shape[0]:
            return v2.functional.pad(img, [left, top, side - w - left, side - h - top], fill=self.fill)
        out = np.empty((x.shape[0], side, side), np.uint8)
        out[...] = np.asarray(self.fill, np.uint8).reshape(-1, 1, 1)
        out[:, top:top + h, left:left + w] = x.numpy()
        return tv_tensors.wrap(torch.from_numpy(out), like=img) if isinstance(img, tv_tensors.TVTensor) else (
            torch.from_numpy(out))


def view_transform(view: str, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S) for a view of the photo.

    ``center``: the short side resized to 256/224 of S, then the centre S x S (:func:`eval_transform`; cuts the
    ends of a wide subject); ``full``: the whole photo resized to S x S (aspect not kept); ``pad``: the whole
    photo with its long side resized to S, padded to a square with the normalisation mean's colour.
    """
    if view == "center":
        return eval_transform(input_size, mean, std)
    if view == "full":
        fit = [CapAspectRatio(4.0), v2.Resize((input_size, input_size), antialias=True)]
    elif view == "pad":
        fill = [int(round(255 * m)) for m in mean]
        fit = [CapAspectRatio(4.0), v2.Resize(input_size - 1, max_size=input_size, antialias=True),
               PadToSquare(fill), v2.Resize((input_size, input_size), antialias=True)]
    else:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    return v2.Compose([v2.ToImage(), *fit, ToNormalizedFloat(mean, std)])
