"""The embedded default: ``ppssl demo`` builds it, ``ppssl serve`` (ppssl/serve.py) serves it.

The demo is the product in miniature on a fresh offline machine: a synthetic fine-grained world (12 bird
species that differ in small parts) -> the real-photo recipe (``configs/finetune_lite0.yaml``: ImageNet
EfficientNet-Lite0 adapted with MoCo v2 + neighbour positives, then a retrieval head) -> a gallery index of the
test split, plus the same images indexed with the ImageNet-only encoder, so the Evaluate page shows what the
training adds. Each step is cached under the demo home and skipped when its result exists, and each resumes
if it was interrupted: the first ``ppssl serve`` takes one to two minutes on 2 CPU cores (benchmarks/results/demo.md),
later ones start at once.

The world's size and the number of epochs were chosen on validation worlds (seeds 1-3, the whole pipeline each
time), never on the demo's own (seed 0): ``python -m benchmarks.demo_validation``
(benchmarks/results/demo_validation.md). What the demo finds on its own world: ``python -m
benchmarks.demo_figures`` (benchmarks/results/demo.md).
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
    """Sizes of the embedded default (chosen to build in one to two minutes on 2 CPU cores)."""

    home: str = ""  # demo directory (default: $PPSSL_HOME/demo or ~/.cache/ppssl/demo)
    classes: int = 12  # fine-grained bird species in the synthetic world
    per_class: int = 40  # images per species (half train, half test)
    size: int = 128  # rendered image side in pixels
    clutter: str = "none"  # background clutter: none, low, high (high is the ablation's harder world)
    seed: int = 0  # seed of the world and of the training run
    train_epochs: int = 3  # epochs of the recipe (validation worlds: +3.7 to +7.1 rank-1, +6.7 to +15.0 mAP)
    queue_size: int = 64  # MoCo negatives: a quarter of the 240 training images (a queue as long as the
    #   training set would hold each image's own earlier keys as negatives)
    crop_min_scale: float = 0.2  # the demo's world and epochs were chosen on validation worlds with MoCo v2's crops;
    #   the recipe's whole-photo views (1.0, chosen on cub100/cars98 validation) were not validated on them
    threads: int = 2  # torch CPU threads, pinned: the figures are reproducible only at a fixed thread count (float
    #   sums differ with it and flip near-tied neighbours); 0 = torch's default

    def path(self) -> Path:
        return Path(self.home) if self.home else default_home()

    def check(self) -> None:
        """Refuse bad sizes before anything is built (a bad epoch count must not cost a world first)."""
        from engine.errors import SettingError

        for flag, value, low in (("--demo-classes", self.classes, 2), ("--demo-per-class", self.per_class, 2),
                                 ("--demo-train-epochs", self.train_epochs, 1)):
            if not (isinstance(value, int) and value >= low):
                raise SettingError(f"{flag} must be an integer >= {low}, got {value!r}")


#: The training recipe of the demo: the one the README gives for a folder of real photos.
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune_lite0.yaml"
#: The ImageNet-only encoder the demo compares against: the backbone's defaults (the whole photo at 288 px, GAP),
#: i.e. the recipe's starting point, indexed as `ppssl index build` indexes any folder (adapted when large enough).
BASELINE = {"encoder": "efficientnet_lite0", "weights": "imagenet", "pooling": "gap", "input_size": None,
            "view": None}


def _step_done(home: Path, name: str, settings: dict) -> bool:
    marker = home / f".{name}.done.json"
    return marker.is_file() and json.loads(marker.read_text()).get("settings") == settings


def step_result(home: Path, name: str) -> dict:
    """What a finished step recorded (e.g. ``"baseline"``: the leave-one-out figures; ``"train"``: its seconds)."""
    return json.loads((home / f".{name}.done.json").read_text())["result"]


def _mark_done(home: Path, name: str, settings: dict, result: dict) -> None:
    from engine.atomic import atomic_write_json

    atomic_write_json(home / f".{name}.done.json", {"settings": settings, "result": result})


def silent(done: int, total: int) -> None:
    """A progress callback that shows nothing (``--quiet``)."""


def say(msg: str) -> None:
    print(f"[ppssl demo] {msg}", flush=True)


def demo_paths(cfg: DemoConfig) -> dict[str, Path]:
    """The demo's parts: world, train run, index (trained encoder), baseline_index (ImageNet-only)."""
    home = cfg.path()
    return {"world": home / "world", "train": home / "train", "index": home / "index",
            "baseline_index": home / "baseline_index"}


def _train_settings(cfg: DemoConfig, world_settings: dict) -> dict:
    """What the train step's cache is keyed by: the recipe's parsed settings, not its text (a comment edit in the
    recipe file must not force a retrain; a changed value must)."""
    from training.config import load_yaml

    return {"epochs": cfg.train_epochs, "queue_size": cfg.queue_size, "seed": cfg.seed,
            "crop_min_scale": cfg.crop_min_scale, "recipe": load_yaml(RECIPE), "world": world_settings}


def build_demo(cfg: DemoConfig, progress: bool = True) -> Path:
    """Run the missing steps of the demo pipeline; returns the index directory."""
    home = cfg.path()
    home.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    paths = demo_paths(cfg)
    world, run, index, baseline = paths["world"], paths["train"], paths["index"], paths["baseline_index"]
    t_start = time.time()

    world_settings = {k: getattr(cfg, k) for k in ("classes", "per_class", "size", "clutter", "seed")}
    if not _step_done(home, "world", world_settings):
        from engine.synth import generate_world

        say(f"1/4 synthetic world: {cfg.classes} species x {cfg.per_class} images at {cfg.size} px -> {world}")
        t = time.time()
        summary = generate_world(world, progress=progress, coarse_per_family=0, **world_settings)
        _mark_done(home, "world", world_settings, {"seconds": round(time.time() - t, 1),
                                                   "images": summary.get("images")})
    else:
        say(f"1/4 synthetic world: cached at {world}")

    train_settings = _train_settings(cfg, world_settings)
    if not _step_done(home, "train", train_settings):
        from training.config import build_config
        from training.trainer import train

        say(f"2/4 training: ImageNet EfficientNet-Lite0 + MoCo v2 with neighbour positives, {cfg.train_epochs} "
             f"epochs, then a retrieval head ({RECIPE.name}) -> {run}")
        tcfg = build_config(str(RECIPE), dict(dataset="cub200", root=str(world), out=str(run),
                                              epochs=cfg.train_epochs, queue_size=cfg.queue_size, seed=cfg.seed,
                                              crop_min_scale=cfg.crop_min_scale, eval_every=0, eval_split="none",
                                              workers=0,
                                              threads=cfg.threads, progress=progress))
        t = time.time()
        train(tcfg, resume=(run / "resume").exists())
        _mark_done(home, "train", train_settings, {"seconds": round(time.time() - t, 1)})
    else:
        say(f"2/4 training: cached at {run}")

    from indexer import EmbedOptions, EncoderSpec, Source, build_index

    index_settings = {"train": train_settings}
    if not _step_done(home, "index", index_settings):
        say(f"3/4 gallery index of the test split, trained encoder -> {index}")
        rep = build_index(str(index), Source(dataset="cub200", root=str(world), split="test"), str(run / "last"),
                          embed=EmbedOptions(num_workers=0, progress=None if progress else silent))
        _mark_done(home, "index", index_settings, {"added": rep.added, "skipped": len(rep.skipped)})
    else:
        say(f"3/4 gallery index: cached at {index}")

    baseline_settings = {"encoder": BASELINE, "world": world_settings}
    if not _step_done(home, "baseline", baseline_settings):
        from indexer.evaluate import compare_indexes

        say(f"4/4 the same images indexed with the ImageNet-only encoder, for comparison -> {baseline}")
        rep = build_index(str(baseline), Source(dataset="cub200", root=str(world), split="test"),
                          EncoderSpec.parse(BASELINE["encoder"], BASELINE["weights"], BASELINE["pooling"],
                                            BASELINE["input_size"], BASELINE["view"]),
                          embed=EmbedOptions(num_workers=0, progress=None if progress else silent))
        res = compare_indexes(index, baseline)
        figures = {name: {k: round(100 * v, 1) for k, v in res[key]["summary"].items()}
                   for name, key in (("trained", "index"), ("imagenet", "other"))}
        if rep.adapt and "skipped" not in rep.adapt:  # the baseline is adapted: its plain vectors too
            from indexer.evaluate import compare_plain

            plain = compare_plain(baseline)
            figures["imagenet"] = {k: round(100 * v, 1) for k, v in plain["index"]["summary"].items()}
            figures["imagenet_plain"] = {k: round(100 * v, 1) for k, v in plain["other"]["summary"].items()}
        _mark_done(home, "baseline", baseline_settings, {"leave_one_out": figures})
        what = "ImageNet, adapted index (no training)" if "imagenet_plain" in figures else "ImageNet-only"
        say("    leave-one-out on the test split: trained encoder rank-1 {0[rank-1]} %, mAP {0[mAP]} %; "
             "{2} rank-1 {1[rank-1]} %, mAP {1[mAP]} %".format(figures["trained"], figures["imagenet"], what))
        if "imagenet_plain" in figures:
            say("    ImageNet-only, plain vectors: rank-1 {0[rank-1]} %, mAP {0[mAP]} %".format(
                figures["imagenet_plain"]))
        say(f"    built in {time.time() - t_start:.0f} s")
    else:
        say(f"4/4 ImageNet-only index: cached at {baseline}")
    return index


def demo_config(args: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig()
    for key in asdict(cfg):
        value = getattr(args, f"demo_{key}", None)
        if value is not None:
            setattr(cfg, key, value)
    cfg.check()
    return cfg


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    p.add_argument("--demo-home", dest="demo_home", default=None,
                   help="demo directory (default: $PPSSL_HOME/demo or ~/.cache/ppssl/demo)")
    p.add_argument("--demo-train-epochs", dest="demo_train_epochs", type=int, default=None,
                   help=f"training epochs of the demo run (default {defaults.train_epochs})")
    p.add_argument("--demo-per-class", dest="demo_per_class", type=int, default=None,
                   help=f"synthetic images per class (default {defaults.per_class})")
    p.add_argument("--demo-classes", dest="demo_classes", type=int, default=None,
                   help=f"synthetic species (default {defaults.classes})")


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="build the embedded demo (world, encoder, indexes) without serving",
                       description="Build or complete the embedded default pipeline and print where it is.")
    add_demo_arguments(d)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    index = build_demo(demo_config(args), progress=not args.quiet)
    say(f"ready: ppssl serve --index {index}")
    return 0
