"""Training from a weak start: the run's baselines and verdict, mutual / re-mined neighbour positives, the
resized-copy cache for camera photos, threaded deterministic views, and the progress file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from engine.synth import generate_world

    out = tmp_path_factory.mktemp("weak_world") / "w"
    generate_world(out, classes=4, per_class=10, size=32, seed=1, clutter="low", coarse_per_family=0, progress=False)
    return out


def _cfg(world, out, **kw) -> TrainConfig:
    base = dict(dataset="cub200", root=str(world), out=str(out), backbone="tinycnn", weights=None, input_size=32,
                batch_size=8, queue_size=16, proj_hidden=32, proj_dim=16, attn_k=8, epochs=2, workers=2,
                progress=False, tensorboard=False, eval_batch_size=16, method="moco", lr=0.05, log_every=1,
                moco_momentum=0.99, eval_split="test", eval_every=0, whiten_dim=8, whiten_neighbours=3,
                neighbour_positives=3, resize_cache=False)
    base.update(kw)
    return TrainConfig(**base).validate()


def test_report_scores_the_start_and_the_head_alone_and_says_whether_training_paid(world, tmp_path):
    from engine.datasets import build_dataset
    from engine.encoder import create_encoder
    from engine.embed import extract_features
    from engine.metrics import retrieval_metrics
    from training.trainer import train

    cfg = _cfg(world, tmp_path / "run")
    report = train(cfg)
    # the start encoder, rebuilt independently (same seed, same init), scored with the engine's metrics
    torch.manual_seed(cfg.seed)
    start = create_encoder("tinycnn", None, input_size=32, attn_k=8).eval()
    test = build_dataset("cub200", world, split="test", transform=start.transform())
    feats, labels = extract_features(start, test, progress=False)
    ref = retrieval_metrics(feats, labels).summary
    got = report["baselines"]["start"]["gap"]
    assert got["mAP"] == pytest.approx(ref["mAP"], abs=1e-5) and got["rank-1"] == pytest.approx(ref["rank-1"])
    assert set(report["baselines"]) == {"start", "start+head"}
    v = report["verdict"]
    trained, head = report["last"]["metrics"]["gap"], report["baselines"]["start+head"]["gap"]
    assert v["against"] == "start+head" and v["delta_mAP"] == pytest.approx(trained["mAP"] - head["mAP"])
    assert v["trained_won"] == (trained["mAP"] > head["mAP"])
    assert ("did not pay" in v["text"]) == (not v["trained_won"])
    assert json.loads((tmp_path / "run" / "baselines.json").read_text()) == report["baselines"]
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["phase"] == "done"


def test_unlabelled_runs_have_no_verdict(world, tmp_path):
    from training.trainer import train

    report = train(_cfg(world, tmp_path / "run", eval_split="none", epochs=1))
    assert report["baselines"] is None and report["verdict"] is None


def test_mutual_neighbours_match_brute_force():
    from training.trainer import mutual_only

    rng = np.random.default_rng(0)
    nn = torch.as_tensor(np.stack([rng.choice([j for j in range(12) if j != i], 4, replace=False)
                                   for i in range(12)]))
    got = mutual_only(nn)
    rows = nn.tolist()
    for i in range(12):
        assert got[i] == [j for j in rows[i] if i in rows[j]]


def test_neighbours_are_mined_again_with_the_adapting_encoder(world, tmp_path, monkeypatch):
    from training.trainer import Trainer

    calls = []
    tr = Trainer(_cfg(world, tmp_path / "run", neighbour_refresh=1, neighbour_mutual=True, eval_split="none"))
    orig = tr._neighbours

    def spy(base):
        calls.append(tr.step)
        return orig(base)

    monkeypatch.setattr(tr, "_neighbours", spy)
    first = tr.train_set.partners
    assert isinstance(first, list)  # mutual neighbours: a ragged list per image
    tr.fit()
    assert calls == [tr.steps_per_epoch]  # once, at the start of the second epoch, with the trained weights


def test_threaded_views_are_deterministic_and_equal_to_one_thread(world, tmp_path):
    from engine.batches import thread_batches
    from training.augment import collate_views
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "run", eval_split="none"))
    tr.train_set.set_epoch(0)
    order = list(range(16))

    def _cpu_batches(data, order, size, threads, prefetch=False):  # as Trainer.loader makes them on a CPU
        return thread_batches(data.__getitem__, order, size, threads, collate_views, drop_last=True,
                              prefetch=prefetch)

    one = list(_cpu_batches(tr.train_set, order, 8, 1))
    three = list(_cpu_batches(tr.train_set, order[:-1], 8, 3))  # a partial last batch is dropped
    ahead = list(_cpu_batches(tr.train_set, order, 8, 2, prefetch=True))  # the next batch made during the step
    assert len(one) == len(ahead) == 2 and len(three) == 1
    for other in (three, ahead):
        for ((a_q, a_k), ia), ((b_q, b_k), ib) in zip(one, other):
            assert torch.equal(a_q, b_q) and torch.equal(a_k, b_k) and torch.equal(ia, ib)
    state = torch.random.get_rng_state()
    list(_cpu_batches(tr.train_set, order, 8, 2))
    assert torch.equal(state, torch.random.get_rng_state())


def test_moco_view_draws_crops_like_torchvision():
    """The crop box follows RandomResizedCrop's rule: inside the image, area and aspect within their ranges."""
    from training.augment import MoCoV2View

    view = MoCoV2View(32, (0.5,) * 3, (0.5,) * 3, min_scale=0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = view.crop_box(120, 80, g)
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 120
        assert 0.2 * 9600 * 0.8 <= h * w <= 9600 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert view.crop_box(1000, 10, g)[2:] == (10, 13)  # too wide for any draw: torchvision's central fallback


@pytest.mark.parametrize("blur, lo, hi", [(0.0, 0, 0), (1.0, 200, 200), (0.5, 70, 130)])
def test_moco_view_blurs_with_its_probability(monkeypatch, blur, lo, hi):
    """``blur_prob`` is the share of views that go through Pillow's Gaussian blur (binomial bounds at p 0.5)."""
    from PIL import Image

    from training.augment import MoCoV2View

    calls = []
    real = Image.Image.filter
    monkeypatch.setattr(Image.Image, "filter", lambda im, f: calls.append(f) or real(im, f))
    view = MoCoV2View(32, (0.5,) * 3, (0.5,) * 3, blur=blur)
    img = Image.new("RGB", (48, 40), (200, 30, 90))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        view(img, g)
    assert lo <= len(calls) <= hi


def test_blur_prob_is_checked():
    from training.config import ConfigError

    assert TrainConfig().blur_prob == 0.5
    with pytest.raises(ConfigError, match="blur_prob"):
        TrainConfig(blur_prob=1.5).validate()


def _jpeg(path: Path, size, orientation: int | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    arr[: size[1] // 2, :, 0] = 255  # top half red: shows the orientation
    im = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90, exif=exif)


def test_resized_copies_are_made_once_by_content_and_report_bad_files(tmp_path):
    from PIL import Image

    from engine.imageio import open_image
    from engine.resized import prepare

    big, rotated, small, bad = (tmp_path / n for n in ("big.jpg", "rot.jpg", "small.jpg", "bad.jpg"))
    _jpeg(big, (1600, 1200))
    _jpeg(rotated, (1600, 1200), orientation=6)  # stored landscape, shown portrait
    _jpeg(small, (300, 200))
    bad.write_bytes(big.read_bytes()[:5000])  # truncated
    (tmp_path / "copy.jpg").write_bytes(big.read_bytes())
    paths = [str(p) for p in (big, rotated, small, bad, tmp_path / "copy.jpg")]
    use, failed = prepare(paths, 400, tmp_path / "cache", progress=False)
    assert [p for p, _ in failed] == [str(bad)]
    assert use[2] == str(small) and use[0] == use[4] != str(big)  # same content, one copy
    with Image.open(use[0]) as im:
        assert min(im.size) == 400 and im.size == (533, 400)
    upright = open_image(str(rotated))
    with Image.open(use[1]) as im:
        assert im.size == (400, 533) and upright.size == (1200, 1600)
        a = np.asarray(im.convert("RGB").resize((30, 40), Image.Resampling.BOX)).astype(float)
        b = np.asarray(upright.resize((30, 40), Image.Resampling.BOX)).astype(float)
        assert np.abs(a - b).mean() < 8  # the same upright picture (the red half on the right)
    again, _ = prepare(paths, 400, tmp_path / "cache", progress=False)
    assert again == use


def test_training_decodes_the_copies_but_keeps_the_listed_paths(tmp_path):
    from training.trainer import Trainer

    for c in range(2):
        for i in range(5):
            _jpeg(tmp_path / "photos" / f"c{c}" / f"{i}.jpg", (900 + 10 * i + 100 * c, 700))
    cfg = _cfg(tmp_path / "photos", tmp_path / "run", dataset="images", resize_cache=True,
               resize_cache_dir=str(tmp_path / "cache"), holdout="0.2", eval_split="holdout", epochs=1,
               batch_size=4, whiten_dim=0, neighbour_positives=0)
    tr = Trainer(cfg)
    base = tr.train_set.base
    assert all(p.startswith(str(tmp_path / "photos")) for p, _ in base.samples)
    assert all(str(tmp_path / "cache") in d for d in base.decode_from)
    assert [Path(p).name for p, _ in tr.eval_set().samples] == ["0.jpg", "0.jpg"]  # the rule's first photo per class
    assert min(base[0][0].size) == 72  # ceil(32 / sqrt(0.2)): the smallest crop keeps full resolution


def test_copies_are_large_enough_for_the_runs_own_embeddings(tmp_path):
    """With crops of the whole photo (crop_min_scale 1) the copies still serve the eval size the run embeds at
    (neighbours, head, held-out scores), not only the 224-px crops."""
    from engine.preprocess import view_transform
    from engine.resized import copy_side
    from training.trainer import Trainer

    assert copy_side(224, 0.2, 288) == 501 and copy_side(224, 1.0) == 224
    assert copy_side(224, 1.0, 288) == 329 >= 288 * 256 / 224 - 0.5  # the centre view's resize, the most any view asks
    for i in range(5):
        _jpeg(tmp_path / "photos" / "c0" / f"{i}.jpg", (1200, 900))
    cfg = _cfg(tmp_path / "photos", tmp_path / "run", dataset="images", resize_cache=True, crop_min_scale=1.0,
               resize_cache_dir=str(tmp_path / "cache"), eval_size=64, eval_split="none", epochs=1,
               batch_size=4, whiten_dim=0, neighbour_positives=0)
    base = Trainer(cfg).train_set.base
    assert all(str(tmp_path / "cache") in d for d in base.decode_from)  # copies are made ...
    assert min(base[0][0].size) == 73  # ... at the centre view's resize of 64 (73), not at the 32-px crops' 32
    for view in ("center", "full", "pad"):  # no view of the run's eval size upsamples the copy
        resize = [t for t in view_transform(view, 64).transforms if type(t).__name__ == "Resize"][0]
        assert (resize.size[0] if isinstance(resize.size, (list, tuple)) else resize.size) <= 73


def test_automatic_queue_and_a_larger_eval_size(world, tmp_path):
    from engine.encoder import create_encoder
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "run", queue_size=0, eval_size=48, eval_split="none", epochs=1,
                      batch_size=4))
    n = len(tr.train_set.base)
    assert tr.queue.size == max(4, n // 4 // 4 * 4)
    (x_q, x_k), _ = next(iter(tr.loader(0)))
    assert x_q.shape[-1] == 32  # training views at input_size
    assert tr.eval_set is not None and tr.encoder.config.input_size == 48
    tr.fit()
    assert create_encoder(str(tmp_path / "run" / "last")).config.input_size == 48  # the saved encoder embeds at 48


def test_prefetch_makes_the_next_batch_while_the_caller_holds_this_one():
    """With ``prefetch`` the second batch's views are made before the caller asks for it (during the step);
    without it, nothing is made until the caller asks."""
    import threading

    from torch.utils.data import default_collate

    from engine.batches import thread_batches

    class Items(torch.utils.data.Dataset):
        def __init__(self):
            self.second = threading.Event()

        def __len__(self):
            return 8

        def __getitem__(self, i):
            if i >= 4:
                self.second.set()
            return torch.full((2,), float(i)), i

    for prefetch, expect in ((True, True), (False, False)):
        items = Items()
        batches = thread_batches(items.__getitem__, range(8), 4, 2, default_collate, prefetch=prefetch)
        first, idx = next(batches)
        assert idx.tolist() == [0, 1, 2, 3]
        assert items.second.wait(timeout=10 if expect else 0.5) is expect
        second, idx = next(batches)
        assert idx.tolist() == [4, 5, 6, 7] and torch.equal(second[:, 0], torch.arange(4, 8.0))
        batches.close()


@pytest.mark.parametrize("factor", [0.0, 0.07, -0.1, -0.5])
def test_hue_shift_gives_torchvisions_pixels(factor):
    """The table lookup hue shift equals torchvision's ``adjust_hue`` exactly: on every 24-bit colour (one
    4096 x 4096 image holds them all) and on a photo-like image of odd size; other modes are passed through."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from training.augment import adjust_hue

    code = np.arange(1 << 24, dtype=np.uint32)
    every = np.stack([code >> 16, (code >> 8) & 255, code & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    rng = np.random.default_rng(1)
    photo = np.clip(rng.normal(128, 60, (37, 53, 3)), 0, 255).astype(np.uint8)
    for arr in (every, photo):
        img = Image.fromarray(arr, "RGB")
        assert np.array_equal(np.asarray(adjust_hue(img, factor)), np.asarray(F.adjust_hue(img, factor)))
    grey = Image.fromarray(photo[..., 0], "L")
    assert np.array_equal(np.asarray(adjust_hue(grey, factor)), np.asarray(grey))
