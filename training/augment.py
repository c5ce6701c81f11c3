"""MoCo v2 augmentations and the two-view training dataset with reproducible randomness.

Every sample's augmentation is drawn from a torch RNG seeded by ``(seed, epoch, index)``, so the
views depend neither on the number of DataLoader workers nor on what ran before: a resumed run sees
exactly the images an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Sequence

import torch
from torch.utils.data import Dataset


class PILGaussianBlur(torch.nn.Module):
    """Gaussian blur of a PIL image with sigma drawn uniformly from ``sigma`` (torch's RNG): MoCo v2's own blur
    (Pillow's ``ImageFilter.GaussianBlur``), about 20x cheaper on CPU than torchvision's kernel convolution of a
    PIL image (10 ms of a 10 ms view at 224 px; benchmarks/train_data_path.py). Tensors are refused."""

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def forward(self, img):
        from PIL import Image, ImageFilter

        if not isinstance(img, Image.Image):
            raise TypeError(f"PILGaussianBlur takes PIL images, got {type(img).__name__}")
        lo, hi = self.sigma
        radius = lo + (hi - lo) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius))


class MoCoV2View(torch.nn.Module):
    """MoCo v2 view of a PIL image: random resized crop, colour jitter (p 0.8), grey (p 0.2), blur (p ``blur``,
    MoCo v2: 0.5), flip, then the normalised float tensor (3, S, S).

    Every random draw comes from the ``generator`` passed to the call (the global RNG when None), so a view is a
    pure function of (image, generator state) and views can be made in parallel threads. The parameters are
    drawn as torchvision's ``RandomResizedCrop``, ``ColorJitter`` (random order of the four adjustments),
    ``RandomGrayscale`` and ``RandomHorizontalFlip`` draw them; the ops are torchvision's functional ones on PIL
    images, where they are several times faster than on tensors on CPU (the hue shift gives the same pixels through
    lookup tables, :func:`adjust_hue`), and the blur is MoCo v2's own (:class:`PILGaussianBlur`). The blur's sigma
    range (0.1-2.0 px at 224) scales with ``input_size`` so small synthetic images are blurred as much, relatively,
    as ImageNet-sized ones. At MoCo v2's 0.5 the blur is about a fifth of the views' CPU time
    (benchmarks/results/train_data_path.md), hence its probability is a setting.
    """

    def __init__(self, input_size: int, mean: Sequence[float], std: Sequence[float], *, min_scale: float = 0.2,
                 jitter: float = 0.4, hue: float = 0.1, blur: float = 0.5,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__()
        from engine.preprocess import ToNormalizedFloat

        self.size = int(input_size)
        self.scale = (float(min_scale), 1.0)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio
        self.jitter, self.hue, self.blur = float(jitter), float(hue), float(blur)
        s = input_size / 224.0
        self.sigma = (0.1 * s, 2.0 * s)
        self.normalize = ToNormalizedFloat(mean, std)

    def crop_box(self, width: int, height: int, gen) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` as ``RandomResizedCrop`` draws it (10 tries, then the central fallback)."""
        area = width * height
        for _ in range(10):
            target = area * _uniform(gen, *self.scale)
            aspect = math.exp(_uniform(gen, *self.log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=gen))
                left = int(torch.randint(0, width - w + 1, (), generator=gen))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def forward(self, img, generator: torch.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        g = generator
        top, left, h, w = self.crop_box(*img.size, g)
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        if (self.jitter > 0 or self.hue > 0) and _uniform(g, 0, 1) < 0.8:
            j = self.jitter
            order = torch.randperm(4, generator=g).tolist()
            b, c, s = (_uniform(g, max(0.0, 1 - j), 1 + j) for _ in range(3))
            hue = _uniform(g, -self.hue, self.hue)
            for op in order:
                if op == 0 and j > 0:
                    img = F.adjust_brightness(img, b)
                elif op == 1 and j > 0:
                    img = F.adjust_contrast(img, c)
                elif op == 2 and j > 0:
                    img = F.adjust_saturation(img, s)
                elif op == 3 and self.hue > 0:
                    img = adjust_hue(img, hue)
        if _uniform(g, 0, 1) < 0.2:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        if _uniform(g, 0, 1) < self.blur:
            from PIL import ImageFilter

            img = img.filter(ImageFilter.GaussianBlur(_uniform(g, *self.sigma)))
        if _uniform(g, 0, 1) < 0.5:
            img = F.horizontal_flip(img)
        return self.normalize(F.pil_to_tensor(img))


class _HSVTables:
    """Pillow's RGB->HSV and HSV->RGB conversions of all 2^24 colours, as two uint32 lookup tables (64 MB each,
    built once per process by Pillow itself, so they are Pillow's own results on any CPU)."""

    _lock = threading.Lock()
    tables: tuple | None = None

    @classmethod
    def get(cls):
        if cls.tables is not None:  # built: no lock on the views' path
            return cls.tables
        with cls._lock:
            if cls.tables is None:
                import numpy as np
                from PIL import Image

                code = np.arange(1 << 24, dtype=np.uint32)  # colour (a, b, c) at index a | b << 8 | c << 16
                pixels = np.empty((1 << 24, 4), np.uint8)
                for byte in range(3):
                    pixels[:, byte] = (code >> (8 * byte)) & 0xFF
                pixels[:, 3] = 0
                del code
                rgb = Image.frombuffer("RGBX", (4096, 4096), pixels, "raw", "RGBX", 0, 1).convert("RGB")
                hsv = rgb.convert("HSV")  # the same triples read as RGB -> HSV ...
                back = Image.frombytes("HSV", rgb.size, rgb.tobytes()).convert("RGB")  # ... and as HSV -> RGB
                del rgb
                tables = []
                for im in (hsv, back):  # raw bytes (converting HSV to RGBX would convert colours), 4 per entry
                    pixels[:, :3] = np.frombuffer(im.tobytes(), np.uint8).reshape(-1, 3)
                    tables.append(pixels.view("<u4").ravel().copy())  # little-endian on any CPU
                cls.tables = tuple(tables)
            return cls.tables


def adjust_hue(img, hue_factor: float):
    """Torchvision's ``adjust_hue`` of a PIL RGB image, pixel for pixel, in less time.

    Torchvision converts to HSV with Pillow, shifts the hue byte and converts back; the two conversions made the
    hue shift the dearest colour op of a view. Here both are table lookups of Pillow's own results
    (:class:`_HSVTables`); speeds side by side in ``benchmarks/results/view_ops.md``. Other modes go to torchvision.
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    if img.mode != "RGB" or not -0.5 <= hue_factor <= 0.5:
        return F.adjust_hue(img, hue_factor)
    to_hsv, to_rgb = _HSVTables.get()
    shift = np.uint32(int(np.int32(hue_factor * 255).astype(np.uint8)))  # torchvision's wrap-around byte
    hsv = to_hsv[np.frombuffer(img.convert("RGBX").tobytes(), "<u4") & np.uint32(0xFFFFFF)]
    hue = (hsv + shift) & np.uint32(0xFF)
    hsv &= np.uint32(0xFFFF00)
    hsv |= hue
    return Image.frombuffer("RGBX", img.size, to_rgb[hsv], "raw", "RGBX", 0, 1).convert("RGB")


def _uniform(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def moco_v2_transform(input_size: int, mean: Sequence[float], std: Sequence[float], *,
                      min_scale: float = 0.2, jitter: float = 0.4, hue: float = 0.1,
                      blur: float = 0.5) -> MoCoV2View:
    """The MoCo v2 view (:class:`MoCoV2View`) with these settings."""
    return MoCoV2View(input_size, mean, std, min_scale=min_scale, jitter=jitter, hue=hue, blur=blur)


_GLOBAL_RNG = threading.Lock()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (run seed, epoch, sample index)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TwoViewDataset(Dataset):
    """Wraps an engine dataset (items ``(PIL image, label, path)``) into ``((view_q, view_k), index)``.

    Labels are not returned: training is self-supervised. The index lets tests check the data order.

    With ``partners`` (per image, the indices of its nearest neighbours under the start encoder), the key
    view is, with probability ``partner_prob``, an augmentation of one of them instead of the image itself
    (neighbour positives, as in NNCLR / mean-shift SSL): the contrastive loss then pulls look-alike photos
    together, not only two crops of one photo. Choices are a pure function of (seed, epoch, index).
    """

    def __init__(self, base: Dataset, transform, seed: int = 0, partners=None, partner_prob: float = 0.5):
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.partners = partners
        self.partner_prob = float(partner_prob)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image = self.base[index][0]
        other = image
        if self.partners is not None and len(self.partners[index]):
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -4 - index))
            if float(torch.rand((), generator=g)) < self.partner_prob:
                j = int(self.partners[index][int(torch.randint(len(self.partners[index]), (), generator=g))])
                other = self.base[j][0]
        if isinstance(self.transform, MoCoV2View):  # its own generator: thread-safe, the global RNG untouched
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            return (self.transform(image, g), self.transform(other, g)), index
        with _GLOBAL_RNG:  # any other transform draws from the global RNG: seed it, one sample at a time
            gen_state = torch.random.get_rng_state()
            try:
                torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))  # CPU RNG only
                views = (self.transform(image), self.transform(other))
            finally:
                torch.random.set_rng_state(gen_state)
        return views, index


def collate_views(items) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``default_collate`` of :class:`TwoViewDataset` items, ``((view_q, view_k), index)``, stacked by numpy.

    On a CPU the batches are made by threads beside the model; a torch op there (``torch.stack`` of a batch
    goes parallel) would start an OpenMP team in that thread and slow the model's own team
    (:class:`engine.preprocess.ToNormalizedFloat` says how); numpy starts no threads.
    """
    import numpy as np

    qs, ks, idx = zip(*((q, k, i) for (q, k), i in items))
    q, k = (torch.from_numpy(np.stack([t.numpy() for t in views])) for views in (qs, ks))
    return (q, k), torch.tensor(idx)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(n, generator=g)


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic shuffling (a function of seed and epoch), sharded across ranks.

    Like ``DistributedSampler`` with ``drop_last=True`` over whole global batches: each rank gets
    ``steps * batch_size`` indices, rank r taking positions r, r + world, ... of the permutation.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_steps: int | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        steps = n // (batch_size * world_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        used = perm[: self.steps * self.batch_size * self.world_size]
        return iter(used[self.rank::self.world_size].tolist())
