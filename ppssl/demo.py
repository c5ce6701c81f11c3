"""The embedded default: ``ppssl demo`` builds it, ``ppssl serve`` serves it (or any ``--index``).

The demo is the whole product in miniature on a fresh offline machine: synthetic world -> offline CLIP
teacher -> short PP-SSL training -> gallery index. Each step is cached under the demo home and skipped
when its result exists, and each resumes if it was interrupted, so the first ``ppssl serve`` takes a few
minutes on 2 CPU cores and later ones start at once.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def default_home() -> Path:
    """Where the demo lives: ``$PPSSL_HOME/demo`` or ``~/.cache/ppssl/demo``."""
    base = os.environ.get("PPSSL_HOME") or Path.home() / ".cache" / "ppssl"
    return Path(base) / "demo"


@dataclass
class DemoConfig:
    """Sizes of the embedded default (chosen to finish in a few minutes on 2 CPU cores)."""

    home: str = ""  # demo directory (default: $PPSSL_HOME/demo or ~/.cache/ppssl/demo)
    classes: int = 24  # fine-grained bird classes in the synthetic world
    per_class: int = 40  # images per class (half train, half test)
    size: int = 96  # rendered image side in pixels
    clutter: str = "high"  # background clutter: none, low, high
    coarse_per_family: int = 60  # captioned images per coarse family for the teacher
    seed: int = 0  # seed of the world, the teacher and the training run
    teacher_epochs: int = 15  # offline CLIP teacher epochs (6 measured 9.5 % zero-shot, below chance; 15: 15.5 %)
    train_epochs: int = 8  # PP-SSL epochs (tinycnn, 64 px crops; the ablation's budget)
    threads: int = 0  # torch CPU threads (0 = torch's default)

    def path(self) -> Path:
        return Path(self.home) if self.home else default_home()


def _step_done(home: Path, name: str, settings: dict) -> bool:
    marker = home / f".{name}.done.json"
    return marker.is_file() and json.loads(marker.read_text()).get("settings") == settings


def _mark_done(home: Path, name: str, settings: dict, result: dict) -> None:
    from engine.atomic import atomic_write_json

    atomic_write_json(home / f".{name}.done.json", {"settings": settings, "result": result})


def _say(msg: str) -> None:
    print(f"[ppssl demo] {msg}", flush=True)


def build_demo(cfg: DemoConfig, progress: bool = True) -> Path:
    """Run the missing steps of the demo pipeline; returns the index directory."""
    home = cfg.path()
    home.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    world, teacher, run, index = home / "world", home / "teacher", home / "train", home / "index"

    world_settings = {k: getattr(cfg, k) for k in ("classes", "per_class", "size", "clutter",
                                                   "coarse_per_family", "seed")}
    if not _step_done(home, "world", world_settings):
        from engine.synth import generate_world

        _say(f"1/4 synthetic world: {cfg.classes} classes x {cfg.per_class} images at {cfg.size} px -> {world}")
        t = time.time()
        summary = generate_world(world, progress=progress, **world_settings)
        _mark_done(home, "world", world_settings, {"seconds": round(time.time() - t, 1),
                                                   "images": summary.get("images")})
    else:
        _say(f"1/4 synthetic world: cached at {world}")

    teacher_settings = {"epochs": cfg.teacher_epochs, "seed": cfg.seed, "world": world_settings}
    if not _step_done(home, "teacher", teacher_settings):
        from training.teacher_fit import TeacherFitConfig, fit_teacher

        _say(f"2/4 offline CLIP teacher: {cfg.teacher_epochs} epochs -> {teacher}")
        s = fit_teacher(TeacherFitConfig(data=str(world), out=str(teacher), epochs=cfg.teacher_epochs,
                                         seed=cfg.seed, progress=progress))
        zs = s["zero_shot"]
        _say(f"    teacher zero-shot accuracy on held-out coarse images: {100 * zs['accuracy']:.1f} % "
             f"(chance {100 * zs['chance']:.1f} %)")
        _mark_done(home, "teacher", teacher_settings, {"zero_shot": zs["accuracy"], "seconds": s["seconds"]})
    else:
        _say(f"2/4 offline CLIP teacher: cached at {teacher}")

    train_settings = {"epochs": cfg.train_epochs, "seed": cfg.seed, "teacher": teacher_settings}
    if not _step_done(home, "train", train_settings):
        from training.config import build_config
        from training.trainer import train

        _say(f"3/4 PP-SSL training (tinycnn, MoCo v2 + AIS + IADM, {cfg.train_epochs} epochs) -> {run}")
        tcfg = build_config(DEMO_TRAIN_CONFIG, dict(root=str(world), teacher=str(teacher), out=str(run),
                                                    epochs=cfg.train_epochs, seed=cfg.seed, eval_every=0,
                                                    workers=0, progress=progress))
        report = train(tcfg, resume=(run / "resume").exists())
        last = report.get("last") or {}
        _mark_done(home, "train", train_settings, {"last": last})
    else:
        _say(f"3/4 PP-SSL training: cached at {run}")

    index_settings = {"train": train_settings}
    if not _step_done(home, "index", index_settings):
        from indexer import build_index

        _say(f"4/4 gallery index of the test split -> {index}")
        rep = build_index(str(run / "last"), str(index), dataset="cub200", root=str(world), split="test",
                          num_workers=0)
        _mark_done(home, "index", index_settings, {"added": rep.added, "skipped": len(rep.skipped)})
    else:
        _say(f"4/4 gallery index: cached at {index}")
    return index


#: Training settings of the demo run: the CPU ablation's setting (the demo overrides epochs and seed).
DEMO_TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic_tinycnn.yaml"


def _demo_config(args: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig()
    for key in asdict(cfg):
        value = getattr(args, f"demo_{key}", None)
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    p.add_argument("--demo-home", dest="demo_home", default=None,
                   help="demo directory (default: $PPSSL_HOME/demo or ~/.cache/ppssl/demo)")
    p.add_argument("--demo-train-epochs", dest="demo_train_epochs", type=int, default=None,
                   help=f"PP-SSL epochs of the demo run (default {defaults.train_epochs})")
    p.add_argument("--demo-teacher-epochs", dest="demo_teacher_epochs", type=int, default=None,
                   help=f"offline teacher epochs (default {defaults.teacher_epochs})")
    p.add_argument("--demo-per-class", dest="demo_per_class", type=int, default=None,
                   help=f"synthetic images per class (default {defaults.per_class})")
    p.add_argument("--demo-classes", dest="demo_classes", type=int, default=None,
                   help=f"synthetic classes (default {defaults.classes})")


def register(sub: argparse._SubParsersAction) -> None:
    from ui.cli import add_serve_arguments

    p = sub.add_parser("serve", help="start the search app (builds and serves the demo index by default)",
                       description="Start the Streamlit search app on an index. Without --index it serves the "
                                   "embedded default, building it first if needed (synthetic world -> offline "
                                   "teacher -> short PP-SSL training -> index; a few minutes on 2 CPU cores, "
                                   "cached for next time).")
    add_serve_arguments(p)
    _add_demo_arguments(p)
    p.set_defaults(func=_run_serve)

    d = sub.add_parser("demo", help="build the embedded demo (world, teacher, encoder, index) without serving",
                       description="Build or complete the embedded default pipeline and print where it is.")
    _add_demo_arguments(d)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    index = build_demo(_demo_config(args), progress=not args.quiet)
    _say(f"ready: ppssl serve --index {index}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from ui.cli import serve_from_args

    index = args.index
    if index is None:
        cfg = _demo_config(args)
        index = build_demo(cfg)
        args.allow_root = list(args.allow_root) + [str(cfg.path() / "world")]
    return serve_from_args(args, index_dir=index)
