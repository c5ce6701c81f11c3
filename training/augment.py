"""MoCo v2 augmentations and the two-view training dataset with reproducible randomness.

Every sample's augmentation is drawn from a torch RNG seeded by ``(seed, epoch, index)``, so the
views depend neither on the number of DataLoader workers nor on what ran before: a resumed run sees
exactly the images an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


def moco_v2_transform(input_size: int, mean: Sequence[float], std: Sequence[float], *,
                      min_scale: float = 0.2, jitter: float = 0.4, hue: float = 0.1) -> v2.Compose:
    """MoCo v2 view: random resized crop, colour jitter (p 0.8), grey (p 0.2), blur (p 0.5), flip.

    Works on PIL images (the engine datasets' output), where these ops are several times faster than on
    tensors on CPU; the tensor conversion comes last. The blur kernel and sigma range (0.1-2.0 px at 224) scale with ``input_size`` so small synthetic
    images are blurred as much, relatively, as ImageNet-sized ones.
    """
    s = input_size / 224.0
    kernel = max(3, int(round(0.1 * input_size)) | 1)  # odd, ~10 % of the side (23 at 224)
    ops = [v2.RandomResizedCrop(input_size, scale=(min_scale, 1.0), antialias=True)]
    if jitter > 0 or hue > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, hue)], p=0.8))
    ops += [
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1 * s, 2.0 * s))], p=0.5),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    return v2.Compose(ops)


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
        gen_state = torch.random.get_rng_state()
        try:
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))  # CPU RNG only
            views = (self.transform(image), self.transform(other))
        finally:
            torch.random.set_rng_state(gen_state)
        return views, index


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
