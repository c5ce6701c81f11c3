"""The views' exact shortcuts, each against the op it replaces, side by side in one process.

The training views (``training.augment.MoCoV2View``) give the same pixels as torchvision's ops; two shortcuts make
them cheaper: the hue shift through lookup tables of Pillow's own HSV conversions (``training.augment.adjust_hue``
vs torchvision's ``adjust_hue``), and ``engine.imageio.open_image`` transposing EXIF orientation in place (vs a
copy of every upright photo). Each is timed as the "views only" data path of ``benchmarks.train_data_path`` (the
batches of ``--steps`` steps made by the recipe's threads, no model step), interleaved with the op it replaced,
on 256 of cub100's 227-px photos and on the 12-Mpx photos of ``train_data_path`` (through the resized copies).
The hue shift runs only where the colour jitter has hue (MoCo v2's 0.4 / hue 0.1; the recipe has none).

    python -m benchmarks.view_ops [--steps 8] [--reps 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import CUB100, md_table, pairwise_ratios, prepare_process, write_results
from benchmarks.train_data_path import big_photos, trainer_for, views_steps


def cub_subset(out: Path, n: int = 256) -> Path:
    """``n`` cub100 photos (every k-th, class folders kept) as symbolic links: no copies in the repository."""
    src = sorted((CUB100 / "images").rglob("*.jpg"))
    for p in src[:: max(1, len(src) // n)][:n]:
        dst = out / p.parent.name / p.name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(p)
    return out


def hue_op_ms(folder: Path, reps: int, n: int = 64) -> dict:
    """Milliseconds per 224-px view of the hue shift alone, torchvision's vs the tables, interleaved."""
    from torchvision.transforms.v2 import functional as F

    from engine.imageio import open_image
    from training.augment import adjust_hue

    crops = [F.resize(open_image(p), [224, 224]) for p in sorted(folder.rglob("*.jpg"))[:n]]
    ops = {"torchvision": F.adjust_hue, "tables": adjust_hue}
    adjust_hue(crops[0], 0.05)  # the tables are built once per process: not timed
    times = {k: [] for k in ops}
    for r in range(reps):
        for k in (list(ops) if r % 2 == 0 else list(ops)[::-1]):
            t = time.perf_counter()
            for i, im in enumerate(crops):
                ops[k](im, (i % 21 - 10) / 100)
            times[k].append(1000 * (time.perf_counter() - t) / len(crops))
    return times


def _copying_exif_transpose(real):
    def transpose(img, *, in_place=False):
        out = real(img)  # the previous call: a transposed image, or a copy of an upright one
        if not in_place:
            return out
        img.im, img._size = out.im, out.size
        return None
    return transpose


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--work", default="runs/train_data_path")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    from PIL import ImageOps
    from torchvision.transforms.v2 import functional as F

    import training.augment as augment

    work = Path(args.work)
    folders = {"cub100 227-px JPEGs (256)": cub_subset(work / "cub256"),
               "12-Mpx JPEGs, resized copies (256)": big_photos(work / "big", 256)}
    tables_hue, real_exif = augment.adjust_hue, ImageOps.exif_transpose
    comparisons = {  # name: (jitter, hue, {variant: (hue op, exif transpose)}), the shortcut second
        "hue shift (MoCo v2 jitter 0.4, hue 0.1)": (0.4, 0.1, {"torchvision": (F.adjust_hue, real_exif),
                                                               "tables": (tables_hue, real_exif)}),
        "EXIF transpose (recipe jitter)": (None, None, {"copy": (tables_hue, _copying_exif_transpose(real_exif)),
                                                        "in place": (tables_hue, real_exif)}),
    }
    rows, data = [], {}
    with tempfile.TemporaryDirectory(prefix="ppssl_view_ops_") as tmp:
        for fname, folder in folders.items():
            trainer, _ = trainer_for(folder, Path(tmp) / "run", args.steps, resize_cache_dir=str(Path(tmp) / "rc"))
            view = trainer.train_set.transform
            recipe_jitter = (view.jitter, view.hue)

            def views() -> float:
                t = time.perf_counter()
                steps = views_steps(trainer)
                return (time.perf_counter() - t) / steps

            for cname, (jitter, hue, variants) in comparisons.items():
                view.jitter, view.hue = (jitter, hue) if jitter is not None else recipe_jitter
                times = {v: [] for v in variants}
                views()  # warm-up: tables built, files in the page cache
                for r in range(args.reps):
                    for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                        augment.adjust_hue, ImageOps.exif_transpose = variants[v]
                        try:
                            times[v].append(views())
                        finally:
                            augment.adjust_hue, ImageOps.exif_transpose = tables_hue, real_exif
                old, new = list(variants)
                ratios = pairwise_ratios(times[old], times[new])  # old s / new s = speed-up
                data[f"{fname} / {cname}"] = {"seconds_per_step": times, "speedup": ratios}
                rows.append([fname, cname, f"{old}: {statistics.median(times[old]):.3f}",
                             f"{new}: {statistics.median(times[new]):.3f}", f"{statistics.median(ratios):.2f}",
                             ", ".join(f"{x:.2f}" for x in ratios)])
            view.jitter, view.hue = recipe_jitter
    ops = hue_op_ms(folders["cub100 227-px JPEGs (256)"], args.reps)
    data["hue op alone, ms per 224-px image"] = ops
    op_ratios = pairwise_ratios(ops["torchvision"], ops["tables"])
    rows.append(["cub100 227-px JPEGs (64), the op alone, ms per 224-px image", "hue shift",
                 f"torchvision: {statistics.median(ops['torchvision']):.2f} ms",
                 f"tables: {statistics.median(ops['tables']):.2f} ms", f"{statistics.median(op_ratios):.2f}",
                 ", ".join(f"{x:.2f}" for x in op_ratios)])
    body = (f"Views only (the recipe's data path for {args.steps} steps of batch 32, its threads, no model step), "
            f"seconds per step (the last row: the hue op alone, ms per image), median of {args.reps} interleaved "
            "repetitions; speed-up = before / after per repetition (median). Both variants give the same pixels "
            "(`tests/test_training_weak_start.py`, `tests/test_imageio.py`).\n\n"
            + md_table(["photos", "shortcut", "before s/step", "after s/step", "speed-up", "per-rep"], rows))
    write_results("view_ops", data, body, title="Exact shortcuts in the training views", info=info,
                  out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
