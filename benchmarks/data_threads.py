"""How the CPU data paths share the cores with the model: a torch op per view thread, and worker processes.

**1. A torch op per view thread** (the OpenMP-team effect).

Until 2026-12-03 the views' last step (uint8 -> normalised float, ``engine.preprocess.ToNormalizedFloat``) was a
torch op, which goes parallel on a 224-px view and so started an OpenMP team in every view thread. libgomp then
manages more threads than there are cores and its threads stop spin-waiting between the model's parallel
regions. The data path now does that work in numpy (``tests/test_data_threads.py`` keeps it so). This benchmark
puts the torch normalisation back for one arm and times, interleaved, on the recipe's ``ppssl train --images``
trainer (12-Mpx photos made from cub100, resized copies, as in ``benchmarks.train_data_path``):

* **model only**: the step on one batch already in memory;
* **numpy views** (today) and **torch views** (before): in-turn training as ``Trainer.loader`` makes it, split
  into the wait for the batch and the step, with the voluntary context switches of the process per step
  (``getrusage``: threads that went to sleep).

**2. The run's feature passes** (neighbours, head, held-out scores: ``engine.embed.extract_pooled``) over the
first N cub100 train photos at the eval size: batches made by threads in turn with the forward (today,
``engine.batches``) vs DataLoader worker processes beside it (before: they start afresh for every pass), both
with the recipe's ``workers``, interleaved with the above.

    python -m benchmarks.data_threads [--steps 8] [--reps 3] [--big 256] [--embed 256,1024]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import CUB100, md_table, pairwise_ratios, prepare_process, write_results
from benchmarks.train_data_path import big_photos, trainer_for
from engine.datasets import build_dataset
from engine.datasets.holdout import subset


class TorchNormalize(torch.nn.Module):
    """The torch ops ``ToNormalizedFloat`` ran before (same values): one parallel torch op per view."""

    def __init__(self, numpy_version):
        super().__init__()
        self.scale, self.shift = numpy_version.scale, numpy_version.shift

    def forward(self, img):
        x = img.as_subclass(torch.Tensor).to(torch.float32, memory_format=torch.contiguous_format)
        return x.mul_(self.scale).add_(self.shift)


def in_turn(trainer) -> dict:
    """One epoch of in-turn training timed per step: wait for the batch, the step, context switches."""
    waits, steps, switches = [], [], []
    batches = iter(trainer.loader(0))
    while True:
        t = time.perf_counter()
        try:
            (x_q, x_k), idx = next(batches)
        except StopIteration:
            break
        c = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        t1 = time.perf_counter()
        trainer.train_step(x_q, x_k, idx)
        steps.append(time.perf_counter() - t1)
        waits.append(t1 - t)
        switches.append(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - c)
    return {"wait": statistics.mean(waits), "step": statistics.mean(steps),
            "total": statistics.mean(waits) + statistics.mean(steps), "switches": statistics.median(switches)}


def feature_pass(trainer, photos, processes: bool) -> float:
    """Images/s of one feature pass of the trainer's encoder over ``photos`` (its transform, batch 64)."""
    from torch.utils.data import DataLoader

    from engine.embed import channels_last, embed_batch, extract_pooled

    enc, pooling = trainer.encoder, trainer.encoder.config.pooling
    t = time.perf_counter()
    if not processes:
        extract_pooled(enc, photos, (pooling,), batch_size=64, num_workers=trainer.cfg.workers, device="cpu",
                       progress=False)
    else:  # the loop extract_pooled ran before 2026-12-03
        was = enc.training
        enc.eval()
        with channels_last(enc), torch.inference_mode():
            for images, _, _ in DataLoader(photos, batch_size=64, num_workers=trainer.cfg.workers):
                embed_batch(enc, images, (pooling,))
        enc.train(was)
    return len(photos) / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big", type=int, default=256, help="number of 12-Mpx photos made from cub100")
    ap.add_argument("--embed", default="256,1024", help="photos per feature pass (cub100 train photos)")
    ap.add_argument("--work", default="runs/train_data_path")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    folder = big_photos(Path(args.work) / "big", args.big)
    scratch = Path(tempfile.mkdtemp(prefix="ppssl_threads_"))
    try:
        return run(args, info, folder, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args, info: dict, folder: Path, scratch: Path) -> int:
    """Both comparisons, interleaved, and the results file."""
    trainer, _ = trainer_for(folder, scratch / "run", args.steps, resize_cache_dir=str(scratch / "resized"))
    view = trainer.train_set.transform
    numpy_norm, torch_norm = view.normalize, TorchNormalize(view.normalize)
    (x_q, x_k), idx = next(iter(trainer.loader(0)))
    trainer.set_train_mode()
    trainer.train_step(x_q, x_k, idx)  # warm-up

    def model_only():
        trainer.set_train_mode()  # as train_epoch does (a feature pass leaves the encoder in plain train mode)
        t = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(x_q, x_k, idx)
        return (time.perf_counter() - t) / args.steps

    def views(norm):
        def run():
            view.normalize = norm
            trainer.set_train_mode()
            try:
                return in_turn(trainer)
            finally:
                view.normalize = numpy_norm
        return run

    arms = {"model only": model_only, "numpy views (today)": views(numpy_norm),
            "torch views (before)": views(torch_norm)}

    cub = build_dataset("cub200", CUB100, split="train", transform=trainer.encoder.transform())
    sizes = [min(int(n), len(cub)) for n in args.embed.split(",")]
    for n in sizes:
        part = subset(cub, list(range(n)))
        arms[f"feature pass {n}, threads"] = lambda part=part: feature_pass(trainer, part, False)
        arms[f"feature pass {n}, processes"] = lambda part=part: feature_pass(trainer, part, True)
    res = {k: [] for k in arms}
    for r in range(args.reps):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            res[name].append(arms[name]())
    model = res["model only"]
    rows, out = [], {"steps": args.steps, "reps": args.reps, "photos": len(trainer.train_set.base),
                     "model_only_s": model}
    for name in ("numpy views (today)", "torch views (before)"):
        runs = res[name]
        ratios = pairwise_ratios(model, [x["total"] for x in runs])
        med = {k: round(statistics.median(x[k] for x in runs), 3) for k in ("wait", "step", "total", "switches")}
        out[name] = {"runs": runs, "median": med, "ratio": round(statistics.median(ratios), 3),
                     "ratios": [round(x, 3) for x in ratios]}
        rows.append([name, round(statistics.median(model), 3), med["wait"], med["step"], med["switches"],
                     out[name]["ratio"], ", ".join(map(str, out[name]["ratios"]))])
    step_ratio = statistics.median(x["step"] for x in res["torch views (before)"]) / statistics.median(
        x["step"] for x in res["numpy views (today)"])
    out["step_slowdown_torch_over_numpy"] = round(step_ratio, 3)
    feature_rows, out["feature_pass"] = [], {}
    for n in sizes:
        threads, procs = res[f"feature pass {n}, threads"], res[f"feature pass {n}, processes"]
        speedups = pairwise_ratios(threads, procs)
        out["feature_pass"][n] = {"img_per_s_threads": [round(x, 1) for x in threads],
                                  "img_per_s_processes": [round(x, 1) for x in procs],
                                  "speedup": round(statistics.median(speedups), 2),
                                  "speedups": [round(x, 2) for x in speedups]}
        feature_rows.append([n, round(statistics.median(threads), 1), round(statistics.median(procs), 1),
                             out["feature_pass"][n]["speedup"], ", ".join(map(str, out["feature_pass"][n]["speedups"]))])
    body = (f"The recipe's trainer on {out['photos']} 12-Mpx photos (resized copies), {args.steps} steps per "
            f"repetition, {args.reps} repetitions interleaved. Seconds per step (median); switches = voluntary "
            "context switches of the process during one step (median); ratio = model-only s / (wait + step) s "
            "per repetition, median.\n\n"
            + md_table(["views", "model-only s/step", "wait for the batch s", "step s", "switches per step",
                        "ratio to model only", "per-rep ratios"], rows)
            + f"\n\nThe step beside torch views takes {out['step_slowdown_torch_over_numpy']}x the step beside "
              "numpy views (medians, same run).\n\n"
            + f"Feature passes of cub100 train photos at the eval size (batch 64, {trainer.cfg.workers} workers), "
              "img/s median of the repetitions; speed-up threads / processes per repetition, median:\n\n"
            + md_table(["photos", "threads in turn (today)", "DataLoader worker processes (before)", "speed-up",
                        "per rep"], feature_rows))
    write_results("data_threads", out, body, title="The CPU data paths beside the model", info=info,
                  out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
