"""What the embedded demo finds on its own world (seed 0), as a fresh ``ppssl serve`` builds it: the README's
demo table and first-build time come from here.

The demo's settings were chosen on other worlds (``benchmarks/demo_validation.py``); this only reports the
demo as shipped. Each run builds it from nothing in ``--work`` (so the build time is a first build), at the
demo's pinned torch thread count, then reads the leave-one-out figures the build computed (trained index vs
the ImageNet-only index over the same 240 test photos) and adds a random ranking of the same photos (mean of
20 random orderings) for scale.

    python -m benchmarks.demo_figures --work runs/demo_figures
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

KEYS = ("rank-1", "rank-5", "mAP", "MAP@R")


def random_ranking(labels, repeats: int = 20) -> dict:
    """Mean leave-one-out figures (percent) of random orderings: features drawn at random rank the gallery in a
    random order for every query."""
    import numpy as np

    from engine.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    runs = [retrieval_metrics(rng.standard_normal((len(labels), 16)).astype(np.float32), labels).summary
            for _ in range(repeats)]
    return {k: round(100 * float(np.mean([r[k] for r in runs])), 1) for k in KEYS}


def main(argv=None) -> int:
    from benchmarks.common import md_table, prepare_process, write_results
    from engine.datasets import build_dataset
    from ppssl.demo import DemoConfig, build_demo, demo_paths, step_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/demo_figures", help="demo home, emptied first")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    home = Path(args.work)
    shutil.rmtree(home, ignore_errors=True)
    cfg = DemoConfig(home=str(home))
    t = time.perf_counter()
    build_demo(cfg, progress=False)
    wall = time.perf_counter() - t
    steps = {name: step_result(home, name) for name in ("world", "train", "index", "baseline")}
    figures = steps["baseline"]["leave_one_out"]
    labels = build_dataset("cub200", str(demo_paths(cfg)["world"]), split="test").targets
    figures["random"] = random_ranking(labels)
    names = {"trained": f"trained by the recipe ({cfg.train_epochs} epochs, {steps['train']['seconds']:.0f} s of "
                        "training)",
             "imagenet": "ImageNet-only, whole photo at 288 px (where training starts)"
                         + (", adapted index" if "imagenet_plain" in figures else ""),
             "imagenet_plain": "ImageNet-only, plain vectors",
             "random": "a random ranking (mean of 20)"}
    table = md_table(["encoder", *(f"{k} %" for k in KEYS)],
                     [[names[n], *(f"{figures[n][k]:.1f}" if k in figures[n] else "" for k in KEYS)]
                      for n in names if n in figures])
    body = (f"`ppssl demo` built from nothing in {wall:.0f} s (torch threads {cfg.threads}); leave-one-out over the "
            f"{len(labels)} test photos of the demo's world (seed {cfg.seed}), as `ppssl index eval --compare` "
            "reports it. Nothing was chosen on these figures (`demo_validation.md` chose the demo's settings on "
            "other worlds).\n\n" + table + "\n")
    write_results("demo", {"build_seconds": round(wall, 1), "threads": cfg.threads, "steps": steps,
                           "figures": figures}, body, title="The embedded demo on its own world", info=info,
                  out_dir=args.out)
    print(body, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
