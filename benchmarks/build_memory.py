"""Memory: peak RSS of ``ppssl index build`` over 10k vs 50k images, against the index's own size.

Each build runs the real CLI (``ppssl.cli.main``) in a fresh subprocess over a folder of small
synthetic JPEGs written to a temporary folder (never the repository); the subprocess reports its own
peak RSS (``getrusage(RUSAGE_SELF)``, the build process) and that of its DataLoader workers
(``RUSAGE_CHILDREN``). A streaming build grows by the index it holds (FAISS vectors, ids) and the
per-file bookkeeping (paths, ids), never by the images: the result compares the RSS growth from the
small to the large gallery with the growth of ``index.faiss``.

    python -m benchmarks.build_memory                   # 10k and 50k images, tinycnn at 32 px
    python -m benchmarks.build_memory --sizes 500 2000 --out /tmp/m   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, machine_info, md_table, synthetic_jpegs, to_jsonable, write_results
from indexer.header import read_header

_CHILD = """
import json, resource, sys, time
from ppssl.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
print("BUILD_MEMORY " + json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
      "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def gallery(root: Path, n: int, size: int) -> Path:
    """A folder of ``n`` JPEGs: hard links to the first ``n`` files of a shared pool (written once)."""
    pool = synthetic_jpegs(root / "pool", n, size=size, classes=100)
    folder = root / f"g{n}"
    if not folder.exists():
        files = sorted(pool.rglob("*.jpg"))[:n]
        for f in files:
            dst = folder / f.relative_to(pool)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, dst)
    return folder


def run_build(folder: Path, out: Path, args) -> dict:
    """One ``ppssl index build`` in a fresh process; its peak RSS and the index's file sizes."""
    cmd = [sys.executable, "-c", _CHILD, "index", "build", "--images", str(folder), "--out", str(out),
           "--encoder", args.encoder, "--input-size", str(args.input_size), "--workers", str(args.workers),
           "--batch-size", str(args.batch_size), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BUILD_MEMORY ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(line.split(" ", 1)[1])
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    header = read_header(out)
    res.update({"images": sum(1 for _ in folder.rglob("*.jpg")), "files": files,
                "records": header.counts["records"], "dim": header.dim,
                "faiss_bytes": files.get("index.faiss", 0),
                "vector_file_bytes": sum(v for k, v in files.items() if k.startswith("vectors")),
                "manifest_bytes": files.get("manifest.sqlite", 0)})
    return res


def markdown(res: dict) -> str:
    rows = [[r["images"], r["records"], r["seconds"], r["self_kib"] / 1024, r["children_kib"] / 1024,
             r["faiss_bytes"] / 2**20, r["vector_file_bytes"] / 2**20, r["manifest_bytes"] / 2**20]
            for r in res["runs"]]
    g = res["growth"]
    verdict = "met" if g["rss_growth_mib"] <= g["allowed_mib"] else "NOT met"
    return "\n".join([
        f"Encoder {res['encoder']} at {res['input_size']} px (feature dim {res['runs'][0]['dim']}), "
        f"{res['workers']} workers, batch {res['batch_size']}; images: {res['image_size']} px synthetic JPEGs in a "
        "temporary folder.\n",
        md_table(["images", "records", "build s", "peak RSS build (MiB)", "peak RSS worker (MiB)",
                  "index.faiss MiB", "vector file MiB", "manifest MiB"], rows),
        f"\nGrowth from {res['runs'][0]['images']} to {res['runs'][-1]['images']} images: peak RSS "
        f"+{g['rss_growth_mib']:.1f} MiB; index.faiss +{g['faiss_growth_mib']:.1f} MiB. Allowed: the index "
        f"held twice during the final FAISS rebuild (stored vectors read back + the new index) plus the per-file "
        f"bookkeeping ({res['bookkeeping_bytes_per_file']} bytes per file) = {g['allowed_mib']:.1f} MiB -> "
        f"{verdict}. RSS growth per added image: {g['rss_per_image_bytes']:.0f} bytes (an image decoded at "
        f"{res['image_size']} px is {3 * res['image_size'] ** 2} bytes).",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="gallery sizes (images)")
    ap.add_argument("--encoder", default="tinycnn", help="backbone (random init)")
    ap.add_argument("--input-size", type=int, default=32, help="encoder input size")
    ap.add_argument("--image-size", type=int, default=64, help="side of the generated JPEGs")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (the build's default)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ap.add_argument("--bookkeeping", type=int, default=1024,
                    help="bytes per file allowed for paths, ids and manifest rows in memory")
    ap.add_argument("--keep", default=None, help="folder for the JPEG pool (kept between runs); default temporary")
    ap.add_argument("--name", default="build_memory", help="result file name")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = machine_info()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ppssl_mem_"))
    runs = []
    try:
        t0 = time.perf_counter()
        folders = [gallery(root, n, args.image_size) for n in sorted(args.sizes)]
        print(f"galleries ready in {time.perf_counter() - t0:.0f}s", flush=True)
        for folder in folders:
            out = root / f"idx_{folder.name}"
            shutil.rmtree(out, ignore_errors=True)
            r = run_build(folder, out, args)
            runs.append(r)
            shutil.rmtree(out, ignore_errors=True)
            print(f"{r['images']} images: peak RSS {r['self_kib'] / 1024:.0f} MiB, index.faiss "
                  f"{r['faiss_bytes'] / 2**20:.1f} MiB, {r['seconds']:.0f}s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    a, b = runs[0], runs[-1]
    d_files = b["images"] - a["images"]
    d_faiss = b["faiss_bytes"] - a["faiss_bytes"]
    growth = {"rss_growth_mib": (b["self_kib"] - a["self_kib"]) / 1024, "faiss_growth_mib": d_faiss / 2**20,
              "allowed_mib": (2 * d_faiss + args.bookkeeping * d_files) / 2**20,
              "rss_per_image_bytes": (b["self_kib"] - a["self_kib"]) * 1024 / max(d_files, 1)}
    res = to_jsonable({"encoder": args.encoder, "input_size": args.input_size, "image_size": args.image_size,
                       "workers": args.workers, "batch_size": args.batch_size,
                       "bookkeeping_bytes_per_file": args.bookkeeping, "runs": runs, "growth": growth})
    paths = write_results(args.name, res, markdown(res), title="Memory: index build peak RSS vs gallery size",
                          info=info, out_dir=args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
