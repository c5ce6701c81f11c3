"""Two-view data: augmentations and order are pure functions of (seed, epoch, index); shards are disjoint."""

from __future__ import annotations

import torch
from PIL import Image

from training.augment import EpochSampler, TwoViewDataset, epoch_permutation, moco_v2_transform
from training.trainer import lr_at


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.images = [Image.fromarray(torch.randint(0, 255, (40, 40, 3), generator=g, dtype=torch.uint8).numpy())
                       for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0, f"img{i}"


def test_views_depend_only_on_seed_epoch_index():
    ds = TwoViewDataset(_Images(), moco_v2_transform(32, (0.5,) * 3, (0.25,) * 3), seed=7)
    (a_q, a_k), idx = ds[3]
    assert idx == 3 and a_q.shape == (3, 32, 32) and not torch.equal(a_q, a_k)
    torch.rand(100)  # unrelated use of the global RNG changes nothing
    state = torch.random.get_rng_state()
    (b_q, b_k), _ = ds[3]
    assert torch.equal(a_q, b_q) and torch.equal(a_k, b_k)
    assert torch.equal(state, torch.random.get_rng_state())  # and the global RNG is left as it was
    ds.set_epoch(1)
    (c_q, _), _ = ds[3]
    assert not torch.equal(a_q, c_q)


def test_epoch_sampler_shards_and_order():
    s0 = EpochSampler(20, batch_size=3, seed=1, rank=0, world_size=2)
    s1 = EpochSampler(20, batch_size=3, seed=1, rank=1, world_size=2)
    assert len(s0) == len(s1) == 9  # 20 // (3 * 2) = 3 steps of 3 per rank
    a, b = list(s0), list(s1)
    assert not set(a) & set(b)
    assert a == list(EpochSampler(20, 3, seed=1, rank=0, world_size=2))
    s0.set_epoch(1)
    assert list(s0) != a
    assert torch.equal(epoch_permutation(20, 1, 0), epoch_permutation(20, 1, 0))
    assert len(EpochSampler(100, 10, max_steps=2)) == 20


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 1.0, 10) == 0.1
    assert lr_at(9, 100, 1.0, 10) == 1.0
    assert lr_at(10, 100, 1.0, 10) == 1.0
    assert abs(lr_at(55, 100, 1.0, 10) - 0.5) < 1e-9
    assert lr_at(100, 100, 1.0, 0) == 0.0
