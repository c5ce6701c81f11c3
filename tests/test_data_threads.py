"""The CPU data paths run in threads beside the model and must start no torch (OpenMP) threads there.

A torch op that goes parallel in such a thread starts an OpenMP team of its own; libgomp then manages more
threads than there are cores and stops spin-waiting between the model's parallel regions (on 2 cores: 1,725
sleeps per training step and the step 1.088x as long; benchmarks/results/data_threads.md). These tests run each piece of the decode
and view path in a fresh thread with 2 torch threads and count the OS threads it leaves behind; a positive
control (a large torch op, which must start a team) shows the count can see a team on this platform.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _threads_started_by(fn) -> int:
    """OS threads that appear while ``fn`` runs in a fresh thread under 2 torch threads, still alive after it."""
    result, errors = {}, []

    def run():
        try:
            before = _threads()
            fn()
            result["new"] = len(_threads() - before)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    old = torch.get_num_threads()
    torch.set_num_threads(2)  # a new thread takes this count when it first runs a parallel op
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(old)
    if errors:
        raise errors[0]
    return result["new"]


@pytest.fixture(scope="module")
def detectable():
    if not os.path.isdir("/proc/self/task") or not torch.backends.openmp.is_available():
        pytest.skip("needs Linux /proc and a torch built with OpenMP")
    if _threads_started_by(lambda: torch.ones(1 << 21).mul_(2)) < 1:
        pytest.skip("a large torch op started no thread here: the count cannot see a team on this platform")


def _photo(w=320, h=240, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("view", ["center", "full", "pad"])
def test_search_views_start_no_torch_threads(detectable, view):
    from engine.preprocess import view_transform

    transform, photo = view_transform(view, 224), _photo()
    assert _threads_started_by(lambda: transform(photo)) == 0


def test_training_views_and_batches_start_no_torch_threads(detectable):
    from training.augment import TwoViewDataset, collate_views, moco_v2_transform

    photos = [(_photo(seed=i), 0, f"p{i}") for i in range(8)]
    data = TwoViewDataset(photos, moco_v2_transform(224, (0.5,) * 3, (0.5,) * 3), seed=1,
                          partners=[[(i + 1) % 8] for i in range(8)], partner_prob=1.0)
    items = [data[i] for i in range(8)]
    assert _threads_started_by(lambda: data[3]) == 0
    assert _threads_started_by(lambda: collate_views(items)) == 0


def test_collate_views_is_default_collate():
    from torch.utils.data import default_collate

    from training.augment import collate_views

    g = torch.Generator().manual_seed(0)
    items = [((torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)), i) for i in (4, 0, 7)]
    (q, k), idx = collate_views(items)
    (q0, k0), idx0 = default_collate(items)
    assert torch.equal(q, q0) and torch.equal(k, k0) and torch.equal(idx, idx0) and idx.dtype == idx0.dtype


def test_normalisation_matches_the_torch_ops():
    """numpy's float32 multiply then add on a strided (HWC-backed) view gives torch's values (to float rounding)."""
    from torchvision.transforms.v2 import functional as F

    from engine.preprocess import ToNormalizedFloat

    norm = ToNormalizedFloat((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = F.pil_to_tensor(_photo(37, 23))
    got = norm(x)
    want = x.to(torch.float32).mul(norm.scale).add(norm.shift)
    assert got.is_contiguous() and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(5, 9), (9, 5), (7, 7), (1, 30)])
def test_pad_to_square_is_torchvision_pad(hw):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from engine.preprocess import PadToSquare

    h, w = hw
    x = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h)))
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    want = v2.functional.pad(x, [left, top, side - w - left, side - h - top], fill=[128, 10, 200])
    got = PadToSquare([128, 10, 200])(x)
    assert isinstance(got, tv_tensors.Image) and torch.equal(got.as_subclass(torch.Tensor), want.as_subclass(torch.Tensor))


def test_thread_batches_keep_order_and_end_their_threads():
    from engine.batches import thread_batches

    order = [3, 1, 4, 1, 5]
    for prefetch in (False, True):
        assert list(thread_batches(lambda i: 10 * i, order, 2, 3, list, prefetch=prefetch)) == [[30, 10], [40, 10], [50]]
        assert list(thread_batches(lambda i: i, order, 2, 2, list, drop_last=True, prefetch=prefetch)) == [[3, 1], [4, 1]]
    assert list(thread_batches(lambda i: i, [7], 2, 1, list, drop_last=True)) == []
    gen = thread_batches(lambda i: i, range(6), 2, 2, list, name="ppssl-test")
    assert next(gen) == [0, 1]
    assert any(t.name.startswith("ppssl-test") for t in threading.enumerate())
    gen.close()
    assert not any(t.name.startswith("ppssl-test") for t in threading.enumerate())


def test_feature_pass_on_cpu_matches_one_forward_per_photo():
    """``extract_pooled`` on a CPU makes its batches in threads: same features, in dataset order, as the
    encoder's forward on each photo alone, with labels aligned."""
    from engine.embed import embed_batch, extract_pooled
    from engine.encoder import create_encoder

    enc = create_encoder("tinycnn", pooling="attention").eval()
    transform = enc.transform()
    photos = [(transform(_photo(64 + 8 * i, 48, seed=i)), i % 3, f"p{i}") for i in range(7)]
    feats, labels = extract_pooled(enc, photos, ("attention", "gap"), batch_size=3, num_workers=2, device="cpu",
                                   progress=False)
    assert labels.tolist() == [i % 3 for i in range(7)]
    for i, (x, _, _) in enumerate(photos):
        one = embed_batch(enc, x[None], ("attention", "gap"))
        for p in ("attention", "gap"):
            np.testing.assert_allclose(feats[p][i], one[p][0], atol=1e-5)
    assert not any(t.name.startswith("ppssl-data") for t in threading.enumerate())
