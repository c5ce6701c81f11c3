"""The PP-SSL trainer on a tiny synthetic world: gradient routing, loss decrease, exact resume, CLI, config."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, TrainConfig, build_config, parse_overrides
from training.state import ResumeError, load_state

from tiny_clip import TINY_CLIP  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from engine.synth import generate_world

    out = tmp_path_factory.mktemp("tiny_world") / "w"
    generate_world(out, classes=4, per_class=8, size=32, seed=0, clutter="high", coarse_per_family=3,
                   progress=False)
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A small open_clip CLIP built from a config (random weights), saved in the teacher-dir layout."""
    import open_clip

    from training.teacher import save_teacher_dir

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    out = tmp_path_factory.mktemp("teacher") / "t"
    save_teacher_dir(model, TINY_CLIP, out, image_size=32, info={"note": "test teacher"})
    return out


def _cfg(world, teacher_dir, out, **kw) -> TrainConfig:
    base = dict(dataset="cub200", root=str(world), out=str(out), backbone="tinycnn", weights=None, input_size=32,
                batch_size=8, queue_size=16, proj_hidden=32, proj_dim=16, attn_k=8, epochs=2, workers=0,
                progress=False, tensorboard=False, eval_batch_size=16, teacher=str(teacher_dir), lr=0.05,
                log_every=1, moco_momentum=0.99)
    base.update(kw)
    return TrainConfig(**base).validate()


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# --- gradient routing ------------------------------------------------------------------------------

@pytest.mark.parametrize("view", ["image", "query"])
def test_gradients_reach_exactly_the_trainable_parameters(world, teacher_dir, tmp_path, view):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="ppssl", teacher_view=view))
    tr.out.mkdir(parents=True)
    tr.prepare_terms()
    student, momentum, teacher = tr.student, tr.momentum, tr.terms["ais"].teacher.model
    s0, m0, t0 = _params(student), _params(momentum), _params(teacher)
    (x_q, x_k), idx = next(iter(tr.loader(0)))
    tr.train_step(x_q, x_k, idx)

    # every student parameter got a gradient (backbone, attention head, projector, AIS projection)
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert not missing, missing
    assert student.encoder.head.conv.weight.grad.abs().sum() > 0
    assert student.ais_proj.weight.grad.abs().sum() > 0
    # the optimizer holds exactly the student's parameters
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in student.parameters()}
    # momentum encoder: no SGD, only the EMA of the (pre-step) student weights
    for n, p in momentum.named_parameters():
        assert not p.requires_grad and p.grad is None, n
        src = "encoder." + n if n.startswith("backbone.") else n
        expected = 0.99 * m0[n] + 0.01 * s0[src]
        assert torch.allclose(p, expected, atol=1e-6), n
    # teacher frozen and untouched
    for n, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None and torch.equal(p, t0[n]), n
    # the student did move
    assert any(not torch.equal(p, s0[n]) for n, p in student.named_parameters())


@pytest.mark.parametrize("to_backbone", [True, False])
def test_aux_losses_reach_the_backbone_only_when_asked(world, teacher_dir, tmp_path, to_backbone):
    """``aux_to_backbone: false``: L_AIS + L_IADM alone train the attention head and the AIS projection and
    leave the backbone's gradient at zero; true (the paper's coupling): they reach the backbone too."""
    from training.ais import corpus_logits
    from training.iadm import cam_target, gradient_cam
    from training.losses import ais_kl_loss, attention_kl_loss, infonce_loss
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="ppssl", aux_to_backbone=to_backbone))
    tr.out.mkdir(parents=True)
    tr.prepare_terms()
    (x_q, x_k), idx = next(iter(tr.loader(0)))
    x_q = x_q.clone().requires_grad_(True)
    out = tr.student(x_q)
    with torch.no_grad():
        k = tr.momentum(x_k)
    l_moco = infonce_loss(out["q"], k, tr.queue.keys, 0.2)
    cam = cam_target(gradient_cam(x_q, l_moco), tuple(out["attn"].shape[-2:]))
    ais = tr.terms["ais"]
    aux = ais_kl_loss(corpus_logits(out["ais"], ais.text_emb), ais.teacher_logits[idx], 0.1) + \
        attention_kl_loss(out["attn"], cam)
    tr.student.zero_grad(set_to_none=True)
    aux.backward()
    backbone = [p.grad for p in tr.student.encoder.backbone.parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in backbone)
    assert reached == to_backbone
    assert tr.student.encoder.head.conv.weight.grad.abs().sum() > 0
    assert tr.student.ais_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tr.student.projector.parameters())  # MoCo's head: L_moco only


def test_moco_only_leaves_attention_head_untrained(world, teacher_dir, tmp_path):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="moco"))
    assert not tr.terms and tr.student.ais_proj is None and tr.cfg.pooling == "gap"
    (x_q, x_k), _ = next(iter(tr.loader(0)))
    res = tr.train_step(x_q, x_k)
    assert res.terms == {"ais": 0.0, "iadm": 0.0}
    assert tr.student.encoder.head.conv.weight.grad is None
    assert tr.student.encoder.backbone.body[0][0].weight.grad is not None


@pytest.mark.parametrize("layer", ["layer2", "layer4"])
def test_layer_cam_variant_trains_the_head(world, teacher_dir, tmp_path, layer):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="moco+iadm", cam_layer=layer))
    (x_q, x_k), _ = next(iter(tr.loader(0)))
    res = tr.train_step(x_q, x_k)
    assert res.terms["iadm"] > 0
    assert tr.student.encoder.head.conv.weight.grad.abs().sum() > 0


# --- AIS teacher cache and frozen BatchNorm --------------------------------------------------------

def test_teacher_cache_equals_open_clip_reference_and_is_reused(world, teacher_dir, tmp_path, monkeypatch):
    """``teacher_view: image`` logits = open_clip's own model + eval preprocess, computed independently;
    a second run reads the chunks back without running the teacher; a torn chunk or another teacher is
    recomputed."""
    import open_clip

    from engine.datasets import build_dataset
    from training import teacher_cache
    from training.teacher import Teacher
    from training.trainer import Trainer

    out = tmp_path / "r"
    cfg = _cfg(world, teacher_dir, out, method="moco+ais")
    tr = Trainer(cfg)
    out.mkdir()
    tr.prepare_terms()
    ident = f"local-dir:{teacher_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(ident)
    model.eval()
    tokens = open_clip.get_tokenizer(ident)(tr.terms["ais"].corpus)
    base = build_dataset("cub200", str(world), split="train")
    with torch.no_grad():
        images = torch.stack([preprocess(base[i][0]) for i in range(len(base))])
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    ais = tr.terms["ais"]
    assert ais.teacher_logits.shape == (len(base), len(ais.corpus))
    torch.testing.assert_close(ais.teacher_logits, img @ txt.t(), atol=1e-5, rtol=1e-5)
    assert sorted(p.name for p in (out / "teacher_cache").iterdir()) == ["chunk_00000.safetensors", "manifest.json"]

    def boom(self, images):
        raise AssertionError("the teacher ran although its embeddings were cached")

    with monkeypatch.context() as m:  # reuse: a resumed run does not run the teacher again
        m.setattr(Teacher, "encode_image", boom)
        again = Trainer(cfg)
        again.prepare_terms()
        assert torch.equal(again.terms["ais"].teacher_logits, ais.teacher_logits)
    (out / "teacher_cache" / "chunk_00000.safetensors").write_bytes(b"torn")
    redo = Trainer(cfg)
    redo.prepare_terms()
    assert torch.equal(redo.terms["ais"].teacher_logits, ais.teacher_logits)
    other = Trainer(cfg)  # another teacher (different weights) must not reuse these embeddings
    with torch.no_grad():
        next(other.terms["ais"].teacher.model.visual.parameters()).add_(1.0)
    other.terms["ais"].teacher._fingerprint = None
    calls = []
    real = teacher_cache.TeacherImages.__getitem__
    monkeypatch.setattr(teacher_cache.TeacherImages, "__getitem__", lambda s, i: calls.append(i) or real(s, i))
    other.prepare_terms()
    assert len(calls) == len(base) and not torch.equal(other.terms["ais"].teacher_logits, ais.teacher_logits)


def test_teacher_view_image_needs_the_batch_indices(world, teacher_dir, tmp_path):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="ppssl"))
    (x_q, x_k), _ = next(iter(tr.loader(0)))
    with pytest.raises(RuntimeError, match="prepare_terms"):
        tr.train_step(x_q, x_k)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_backbone_statistics(world, teacher_dir, tmp_path, freeze):
    from training.trainer import Trainer

    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", method="moco", freeze_bn=freeze, epochs=1, eval_every=0))
    bns = [m for m in tr.student.encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    kbns = [m for m in tr.momentum.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and kbns
    before = [b.running_mean.clone() for b in bns + kbns]
    w0 = [b.weight.detach().clone() for b in bns]
    tr.fit()
    same = [torch.equal(b.running_mean, r) for b, r in zip(bns + kbns, before)]
    assert all(same) if freeze else not any(same)
    assert any(not torch.equal(b.weight, w) for b, w in zip(bns, w0))  # affine weights still train
    assert tr.student.projector.net[-1].running_mean.abs().sum() > 0  # the new head's BN is not frozen


# --- the loss falls ---------------------------------------------------------------------------------

def test_loss_falls_over_50_steps(world, teacher_dir, tmp_path):
    from training.trainer import Trainer

    cfg = _cfg(world, teacher_dir, tmp_path / "r", method="ppssl", epochs=25, eval_every=0)
    tr = Trainer(cfg)
    report = tr.fit()
    with open(tmp_path / "r" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 50 and report["steps"] == 50
    loss = [float(r["loss"]) for r in rows]
    first, last = sum(loss[2:10]) / 8, sum(loss[-8:]) / 8  # skip the steps with random queue entries
    assert last < first - 0.3, (first, last)
    for r in rows:  # the logged total is Eq. 9 of the logged terms
        total = float(r["loss_moco"]) + cfg.lambda_ais * float(r["loss_ais"]) + cfg.lambda_iadm * float(r["loss_iadm"])
        assert float(r["loss"]) == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # cosine schedule


# --- checkpoints and exact resume -----------------------------------------------------------------------

def test_resume_is_bit_identical_to_uninterrupted(world, teacher_dir, tmp_path):
    from engine.checkpoint import load_checkpoint, read_checkpoint_config
    from training.trainer import Trainer

    full = Trainer(_cfg(world, teacher_dir, tmp_path / "a", epochs=3)).fit()
    part = Trainer(_cfg(world, teacher_dir, tmp_path / "b", epochs=3))
    assert part.fit(stop_after_epochs=1) == {"stopped_at_epoch": 1}
    with pytest.raises(ResumeError):  # an existing run is never silently overwritten
        Trainer(_cfg(world, teacher_dir, tmp_path / "b", epochs=3)).fit()
    with pytest.raises(ResumeError):  # nor resumed under a result-changing change
        Trainer(_cfg(world, teacher_dir, tmp_path / "b", epochs=3, lr=0.1), resume=True).fit()
    resumed = Trainer(_cfg(world, teacher_dir, tmp_path / "b", epochs=3), resume=True).fit()

    fa = read_checkpoint_config(tmp_path / "a" / "last")["fingerprint"]
    fb = read_checkpoint_config(tmp_path / "b" / "last")["fingerprint"]
    assert fa == fb
    ta, sa = load_state(tmp_path / "a" / "resume")
    tb, sb = load_state(tmp_path / "b" / "resume")
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert full["last"] == resumed["last"] and full["best"] == resumed["best"]
    enc = load_checkpoint(tmp_path / "a" / "last")
    assert enc.config.pooling == "attention"
    assert read_checkpoint_config(tmp_path / "a" / "best")["extra"]["epoch"] == full["best"]["epoch"]


def test_cli_kill_and_resume_matches_uninterrupted(world, teacher_dir, tmp_path):
    """SIGKILL a real `ppssl train` after its first checkpoint, resume it, compare with an uninterrupted run."""
    from engine.checkpoint import read_checkpoint_config
    from ppssl.cli import main
    from training.trainer import Trainer

    epochs = 6
    cfg = _cfg(world, teacher_dir, tmp_path / "a", epochs=epochs, method="ppssl")
    Trainer(cfg).fit()
    args = ["train", "--dataset", "cub200", "--root", str(world), "--out", str(tmp_path / "b"),
            "--backbone", "tinycnn", "--weights", "none", "--method", "ppssl", "--teacher", str(teacher_dir),
            "--epochs", str(epochs), "--batch-size", "8", "--input-size", "32", "--queue-size", "16",
            "--lr", "0.05", "--workers", "0", "--quiet",
            "--set", "proj_hidden=32", "--set", "proj_dim=16", "--set", "attn_k=8", "--set", "eval_batch_size=16",
            "--set", "log_every=1", "--set", "moco_momentum=0.99", "--set", "tensorboard=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ppssl", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = tmp_path / "b" / "resume" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"training exited before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < epochs and not (tmp_path / "b" / "report.json").exists()
    assert main(args + ["--resume"]) == 0
    fa = read_checkpoint_config(tmp_path / "a" / "last")["fingerprint"]
    fb = read_checkpoint_config(tmp_path / "b" / "last")["fingerprint"]
    assert fa == fb
    with open(tmp_path / "b" / "train_log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 2 * epochs + 1))  # killed epoch's rows dropped, none duplicated
    assert any((tmp_path / "b" / "tb").iterdir())
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["last"]["epoch"] == epochs and "best" in report


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    ([], {"freeze_bn": False, "teacher_view": "image"}),
    (["--freeze-bn", "--teacher-view", "query"], {"freeze_bn": True, "teacher_view": "query"}),
    (["--set", "freeze_bn=true"], {"freeze_bn": True, "teacher_view": "image"}),
])
def test_cli_flags_reach_the_config(monkeypatch, tmp_path, argv, expected):
    """Every `ppssl train` flag lands in the TrainConfig the trainer gets (captured, nothing trained)."""
    import training.trainer
    from ppssl.cli import main

    seen = {}

    def fake_train(cfg, resume=False):
        seen["cfg"] = cfg
        return {"method": cfg.method, "dataset": cfg.dataset, "backbone": cfg.backbone, "epochs": 0, "steps": 0,
                "eval_split": cfg.eval_split, "last": None, "best": None, "note": ""}

    monkeypatch.setattr(training.trainer, "train", fake_train)
    main(["train", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet", *argv])
    assert {k: getattr(seen["cfg"], k) for k in expected} == expected


def test_config_precedence_and_validation(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\nepochs: 7\nmethod: moco\nweights: null\n")
    cfg = build_config(y, parse_overrides(["epochs=9", "lambda_ais=0.25"]), {"method": "ppssl", "lr": None})
    assert (cfg.lr, cfg.epochs, cfg.method, cfg.weights, cfg.lambda_ais) == (0.5, 9, "ppssl", None, 0.25)
    with pytest.raises(ConfigError, match="unknown"):
        build_config(None, {"learning_rate": 1})
    with pytest.raises(ConfigError):
        build_config(None, {"epochs": "many"})
    with pytest.raises(ConfigError):
        build_config(None, {"method": "simclr"})
    with pytest.raises(ConfigError):
        build_config(None, {"cam_layer": ""})  # a stage the backbone lacks: test_stage_names_are_checked_on_...
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        build_config(bad)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        build_config(f)


def test_cli_help_lists_training_commands(capsys):
    from ppssl.cli import build_parser

    parser = build_parser()
    expected = {"train": "--cam-layer", "teacher fit": "--data", "probe": "--proportions"}
    for cmd, flag in expected.items():
        with pytest.raises(SystemExit) as e:
            parser.parse_args(cmd.split() + ["--help"])
        assert e.value.code == 0
        assert flag in capsys.readouterr().out


def test_cli_reports_bad_input_as_one_line(world, tmp_path, capsys):
    from ppssl.cli import main

    rc = main(["train", "--dataset", "cub200", "--root", str(world), "--out", str(tmp_path / "x"),
               "--backbone", "tinycnn", "--weights", "none", "--method", "moco", "--set", "epochs=abc"])
    assert rc == 2 and "epochs" in capsys.readouterr().err


def test_stage_names_are_checked_on_the_backbone(world, teacher_dir, tmp_path):
    """cam_layer / frozen_through name the backbone's own stages: an unknown one is refused with the list."""
    from training.trainer import Trainer

    for key in ("cam_layer", "frozen_through"):
        with pytest.raises(ConfigError, match="stages: layer1, layer2, layer3, layer4"):
            Trainer(_cfg(world, teacher_dir, tmp_path / key, method="moco+iadm", **{key: "block9"}))
