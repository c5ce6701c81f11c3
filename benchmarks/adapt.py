"""Adapted indexes: plain vs adapted retrieval, the choice of the default, and the cost of the fit at scale.

``ppssl index build`` fits the unsupervised retrieval head on the gallery's own vectors (``indexer.adapt``).
Whether that is the default, and from what gallery size, is chosen here on **validation galleries only**:
cub100's validation part (``val_ids.txt``, 583 photos of 100 species) and class subsets of it (the first 10, 20,
35 and 50 species), the cub100 train split (the first 25, 50, 75 species, then all 2,903 photos), cars98 (the
first 25, 49 models, then all 4,108 photos: the whole set is this project's validation data, its other half of
the models stays outside), and the validation worlds of the demo (synthetic seeds 1-3; the demo itself is seed 0,
reported beside them). Each gallery is scored leave-one-out with the
ImageNet EfficientNet-Lite0 features as stored (plain) and through a head fitted on that gallery without labels
(adapted), with the indexer's own code (``indexer.adapt.fit_head`` + ``Projector``).

    python -m benchmarks.adapt                      # validation galleries -> adapt.md
    python -m benchmarks.adapt --split test         # once, with the chosen setting: cub100 test -> adapt_test.md
    python -m benchmarks.adapt --split scale        # the cost of the fit at 10k / 100k / 1M vectors -> adapt_scale.md

The scale part times the fit (on its seeded sample) and the projection of every vector, on synthetic clustered
1280-d vectors read from a memory-mapped file, each size in its own process (peak RSS is per process); run it on
a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CUB100, REPO, md_table, peak_rss_mib, prepare_process, write_results

SUBSETS = (10, 20, 35, 50)  # cub100 validation galleries made of the first N species
TRAIN_SUBSETS = (25, 50, 75)  # cub100 train-split galleries made of the first N species (then all 100)
CARS_SUBSETS = (25, 49, 98)  # cars98 galleries made of the first N models (98 = the whole folder)
DEMO_SEEDS = (1, 2, 3)  # the demo's validation worlds (never 0, the demo's own, for the choice)
SCALES = (10_000, 100_000, 1_000_000)


def features(encoder, dataset) -> tuple[np.ndarray, np.ndarray]:
    from engine.embed import extract_features

    return extract_features(encoder, dataset, batch_size=64, num_workers=1, progress=False)


def score_gallery(feats: np.ndarray, labels: np.ndarray) -> dict:
    """Leave-one-out rank-1 / mAP, plain and through a head fitted on the gallery itself (no labels)."""
    from engine.metrics import retrieval_metrics
    from indexer.adapt import AdaptSettings, Projector, fit_head

    mean, proj, info = fit_head(feats, AdaptSettings())
    adapted = Projector(mean, proj)(feats)
    mean512, proj512, _ = fit_head(feats, AdaptSettings(pca_dim=512))  # the recipe's fixed PCA width, for the choice
    out = {"n": int(len(feats)), "classes": int(len(set(labels.tolist()))), "fit_seconds": info["seconds"],
           "pca_dim": info["pca_dim"]}
    for name, f in (("plain", feats), ("adapted", adapted), ("adapted_pca512", Projector(mean512, proj512)(feats))):
        m = retrieval_metrics(f, labels).summary
        out[name] = {"rank-1": float(m["rank-1"]), "mAP": float(m["mAP"])}
    return out


def cub100_galleries(split: str) -> dict:
    """``{name: dataset}``: the validation galleries (split 'val') or the test split ('test')."""
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout, subset

    if split == "test":
        return {"cub100 test": build_dataset("cub200", CUB100, split="test")}
    train = build_dataset("cub200", CUB100, split="train")
    _, val = split_holdout(train, str(CUB100 / "val_ids.txt"))
    out = {}
    for c in SUBSETS:
        out[f"cub100 val, first {c} species"] = subset(val, [i for i, (_, y) in enumerate(val.samples) if y < c])
    out["cub100 val (583)"] = val
    for c in TRAIN_SUBSETS:
        out[f"cub100 train split, first {c} species"] = subset(train, [i for i, (_, y) in enumerate(train.samples)
                                                                      if y < c])
    out["cub100 train split (2,903)"] = train
    cars = CUB100.parent / "cars98" / "images"
    if cars.is_dir():  # all of cars98 is a validation set of this project (its other half stays outside)
        allcars = build_dataset("images", cars, split="all")
        for c in CARS_SUBSETS:
            out[f"cars98, first {c} models"] = subset(allcars, [i for i, (_, y) in enumerate(allcars.samples)
                                                              if y < c])
    return out


def demo_galleries(work: Path, seeds) -> dict:
    """The test split of the demo's world for each seed (``ppssl.demo.DemoConfig`` sizes), generated once."""
    from engine.datasets import build_dataset
    from engine.synth import generate_world
    from ppssl.demo import DemoConfig

    cfg, out = DemoConfig(), {}
    for seed in seeds:
        world = work / f"demo_world_s{seed}"
        if not (world / "images.txt").is_file():
            generate_world(world, classes=cfg.classes, per_class=cfg.per_class, size=cfg.size, clutter=cfg.clutter,
                           seed=seed, progress=False, coarse_per_family=0)
        out[f"demo world seed {seed}" + (" (the demo)" if seed == 0 else "")] = build_dataset(
            "cub200", world, split="test")
    return out


def adapting_served(row: dict) -> bool:
    """A gallery the head served: mAP up, rank-1 down by at most 1 point."""
    return row["adapted"]["mAP"] > row["plain"]["mAP"] and row["adapted"]["rank-1"] >= row["plain"]["rank-1"] - 0.01


def choose_min_gallery(rows: list[dict]) -> dict:
    """The default: adapt galleries of at least N images. The rule: the smallest validation size from which every
    validation gallery of that size or more gained mAP and lost at most 1 point of rank-1; any threshold between
    the next smaller validation size (exclusive) and it decides every validation gallery alike, so N is the
    roundest number (a multiple of 100, else of 10) in that interval. ``None`` if no size qualifies."""
    sizes = sorted({r["n"] for r in rows})
    for i, n in enumerate(sizes):
        if all(adapting_served(r) for r in rows if r["n"] >= n):
            below = sizes[i - 1] if i else 0
            pick = next((m for step in (100, 10, 1) for m in [n // step * step] if m > below), n)
            return {"min_gallery": pick, "smallest_passing": n, "largest_failing": below or None,
                    "rule": "smallest size from which every validation gallery of that size or more gained mAP and "
                            f"lost at most 1 point of rank-1 is {n}; the next smaller one is {below}, so any "
                            f"threshold in ({below}, {n}] decides alike and the round {pick} is used"}
    return {"min_gallery": None, "rule": "no size qualifies: adaptation off by default"}


def scale_one(n: int, work: Path) -> dict:
    """Fit + projection time and this process's peak RSS for ``n`` synthetic 1280-d vectors (memory-mapped)."""
    from indexer.adapt import AdaptSettings, Projector, fit_head

    dim, path = 1280, work / f"scale_{n}.f32"
    if not path.is_file() or path.stat().st_size != n * dim * 4:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((500, dim)).astype(np.float32)
        with open(path, "wb") as fh:
            for s in range(0, n, 100_000):
                m = min(100_000, n - s)
                x = centres[rng.integers(0, 500, m)] + 0.8 * rng.standard_normal((m, dim)).astype(np.float32)
                fh.write((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).tobytes())
    stored = np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
    rss0 = peak_rss_mib()
    t = time.perf_counter()
    mean, proj, info = fit_head(stored, AdaptSettings())
    fit = time.perf_counter() - t
    t = time.perf_counter()
    Projector(mean, proj)(stored)
    project = time.perf_counter() - t
    return {"n": n, "fitted_on": info["fitted_on"], "fit_seconds": round(fit, 2), "project_seconds": round(project, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1), "rss_before_fit_mib": round(rss0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["val", "test", "scale"], default="val",
                    help="val: the validation galleries (the choice); test: cub100 test once, with the chosen "
                         "setting; scale: the fit's time and memory at --scales vectors")
    ap.add_argument("--work", default="runs/adapt", help="scratch folder (demo worlds, scale vectors)")
    ap.add_argument("--scales", default=",".join(str(s) for s in SCALES), help="vector counts of the scale part")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true",
                    help="rewrite adapt.md from the rows of adapt.json (no embedding; after a change of the rule)")
    ap.add_argument("--scale-one", type=int, default=None, help=argparse.SUPPRESS)  # child process of the scale part
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.scale_one:
        prepare_process(args.threads)
        print(json.dumps(scale_one(args.scale_one, work)))
        return 0
    info = prepare_process(args.threads)
    end_load = None  # measured at the end, unless a table is re-rendered from its JSON
    if args.split == "scale":
        scale = []
        if args.table:  # re-render from adapt_scale.json (the rows of the run it records)
            from benchmarks.common import RESULTS

            saved = json.loads((Path(args.out or RESULTS) / "adapt_scale.json").read_text())
            scale, info, end_load = saved["results"]["scale"], saved["machine"], saved["load_average_end"]
        for n in ([] if args.table else (int(s) for s in args.scales.split(",") if s)):
            out = subprocess.run([sys.executable, "-m", "benchmarks.adapt", "--scale-one", str(n), "--work",
                                  str(work), "--threads", str(args.threads)], capture_output=True, text=True, cwd=REPO,
                                 check=True)
            scale.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(scale[-1]), flush=True)
        body = ("Synthetic clustered 1280-d vectors (the stored width of EfficientNet-Lite0), memory-mapped; the head "
                "is fitted on a seeded sample of at most 20,000 (`indexer.adapt.AdaptSettings.sample`) and every "
                "vector is projected; each size in its own process.\n\n"
                + md_table(["vectors", "fitted on", "fit s", "projection s", "peak RSS MiB"],
                           [[f"{r['n']:,}", f"{r['fitted_on']:,}", r["fit_seconds"], r["project_seconds"],
                             r["peak_rss_mib"]] for r in scale])
                + "\n\nPeak RSS counts the pages of the memory-mapped vector file that were read (file-backed, "
                  "reclaimable; the 1M file is 4.8 GiB), besides the process's own memory: the fit holds "
                  "its sample (20,000 x 1280 float32 = 98 MiB) and its neighbour computation, the projection "
                  "one output of n x 128 float32. The machine's load average is in the header: the fit is CPU-bound "
                  "and was timed beside other work, so quiet figures are lower.")
        write_results("adapt_scale", {"scale": scale}, body, title="Adapted indexes: the cost of the fit at scale",
                      info=info, out_dir=args.out, end_load=end_load)
        return 0
    from engine.encoder import create_encoder

    enc = create_encoder("efficientnet_lite0", "imagenet", pooling="gap").eval()
    if args.table:
        from benchmarks.common import RESULTS

        saved = json.loads((Path(args.out or RESULTS) / "adapt.json").read_text())
        rows, sets, info, end_load = saved["results"]["rows"], {}, saved["machine"], saved["load_average_end"]
    else:
        sets = cub100_galleries(args.split)
        if args.split == "val":
            sets.update(demo_galleries(work, DEMO_SEEDS + (0,)))
        rows = []
    for name, ds in sets.items():
        ds.transform = enc.transform()
        t = time.perf_counter()
        f, y = features(enc, ds)
        row = {"gallery": name, **score_gallery(f, y), "embed_seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = md_table(["gallery", "images", "classes", "plain rank-1 / mAP %", "adapted rank-1 / mAP %", "Δ rank-1",
                      "Δ mAP", "PCA dims (n/8)", "with PCA 512: rank-1 / mAP %", "fit s"],
                     [[r["gallery"], r["n"], r["classes"],
                       f"{100 * r['plain']['rank-1']:.1f} / {100 * r['plain']['mAP']:.1f}",
                       f"{100 * r['adapted']['rank-1']:.1f} / {100 * r['adapted']['mAP']:.1f}",
                       f"{100 * (r['adapted']['rank-1'] - r['plain']['rank-1']):+.1f}",
                       f"{100 * (r['adapted']['mAP'] - r['plain']['mAP']):+.1f}", r["pca_dim"],
                       f"{100 * r['adapted_pca512']['rank-1']:.1f} / {100 * r['adapted_pca512']['mAP']:.1f}",
                       r["fit_seconds"]] for r in rows])
    encoder = f"ImageNet EfficientNet-Lite0, GAP, {enc.config.input_size} px ({enc.config.view} view)"
    if args.split == "test":
        body = (f"**Test split, touched once** with the setting chosen on validation (`adapt.md`): the head fitted "
                f"on the test gallery itself without labels, as `ppssl index build` does. {encoder}, leave-one-out.\n\n"
                + table)
        write_results("adapt_test", {"rows": rows}, body, title="Adapted index on cub100 test (once)", info=info,
                      out_dir=args.out)
        return 0
    choice_rows = [r for r in rows if "(the demo)" not in r["gallery"]]
    choice = choose_min_gallery(choice_rows)
    body = (f"Validation galleries only (no test split): {encoder}; leave-one-out; the head fitted on each gallery "
            "itself without labels (`indexer.adapt.fit_head`, the recipe's head: 128 dims, 10 neighbours, fit on at "
            "most 20,000 vectors).\n\n" + table + "\n\n"
            "The head's PCA width follows the gallery (n / 8 vectors per dimension, at most 512, "
            "`indexer.adapt.PCA_PER`) rather than the recipe's fixed 512, which the last column shows: compare the "
            "two adapted columns.\n\n"
            + (f"Table and choice rewritten from `adapt.json` by `python -m benchmarks.adapt --table` "
               f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); the rows are those of the run above.\n\n"
               if args.table else "")
            + f"**Default chosen**: adapt galleries of at least **{choice['min_gallery']}** images "
            f"({choice['rule']}; the demo row is shown but not used for the choice). "
            "`indexer.adapt.MIN_GALLERY` holds it. The cost of the fit at 10k-1M vectors: `adapt_scale.md`."
            + ("\n\nWhy smaller galleries stay plain — validation galleries below it that adapting did not serve: "
               + "; ".join(f"{r['gallery']} (rank-1 {100 * (r['adapted']['rank-1'] - r['plain']['rank-1']):+.1f}, "
                           f"mAP {100 * (r['adapted']['mAP'] - r['plain']['mAP']):+.1f})"
                           for r in choice_rows if choice["min_gallery"] and r["n"] < choice["min_gallery"]
                           and not adapting_served(r))
               + ". A likely cause, not measured here: with few photos per species the neighbours the head learns "
                 "from are more often of another species." if choice["min_gallery"] else ""))
    write_results("adapt", {"rows": rows, "choice": choice}, body,
                  title="Adapted indexes: plain vs adapted on validation galleries, and the fit at scale", info=info,
                  out_dir=args.out, end_load=end_load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
