"""The fine-tuning recipe's parts: holdout split, frozen stages, per-group learning rates, WiSE-FT
interpolation, learned whitening (fit, checkpoint round trip, trainer integration), `eval --checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ConfigError, TrainConfig

from test_training_trainer import world  # noqa: F401  (the same tiny synthetic world fixture)


def _cfg(world, out, **kw) -> TrainConfig:
    base = dict(dataset="cub200", root=str(world), out=str(out), backbone="tinycnn", weights=None, input_size=32,
                batch_size=8, queue_size=16, proj_hidden=32, proj_dim=16, attn_k=8, epochs=1, workers=0,
                progress=False, tensorboard=False, eval_batch_size=16, lr=0.05, method="moco", freeze_bn=True)
    base.update(kw)
    return TrainConfig(**base).validate()


# --- holdout -----------------------------------------------------------------------------------------

def test_holdout_fraction_and_ids_file_are_disjoint_from_training(world, tmp_path):
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout

    ds = build_dataset("cub200", world, split="train")
    rest, held = split_holdout(ds, "0.25")
    assert len(rest) + len(held) == len(ds)
    assert not {p for p, _ in rest.samples} & {p for p, _ in held.samples}
    per_class = np.bincount([y for _, y in held.samples], minlength=len(ds.classes))
    assert (per_class >= 1).all()  # every class with 2+ images keeps at least one out
    again = split_holdout(build_dataset("cub200", world, split="train"), "0.25")[1]
    assert again.samples == held.samples  # deterministic
    ids = tmp_path / "val_ids.txt"
    ids.write_text("\n".join(str(i) for i in ds.image_ids[:3]) + "\n")
    rest, held = split_holdout(ds, str(ids))
    assert [str(i) for i in held.image_ids] == [str(i) for i in ds.image_ids[:3]] and len(rest) == len(ds) - 3


def test_holdout_config_trains_on_the_rest_and_evaluates_the_held_out_part(world, tmp_path):
    from training.trainer import Trainer

    with pytest.raises(ConfigError, match="holdout"):
        _cfg(world, tmp_path / "bad", eval_split="holdout")
    tr = Trainer(_cfg(world, tmp_path / "r", holdout="0.25", eval_split="holdout"))
    train_paths = {p for p, _ in tr.train_set.base.samples}
    eval_paths = {p for p, _ in tr.eval_set().samples}
    assert eval_paths and not train_paths & eval_paths
    assert isinstance(tr.eval_set()[0][0], torch.Tensor)  # evaluated through the encoder's eval transform


# --- frozen stages, learning-rate groups, WiSE-FT ----------------------------------------------------

def test_frozen_stages_get_no_gradient_and_train_at_their_own_rate(world, tmp_path):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "r", frozen_through="layer2", backbone_lr_mult=0.1))
    bb = tr.student.encoder.backbone
    frozen = [n for n, p in bb.named_parameters() if not p.requires_grad]
    stage2_last = list(bb.stages["layer2"].parameters())[-1]
    assert frozen and all(p.requires_grad is False for p in bb.stages["layer1"].parameters())
    assert not stage2_last.requires_grad and all(p.requires_grad for p in bb.stages["layer3"].parameters())
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    tr.out.mkdir(parents=True)
    (x_q, x_k), idx = next(iter(tr.loader(0)))
    tr.train_step(x_q, x_k, idx)
    for n, p in bb.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n
    scales = sorted(g["lr_scale"] for g in tr.optimizer.param_groups)
    assert scales == [0.1, 1.0]
    opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt == {id(p) for p in tr.student.parameters() if p.requires_grad}


def test_wise_alpha_saves_the_interpolation_and_keeps_training_the_raw_weights(world, tmp_path):
    from engine.encoder import create_encoder
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "r", wise_alpha=0.25, epochs=1, eval_every=0))
    start = {k: v.clone() for k, v in tr.initial_backbone.items()}
    tr.fit()
    trained = tr.student.encoder.backbone.state_dict()
    saved = create_encoder(str(tmp_path / "r" / "last")).backbone.state_dict()
    moved = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(saved[k], 0.25 * trained[k] + 0.75 * start[k], rtol=1e-5, atol=1e-6)


# --- whitening ---------------------------------------------------------------------------------------

def test_fit_whitening_decorrelates_the_fitted_features():
    from engine.whitening import Whitening, fit_whitening

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16)) + 3.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean, proj = fit_whitening(x, 8, power=1.0)
    z = (torch.as_tensor(x, dtype=torch.float32) - mean) @ proj
    cov = np.cov(z.numpy().T)
    np.testing.assert_allclose(cov, np.eye(8), atol=1e-3)  # full whitening: identity covariance
    w = Whitening(16, 8)
    w.mean.copy_(mean), w.proj.copy_(proj)
    out = w(torch.as_tensor(x[:5], dtype=torch.float32))
    assert out.shape == (5, 8) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError):
        fit_whitening(x[:4], 8)


def test_whitened_encoder_round_trips_through_a_checkpoint(tmp_path):
    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from engine.whitening import fit_whitening

    torch.manual_seed(0)
    enc = create_encoder("tinycnn").eval()
    x = torch.rand(40, 3, 32, 32)
    with torch.no_grad():
        plain = enc(x)
    enc.set_whitening(*fit_whitening(plain.numpy(), 16))
    assert enc.feature_dim == 16
    with torch.no_grad():
        white = enc(x)
    assert white.shape == (40, 16)
    fp = save_checkpoint(enc, tmp_path / "ck")
    back = create_encoder(str(tmp_path / "ck")).eval()
    assert back.config.whiten_dim == 16 and back.feature_dim == 16 and back.fingerprint == fp
    with torch.no_grad():
        torch.testing.assert_close(back(x), white, rtol=1e-5, atol=1e-5)
    fp_plain = save_checkpoint(create_encoder("tinycnn"), tmp_path / "plain")
    assert fp_plain != fp


def _train_with_fit_spy(world, out, monkeypatch, **kw):
    """Train with a whitening head and a 0.5 holdout; return (trainer, report, paths the head was fitted on,
    training paths, held-out paths), the last two computed independently of the trainer."""
    import engine.embed
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout
    from training.trainer import Trainer

    seen: list[list[str]] = []
    real = engine.embed.extract_features

    def spy(model, dataset, *a, **k):
        if k.get("desc") == "fitting whitening":
            seen.append([str(p) for p, _ in dataset.base.samples])
        return real(model, dataset, *a, **k)

    monkeypatch.setattr(engine.embed, "extract_features", spy)
    tr = Trainer(_cfg(world, out, whiten_dim=4, holdout="0.5", eval_split="holdout", **kw))
    rep = tr.fit()
    rest, held = split_holdout(build_dataset("cub200", world, split="train"), "0.5")
    return tr, rep, seen, {str(p) for p, _ in rest.samples}, {str(p) for p, _ in held.samples}


def _assert_fitted_on_training_only(seen, train_paths, held_paths):
    assert len(seen) == 1, "the head is fitted exactly once, after the last epoch"
    fitted = set(seen[0])
    assert not fitted & held_paths, f"the head saw {len(fitted & held_paths)} held-out photos"
    assert fitted == train_paths


def test_trainer_fits_whitening_after_the_last_epoch_on_training_images_only(world, tmp_path, monkeypatch):
    from engine.encoder import create_encoder

    tr, rep, seen, train_paths, held_paths = _train_with_fit_spy(world, tmp_path / "r", monkeypatch)
    assert train_paths and held_paths and not train_paths & held_paths
    _assert_fitted_on_training_only(seen, train_paths, held_paths)
    enc = create_encoder(str(tmp_path / "r" / "last"))
    assert enc.config.whiten_dim == 4 and enc.feature_dim == 4
    assert tr.student.encoder.whiten is None  # the training model itself is untouched


def test_the_head_fit_guard_fails_when_the_fit_sees_held_out_photos(world, tmp_path, monkeypatch):
    """Mutation check: a trainer that fits its head on the held-out photos must trip the guard above."""
    from training.trainer import Trainer

    original = Trainer.fit_whitening

    def leaky(self):
        kept = self.train_set.base
        self.train_set.base = self._held_out
        try:
            original(self)
        finally:
            self.train_set.base = kept

    monkeypatch.setattr(Trainer, "fit_whitening", leaky)
    _, _, seen, train_paths, held_paths = _train_with_fit_spy(world, tmp_path / "r", monkeypatch)
    with pytest.raises(AssertionError, match="held-out"):
        _assert_fitted_on_training_only(seen, train_paths, held_paths)


# --- eval --checkpoint -------------------------------------------------------------------------------

def test_eval_takes_a_checkpoint(world, tmp_path, capsys):
    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from ppssl.cli import main

    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn", input_size=32), tmp_path / "ck")
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--dataset", "cub200", "--root", str(world),
                 "--split", "test", "--workers", "0", "--out", str(tmp_path / "m")]) == 0
    rep = json.loads((tmp_path / "m" / "eval.json").read_text())
    assert rep["encoder"] == str(tmp_path / "ck")
    # against scikit-learn over the checkpoint's features, computed here
    from engine.checkpoint import load_checkpoint
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from ranking import sklearn_loo_map

    enc = load_checkpoint(tmp_path / "ck")
    feats, labels = extract_features(enc, build_dataset("cub200", str(world), split="test", transform=enc.transform()),
                                     batch_size=16, num_workers=0, device="cpu", progress=False)
    r1, m = sklearn_loo_map(feats, labels)
    assert rep["metrics"]["mAP"] == pytest.approx(m, abs=2e-3) and rep["metrics"]["rank-1"] == pytest.approx(r1, abs=0.05)
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--dataset", "cub200", "--root", str(world)]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err


# --- any folder of photos ----------------------------------------------------------------------------

def _photos(root: Path, classes: list[str] | None, per: int = 6, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes or [""]):
        d = root / c if c else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            arr = (rng.random((40, 40, 3)) * 60 + 60 * ci).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"p{i}.jpg")


def test_images_reader_labels_from_class_folders_or_none(tmp_path):
    from engine.datasets import build_dataset
    from engine.datasets.images import UNLABELED

    _photos(tmp_path / "flat", None)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = build_dataset("images", tmp_path / "flat", split="train")
    assert len(flat) == 6 and flat.classes == [UNLABELED]
    _photos(tmp_path / "tree", ["a", "b"])
    tree = build_dataset("images", tmp_path / "tree", split="train")
    assert tree.classes == ["a", "b"] and len(tree) == 12
    _photos(tmp_path / "tree", None, per=1)  # an image beside the folders: no longer class-like
    assert build_dataset("images", tmp_path / "tree", split="train").classes == [UNLABELED]


@pytest.mark.parametrize("labelled", [True, False])
def test_train_images_cli_on_a_folder_skips_bad_files(tmp_path, capsys, labelled):
    from engine.encoder import create_encoder
    from ppssl.cli import main

    photos = tmp_path / "photos"
    _photos(photos, ["a", "b"] if labelled else None, per=8)
    bad = photos / ("a" if labelled else "") / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "run"
    argv = ["train", "--images", str(photos), "--out", str(out), "--backbone", "tinycnn", "--weights", "none",
            "--method", "moco", "--epochs", "1", "--batch-size", "4", "--queue-size", "8", "--input-size", "32",
            "--workers", "0", "--quiet", "--set", "proj_hidden=16", "--set", "proj_dim=8", "--set", "tensorboard=false"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipping 1 unreadable image" in captured.err
    skipped = json.loads((out / "skipped_images.json").read_text())
    assert [s["path"] for s in skipped] == [str(bad)]
    rep = json.loads((out / "report.json").read_text())
    assert rep["eval_split"] == ("holdout" if labelled else "none")
    assert (rep["last"] is not None) == labelled
    create_encoder(str(out / "last"))  # a usable checkpoint either way


def test_head_warmup_keeps_the_backbone_still_then_releases_it(world, tmp_path):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "r", head_warmup_epochs=0.5, epochs=1, eval_every=0))
    assert tr.head_warmup_steps == 1 and tr.steps_per_epoch == 2
    bb = tr.student.encoder.backbone
    start = {n: p.detach().clone() for n, p in bb.named_parameters()}
    head = tr.student.projector.net[0].weight.detach().clone()
    tr.fit()  # step 0: heads only; step 1: everything
    assert any(not torch.equal(p, start[n]) for n, p in bb.named_parameters())
    assert not torch.equal(tr.student.projector.net[0].weight, head)
    tr2 = Trainer(_cfg(world, tmp_path / "r2", head_warmup_epochs=1.0, epochs=1, eval_every=0))
    start = {n: p.detach().clone() for n, p in tr2.student.encoder.backbone.named_parameters()}
    tr2.fit()
    assert all(torch.equal(p, start[n]) for n, p in tr2.student.encoder.backbone.named_parameters())


def test_stage_cam_leaves_no_hook_and_the_momentum_encoder_holds_no_student(world, tmp_path):
    """--cam-layer layer1..4 reads the stage map through a hook that exists only during the forward pass."""
    from training.moco import Student
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "r", method="moco+iadm", cam_layer="layer3"))
    assert not any(isinstance(m, Student) for m in tr.momentum.modules())
    for module in (tr.momentum, tr.student):
        assert not any(m._forward_hooks for m in module.modules())
    tr.out.mkdir(parents=True)
    (x_q, x_k), idx = next(iter(tr.loader(0)))
    res = tr.train_step(x_q, x_k, idx)
    assert res.terms["iadm"] > 0
    assert not any(m._forward_hooks for m in tr.student.modules())


def test_neighbour_head_pulls_neighbourhoods_together():
    """The refined head does what it optimises: each point's start-space neighbours end up closer to it,
    relative to the rest, than under the plain PCA whitening it starts from; clusters stay retrievable."""
    from engine.metrics import retrieval_metrics
    from engine.whitening import fit_neighbour_head, fit_whitening

    rng = np.random.default_rng(0)
    n, c, classes = 400, 32, 8
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, c))[y] + 0.8 * rng.standard_normal((n, c))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    mean, proj = fit_neighbour_head(x, 8, k=5, steps=150, pca_dim=16)
    assert mean.shape == (c,) and proj.shape == (c, 8)
    m0, p0 = fit_whitening(x, 16)
    start = torch.nn.functional.normalize((torch.as_tensor(x) - m0) @ p0, dim=1)
    head = torch.nn.functional.normalize((torch.as_tensor(x) - mean) @ proj, dim=1)
    sim0 = start @ start.T
    knn = sim0.fill_diagonal_(-2).topk(5, dim=1).indices

    def margin(e):
        s = e @ e.T
        return float(s.gather(1, knn).mean() - s.mean())

    assert margin(head) > margin(start) + 0.05
    assert retrieval_metrics(head.numpy(), y).summary["mAP"] > 0.5  # chance ~0.13
    with pytest.raises(ValueError):
        fit_neighbour_head(x, 8, k=0)


def test_neighbour_positives_pair_images_with_their_neighbours(world, tmp_path):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, tmp_path / "r", neighbour_positives=2))
    partners = tr.train_set.partners
    n = len(tr.train_set)
    assert partners.shape == (n, 2) and not (partners == torch.arange(n)[:, None]).any()
    ds = tr.train_set
    ds.set_epoch(0)
    same = [torch.equal(*ds[i][0]) for i in range(n)]
    (v1, v2), _ = ds[0]
    (w1, w2), _ = ds[0]
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # deterministic per (seed, epoch, index)
    plain = Trainer(_cfg(world, tmp_path / "p")).train_set
    assert plain.partners is None
    # the query view never changes with partners; only the key view may come from a neighbour
    for i in range(n):
        assert torch.equal(ds[i][0][0], plain[i][0][0])
    assert sum(not torch.equal(ds[i][0][1], plain[i][0][1]) for i in range(n)) >= n // 4
    assert not any(same)


def test_a_fresh_run_discards_log_rows_of_an_attempt_stopped_before_its_first_checkpoint(world, tmp_path):
    """A job cancelled after logging a step but before any resume state restarts from scratch: its old rows must
    not stay in train_log.csv (the steps would repeat)."""
    from training.trainer import Trainer

    out = tmp_path / "r"
    out.mkdir()
    (out / "train_log.csv").write_text("epoch,step,lr,img_per_s\n1,4,0.1,9.0\n")
    (out / "eval_log.csv").write_text("epoch,rank-1\n1,0.5\n")
    Trainer(_cfg(world, out, log_every=1)).fit()
    rows = (out / "train_log.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[1]) for r in rows]
    assert steps == sorted(set(steps)) and steps[0] == 1
