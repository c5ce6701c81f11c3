"""Re-ranking on real indexes: every registered re-ranker (indexer.refine), leave-one-out, and its query latency.

Quality: every labelled item of each index queries the rest (itself excluded, also from everything the method
derives: expansions, augmented vectors), in each re-ranker's own leave-one-out form (the one ``index eval
--refine`` scores); the new orders are scored with scikit-learn's ``average_precision_score`` and a plain rank-1
(an implementation independent of engine.metrics, which the "none" row is checked against). Latency: the time a
query pays on top of the exact search, on random unit vectors at 3k / 100k / 1M gallery items, through the
serving form over an in-memory backend (:class:`indexer.backend.ArrayBackend`), each method timed beside the
plain search in one run (medians of repeated single queries).

    python -m benchmarks.rerank --index runs/cub_index_imagenet --index ~/.cache/ppssl/demo/index
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import md_table, write_results
from indexer.refine import RERANKERS, Refine

#: the variants measured: (name, re-ranker, Refine settings); a registered re-ranker missing here is measured
#: with its default settings
VARIANTS = [
    ("none", "none", {}),
    ("alpha-QE k=1", "qe", {"k": 1, "alpha": 3.0}),
    ("alpha-QE k=2", "qe", {"k": 2, "alpha": 3.0}),
    ("alpha-QE k=5", "qe", {"k": 5, "alpha": 3.0}),
    ("DBA k=2", "dba", {"k": 2, "alpha": 3.0}),
    ("DBA k=5", "dba", {"k": 5, "alpha": 3.0}),
    ("DBA k=2 + alpha-QE k=2", "dba+qe", {"k": 2, "alpha": 3.0}),
    ("k-reciprocal (k1=20, k2=6, lambda=0.3, 100 candidates)", "kr",
     {"k1": 20, "k2": 6, "lam": 0.3, "candidates": 100}),
]


def variants() -> list[tuple[str, str, dict]]:
    """:data:`VARIANTS` plus a default row for every registered re-ranker not listed."""
    listed = {m for _, m, _ in VARIANTS}
    return VARIANTS + [(f"{name} (defaults)", name, {}) for name in RERANKERS if name not in listed]


def score_matrix(v: np.ndarray, method: str, settings: dict) -> np.ndarray:
    """(N, N) scores of every item (as a query) against every item in the re-ranker's leave-one-out form (the
    query held out of what it derives); the caller drops the diagonal."""
    refine = Refine(method=method, **settings)
    return refine.reranker.leave_one_out(v, v, np.arange(len(v)), refine).scores()


def leave_one_out(s: np.ndarray, labels: np.ndarray) -> dict:
    """rank-1 and mAP (scikit-learn) of each row's ranking of the other items."""
    from sklearn.metrics import average_precision_score

    n = len(labels)
    ap, top1 = [], []
    for i in range(n):
        keep = np.arange(n) != i
        rel = labels[keep] == labels[i]
        if not rel.any():
            continue
        scores = s[i, keep].astype(np.float64)
        ap.append(average_precision_score(rel, scores))
        top1.append(rel[int(np.argmax(scores))])
    return {"rank-1": 100 * float(np.mean(top1)), "mAP": 100 * float(np.mean(ap)), "queries": len(ap)}


def quality(index_dir: str) -> dict:
    from engine.metrics import retrieval_metrics
    from indexer import Index

    idx = Index.open(index_dir, use_gpu=False)
    recs = [r for r in idx.records() if r["label"] is not None]
    v = idx.vectors([r["id"] for r in recs]).astype(np.float32)
    labels = np.asarray([r["label"] for r in recs], dtype=object)
    ref = retrieval_metrics(v, labels).summary
    rows = []
    for name, method, cfg in variants():
        t = time.perf_counter()
        m = leave_one_out(score_matrix(v, method, cfg), labels)
        m.update(name=name, method=method, settings=cfg, seconds=round(time.perf_counter() - t, 1))
        rows.append(m)
        print(f"  {Path(index_dir).name:>24}  {name:<56} rank-1 {m['rank-1']:5.1f}  mAP {m['mAP']:5.1f}",
              flush=True)
    base = rows[0]
    # sklearn vs engine.metrics on the plain ranking (ties aside they must agree)
    assert abs(base["rank-1"] - 100 * ref["rank-1"]) < 0.5 and abs(base["mAP"] - 100 * ref["mAP"]) < 0.5, (base, ref)
    return {"index": str(index_dir), "items": len(v), "dim": int(v.shape[1]), "rows": rows}


def latency(sizes=(3_000, 100_000, 1_000_000), reps: int = 15) -> list[dict]:
    """Added per-query milliseconds of alpha-QE and k-reciprocal over the exact search (their serving form on an
    in-memory backend), random unit vectors; DBA is precomputed and costs nothing per query."""
    from indexer.backend import ArrayBackend
    from indexer.refine import refined_search

    timed = {"alpha-QE k=2": Refine(method="qe", k=2), "k-reciprocal": Refine(method="kr")}
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        dim = 1280 if n <= 100_000 else 128
        xb = rng.standard_normal((n, dim), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        backend = ArrayBackend(xb)
        qs = xb[rng.integers(0, n, reps)] + 0.05 * rng.standard_normal((reps, dim), dtype=np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        times = {"search": [], **{name: [] for name in timed}}
        for q in qs:
            t = time.perf_counter()
            backend.search_vectors(q[None], 10)
            times["search"].append(time.perf_counter() - t)
            for name, refine in timed.items():
                t = time.perf_counter()
                refined_search(backend, q[None], 10, refine)
                times[name].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        out.append({"gallery": n, "dim": dim, "search_ms": med["search"],
                    "added_ms": {k: med[k] - med["search"] for k in timed}, "dba_query_ms": 0.0})
        print(f"  latency n={n:,} dim={dim}: search {med['search']:.2f} ms; added: "
              + ", ".join(f"{k} {med[k] - med['search']:+.2f} ms" for k in timed), flush=True)
    return out


def render(res: dict) -> str:
    parts = ["Leave-one-out: every labelled item queries the rest (itself excluded); rank-1 and mAP from "
             "scikit-learn over the full new ranking (the `none` row agrees with engine.metrics within 0.5 points), "
             "each re-ranker in its registered leave-one-out form (indexer.refine; the same one `index eval "
             "--refine` scores). DBA replaces the gallery vectors (queries stay raw); for each query the database "
             "is augmented with the query held out of every neighbourhood (otherwise leave-one-out would find the "
             "query averaged into its own neighbours). k-reciprocal re-orders each query's 100 best candidates.", ""]
    for q in res["quality"]:
        base = q["rows"][0]
        parts += [f"## {q['index']} ({q['items']} items, dim {q['dim']})", "",
                  md_table(["variant", "rank-1 %", "mAP %", "Δ rank-1", "Δ mAP"],
                           [[r["name"], f"{r['rank-1']:.1f}", f"{r['mAP']:.1f}", f"{r['rank-1'] - base['rank-1']:+.1f}",
                             f"{r['mAP'] - base['mAP']:+.1f}"] for r in q["rows"]]), ""]
    if not res["latency"]:
        return "\n".join(parts)
    parts += ["## Added query latency (exact search, random unit vectors, median of single queries)", "",
              md_table(["gallery", "dim", "exact search ms", "+ alpha-QE k=2 ms", "+ k-reciprocal ms", "+ DBA ms"],
                       [[f"{t['gallery']:,}", t["dim"], f"{t['search_ms']:.2f}",
                         f"{t['added_ms']['alpha-QE k=2']:+.2f}", f"{t['added_ms']['k-reciprocal']:+.2f}",
                         "0 (precomputed)"] for t in res["latency"]]), "",
              "alpha-QE costs a second search (of the expanded query); k-reciprocal fetches 100 candidates and "
              "solves a 101-item problem; DBA costs nothing per query (its vectors are computed once per index "
              "state: one top-k search per item)."]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", action="append", required=True, help="index directory (repeatable)")
    p.add_argument("--out-dir", default=None, help="where rerank.md / rerank.json go (default benchmarks/results)")
    p.add_argument("--sizes", default="3000,100000,1000000",
                   help="gallery sizes of the latency table ('' = no latency table)")
    p.add_argument("--name", default="rerank", help="results file name (rerank_val: the validation indexes)")
    p.add_argument("--title", default="Re-ranking (indexer.refine, engine/rerank.py)", help="results title")
    args = p.parse_args(argv)
    res = {"quality": [quality(d) for d in args.index],
           "latency": latency(tuple(int(x) for x in args.sizes.split(",") if x))}
    write_results(args.name, res, render(res), title=args.title, out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
