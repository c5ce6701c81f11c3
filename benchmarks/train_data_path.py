"""Training images/s of ``ppssl train --images`` against the model-only step, on small and on camera-size photos.

For (a) cub100's 227-px JPEGs and (b) a folder of 12-Mpx JPEGs made from them (upscaled 4000 x 3000, quality 90),
the README recipe (``configs/finetune_lite0.yaml``, neighbour positives on) is built as ``ppssl train --images``
builds it, then, interleaved in one run:

* **model only**: ``Trainer.train_step`` on one real batch already in memory (the ceiling);
* **training**: ``Trainer.train_epoch`` over ``--steps`` steps with the recipe's data path (decoding, two
  augmented views and a neighbour view, made by threads), the step as above, with the views made between steps
  (in turn) and during the step (``cpu_prefetch``), both timed.

Beside them, also interleaved: the views alone (the data path of ``--steps`` batches, no step: its CPU seconds
per step, the part of the ratio that does not shrink when the model step gets faster) and training and views with
the other blur probability (``blur_prob``: what Pillow's blur costs the data path).

The ratio training / model-only per repetition (median reported) is the target (>= 0.8 on both photo sizes). For
the big photos it is measured with the resized-copy cache (the default, ``engine.resized``) and without it (every
view decodes the 12-Mpx file). The one-time costs (the cache pass, the embedding passes of a run) are timed too,
and give the minutes per 1,000 photos that the README quotes.

    python -m benchmarks.train_data_path [--steps 10] [--reps 3] [--big 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import CUB100, REPO, md_table, pairwise_ratios, prepare_process, write_results

RECIPE = REPO / "configs" / "finetune_lite0.yaml"
TARGET = 0.8


def big_photos(out: Path, n: int, size=(4000, 3000)) -> Path:
    """``n`` 12-Mpx JPEGs upscaled from cub100 photos (class sub-folders kept), written once."""
    from PIL import Image

    src = sorted((CUB100 / "images").rglob("*.jpg"))
    step = max(1, len(src) // n)
    for p in src[::step][:n]:
        dst = out / p.parent.name / p.name
        if dst.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            im.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(dst, quality=90)
    return out


def trainer_for(folder: Path, out: Path, steps: int, **overrides):
    """The recipe's Trainer on ``folder`` as ``ppssl train --images`` builds it (no evaluation)."""
    from training.config import build_config
    from training.trainer import Trainer

    cfg = build_config(RECIPE, {"max_steps_per_epoch": steps, "eval_split": "none", "baselines": False,
                                "tensorboard": False, "progress": False, "epochs": 1, **overrides},
                       {"dataset": "images", "root": str(folder), "out": str(out)})
    t = time.perf_counter()
    trainer = Trainer(cfg)
    setup = time.perf_counter() - t
    trainer.out.mkdir(parents=True, exist_ok=True)
    trainer.open_logs()
    return trainer, setup


def views_steps(trainer) -> int:
    """The data path alone: the batches of one epoch's steps made as in-turn training makes them (the recipe's
    threads, no model step); returns the number of batches."""
    done, prefetch, trainer.cfg.cpu_prefetch = 0, trainer.cfg.cpu_prefetch, False
    try:
        for _ in trainer.loader(0):
            done += 1
    finally:
        trainer.cfg.cpu_prefetch = prefetch
    return done


def measure(trainer, steps: int, reps: int) -> dict:
    """Interleaved seconds per step: model only (one batch in memory) and the full data path, both with the
    modules in the state ``_train_epoch`` puts them in (train mode, frozen BatchNorm)."""
    (x_q, x_k), idx = next(iter(trainer.loader(0)))
    bs = trainer.cfg.batch_size
    trainer.set_train_mode()

    def model_only():
        for _ in range(steps):
            trainer.train_step(x_q, x_k, idx)
        return steps

    view = trainer.train_set.transform
    blur, alt_blur = view.blur, (0.5 if view.blur == 0 else 0.0)

    def with_blur(p: float, fn):
        def run():
            view.blur = p
            try:
                return fn()
            finally:
                view.blur = blur
        return run

    def training(prefetch: bool):
        def run():
            before, trainer.cfg.cpu_prefetch = trainer.step, prefetch
            try:
                trainer.train_epoch(0)
            finally:
                trainer.cfg.cpu_prefetch = default
            return trainer.step - before
        return run

    def views_only():
        return views_steps(trainer)

    default = trainer.cfg.cpu_prefetch
    runs = {"model only": model_only, "training": training(default), "training, other": training(not default),
            "views only": views_only, "training, other blur": with_blur(alt_blur, training(default)),
            "views only, other blur": with_blur(alt_blur, views_only)}
    times = {name: [] for name in runs}
    model_only()  # warm-up (allocator, oneDNN kernels)
    for r in range(reps):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            done = runs[name]()
            if not done:
                raise SystemExit(f"{name}: no step ran (fewer photos than one batch?)")
            times[name].append((time.perf_counter() - t) / done)
    ratios = pairwise_ratios(times["model only"], times["training"])  # step time ratio = img/s ratio
    other = pairwise_ratios(times["model only"], times["training, other"])
    other_blur = pairwise_ratios(times["model only"], times["training, other blur"])
    views = {k: round(statistics.median(times[k]), 3) for k in ("views only", "views only, other blur")}
    return {"batch": bs, "steps": steps, "prefetch": default, "blur_prob": blur, "other_blur_prob": alt_blur,
            "seconds_per_step": times, "views_seconds_per_step": views,
            "ratio_other_blur": round(statistics.median(other_blur), 3),
            "ratios_other_blur": [round(x, 3) for x in other_blur],
            "img_per_s": {k: round(bs / statistics.median(v), 2) for k, v in times.items()},
            "ratio": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
            "ratio_other": round(statistics.median(other), 3), "ratios_other": [round(x, 3) for x in other]}


def embed_rate(trainer) -> float:
    """Images/s of the run's embedding passes (neighbours, baselines, head, evaluation) on these photos: the
    training photos through the encoder's transform, as the trainer feeds them to ``extract_features``."""
    from engine.datasets.holdout import subset
    from engine.embed import extract_features

    base = trainer.train_set.base
    n = min(len(base), 256)
    part = subset(base, list(range(n)))  # a copy: the training set keeps its own (no) transform
    part.transform = trainer.encoder.transform()
    t = time.perf_counter()
    extract_features(trainer.encoder, part, batch_size=64, num_workers=trainer.cfg.workers, progress=False)
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big", type=int, default=256, help="number of 12-Mpx photos made from cub100")
    ap.add_argument("--work", default="runs/train_data_path")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    from training.config import TrainConfig, load_yaml

    recipe = load_yaml(RECIPE)
    recipe_prefetch = bool(recipe.get("cpu_prefetch", TrainConfig.cpu_prefetch))
    work = Path(args.work)
    big = big_photos(work / "big", args.big)
    rows = {}
    cases = {"cub100 227-px JPEGs": (CUB100 / "images", {}),
             "12-Mpx JPEGs, resized-copy cache (default)": (big, {}),
             "12-Mpx JPEGs, no cache (full decode per view)": (big, {"resize_cache": False})}
    for name, (folder, over) in cases.items():
        cache = Path(tempfile.mkdtemp(prefix="ppssl_resized_"))
        try:
            trainer, setup = trainer_for(folder, Path(tempfile.mkdtemp(prefix="ppssl_tdp_")), args.steps,
                                         resize_cache_dir=str(cache), **over)
            n = len(trainer.train_set.base)
            res = measure(trainer, args.steps, args.reps)
            res.update(photos=n, setup_seconds=round(setup, 1), embed_img_per_s=round(embed_rate(trainer), 1))
            epochs = int(recipe.get("epochs", 1))
            per_photo = setup / n + epochs / res["img_per_s"]["training"] + 2.0 / res["embed_img_per_s"]
            res["minutes_per_1000_photos"] = round(1000 * per_photo / 60, 1)
            rows[name] = res
            print(name, json.dumps(res), flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    on = "prefetch (the default)" if recipe_prefetch else "in turn (the default)"
    off = "in turn" if recipe_prefetch else "prefetch"
    first = next(iter(rows.values()))
    blur, alt = first["blur_prob"], first["other_blur_prob"]
    table = md_table(["photos", "model only img/s", f"training img/s, {on}", "ratio (target >= 0.8)",
                      "per-rep ratios", f"training img/s, {off}", "ratio", "per-rep ratios",
                      "setup s (check/cache + neighbours)", "embedding img/s", "minutes per 1,000 photos"],
                     [[k, r["img_per_s"]["model only"], r["img_per_s"]["training"], r["ratio"],
                       ", ".join(map(str, r["ratios"])), r["img_per_s"]["training, other"], r["ratio_other"],
                       ", ".join(map(str, r["ratios_other"])), r["setup_seconds"], r["embed_img_per_s"],
                       r["minutes_per_1000_photos"]] for k, r in rows.items()])
    model_s = {k: statistics.median(r["seconds_per_step"]["model only"]) for k, r in rows.items()}
    blur_table = md_table(["photos", "model-only s/step", f"views only s/step, blur_prob {blur} (recipe)",
                           f"views only s/step, blur_prob {alt}", f"training img/s, blur_prob {alt}", "ratio",
                           "per-rep ratios"],
                          [[k, round(model_s[k], 3), r["views_seconds_per_step"]["views only"],
                            r["views_seconds_per_step"]["views only, other blur"],
                            r["img_per_s"]["training, other blur"], r["ratio_other_blur"],
                            ", ".join(map(str, r["ratios_other_blur"]))] for k, r in rows.items()])
    body = (f"The recipe (`configs/finetune_lite0.yaml`: batch {recipe.get('batch_size')}, {recipe.get('input_size')} px, "
            f"{recipe.get('epochs')} epochs, neighbour positives) on `ppssl train --images` folders; {args.steps} steps "
            f"per repetition, {args.reps} repetitions interleaved with the model-only step (one real batch in memory). "
            "Ratio = training img/s / model-only img/s, median of the per-repetition ratios. Training is timed "
            "with the next batch's views made between steps (in turn) and during the step (prefetch: threads at the "
            "lowest scheduling priority), same trainer, interleaved.\n\n" + table + "\n\n"
            "Minutes per 1,000 photos = per-photo setup (the check pass that makes the resized copies, and the "
            "neighbour pass) + epochs / training img/s + 2 more embedding passes (the head's features, the held-out "
            "scores) / embedding img/s.\n\n"
            "The data path alone (views only: the batches of the same steps made by the recipe's threads, no step) "
            "is what in-turn training adds to each model step; it does not shrink on a CPU with a faster model "
            "step, so the ratio there is about model s / (model s + views s). With the other blur probability "
            "(in-turn training, same run, interleaved):\n\n" + blur_table)
    write_results("train_data_path", rows, body, title="Training data path vs the model-only step", info=info,
                  out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
