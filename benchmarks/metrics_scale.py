"""Scale check for engine.metrics.retrieval_metrics: wall time and peak memory at large query/gallery sizes.

Synthetic clustered unit vectors (so the metrics are neither 0 nor 1); each run is a fresh subprocess, and the
peak RSS (VmHWM, reset just before the call) covers the metrics call only. Each invocation adds a section to
``benchmarks/results/metrics_scale.{md,json}``. Wall time on a shared machine depends on load; CPU seconds (all
threads) are reported beside it.

    python -m benchmarks.metrics_scale --runs 20000x20000 10000x100000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, machine_info, md_table, write_results

COLUMNS = ["queries", "gallery", "dim", "classes", "wall s", "CPU s", "RSS before (MiB)", "peak RSS during call (MiB)",
           "added (MiB)", "rank-1", "mAP", "MAP@R"]


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Reset VmHWM (peak RSS) so the next reading covers only the metrics call (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_run(n_q: int, n_g: int, dim: int, classes: int, chunk_size: int, threads: int, seed: int) -> dict:
    """Run once in this process; returns timings, memory and the summary."""
    import numpy as np
    import torch

    from engine.metrics import retrieval_metrics

    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)

    def sample(n):
        labels = rng.integers(0, classes, n)
        x = centres[labels] + 2.0 * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, labels

    q, ql = sample(n_q)
    g, gl = sample(n_g)
    rss_before = _status_mb("VmRSS")
    _reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    rep = retrieval_metrics(q, ql, g, gl, chunk_size=chunk_size)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_mb("VmHWM")
    return {"queries": n_q, "gallery": n_g, "dim": dim, "classes": classes, "chunk_size": chunk_size,
            "threads": threads, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "rss_before_mb": round(rss_before), "peak_rss_mb": round(peak),
            "added_by_metrics_mb": round(peak - rss_before),
            "summary": {k: round(v, 4) for k, v in rep.summary.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["20000x20000"],
                    help="QUERIESxGALLERY sizes, each run in its own subprocess")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension")
    ap.add_argument("--classes", type=int, default=1000, help="number of synthetic classes")
    ap.add_argument("--chunk-size", type=int, default=1024, help="chunk_size passed to retrieval_metrics")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--out", type=Path, default=RESULTS / "metrics_scale.md",
                    help="markdown file a section is added to (with .json beside it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        n_q, n_g = (int(v) for v in args.child.split("x"))
        print(json.dumps(one_run(n_q, n_g, args.dim, args.classes, args.chunk_size, args.threads, args.seed)))
        return 0

    info = machine_info()
    rows = []
    for run in args.runs:
        cmd = [sys.executable, "-m", "benchmarks.metrics_scale", "--child", run, "--dim", str(args.dim),
               "--classes", str(args.classes), "--chunk-size", str(args.chunk_size), "--threads", str(args.threads),
               "--seed", str(args.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)

    table = md_table(COLUMNS, [[r["queries"], r["gallery"], r["dim"], r["classes"], r["seconds"], r["cpu_seconds"],
                                r["rss_before_mb"], r["peak_rss_mb"], r["added_by_metrics_mb"], r["summary"]["rank-1"],
                                r["summary"]["mAP"], r["summary"]["MAP@R"]] for r in rows])
    _, md = write_results(args.out.stem, {"runs": rows}, table, out_dir=args.out.parent, info=info,
                          section=time.strftime("run-%Y%m%d-%H%M%S"), preamble="# engine.metrics scale check\n",
                          title=f"{time.strftime('%Y-%m-%d %H:%M')}, torch threads {args.threads}, CPU only")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
