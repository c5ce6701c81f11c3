"""Search: exact inner-product search against its floor, and approximate indexes against exact search.

The floor of an exact search is ``max(bytes scanned / memory bandwidth, multiply-adds / matmul rate)``,
with both rates measured in the same run, interleaved with the subjects (a large copy and a large
reduction for the bandwidth, a 2048^3 float32 matmul for the rate; the best of numpy and torch is
taken, so the floor is the tightest these libraries reach). Subjects, on the same stored vectors:

* ``faiss_flat``: plain ``IndexFlatIP.search`` (FAISS defaults);
* ``faiss_tuned``: the same with ``distance_compute_blas_threshold=1`` and a 64k database block;
* ``engine``: the indexer's exact search, ``indexer.exact.exact_search`` (what ``Index.search`` runs for
  a flat index on the CPU): the gallery split into one contiguous range per core, each scanned by a
  single-threaded BLAS GEMM in 4k-64k-row blocks with a per-block top-k, the ranges merged at the end.

Plain FAISS at batch 64 on a 1M gallery takes tens of seconds a call: it is timed once, not per repetition.

Approximate indexes (at the largest gallery of the last dimension): IVF-Flat, IVF-PQ (alone and with an
exact re-rank of its top 100 from the stored float32 vectors), IVF-SQ8 (alone and with the indexer's exact
re-rank of its top 40, ``indexer.index.rerank_exact``) and fp16 scalar quantisation; recall@10
against the exact top-10 and QPS against exact search at the same batch size. The coarse assignment
of the gallery is computed once and shared by all IVF types. HNSW is built on a subset only (its build
is too slow for 1M vectors on 2 cores) and its build time extrapolated. Vectors are the ``clustered``
synthetic features of ``benchmarks/index_recall.py`` (clusters in a 64-d latent space): uniform random
directions are no model of image features.

    python -m benchmarks.search                      # 100k and 1M, dims 2048 and 1280 (10-15 min, 2 cores)
    python -m benchmarks.search --sizes 20000 --dims 256 --ann-size 0 --reps 1 --out /tmp/s   # smoke
    python -m benchmarks.search --device cuda       # GPU: torch (and FAISS GPU if installed) vs GPU floor
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from contextlib import contextmanager

import numpy as np

from benchmarks.common import (index_bytes, interleave, machine_info, md_table, mem_available_gib, pairwise_ratios,
                               stats, to_jsonable, verdict, write_results)
from engine.metrics import recall_at_k

K = 10
EXACT_TARGET = 1.5  # exact search within 1.5x of its floor
ANN_RECALL_TARGET = 0.95  # recall@10 of exact
ANN_SPEEDUP_TARGET = 10.0  # x the exact QPS at the same batch size


# --- the engine's exact search --------------------------------------------------------------------

def _engine_exact():
    """The indexer's exact search (what ``Index.search`` runs for a flat index on the CPU)."""
    from indexer.exact import exact_search

    return exact_search, "indexer.exact.exact_search"


# --- data -----------------------------------------------------------------------------------------

def clustered_chunk(start: int, n: int, dim: int, seed: int = 0, clusters: int = 1000, latent: int = 64,
                    spread: float = 0.5, noise: float = 0.02, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start .. start+n`` of a deterministic clustered gallery (regenerable chunk by chunk).

    Gaussian clusters in a ``latent``-d space mapped linearly to ``dim``, plus small full-rank noise (rows
    of a fixed noise table, so a million rows take seconds), L2-normalised. Computed in small sub-blocks
    into ``out`` (if given) to avoid large temporaries, whose page faults dominate on a busy VM.
    """
    centers, proj, table = _generator(dim, seed, clusters, latent)
    x = np.empty((n, dim), np.float32) if out is None else out[:n]
    sub = 2048
    for j in range(0, n, sub):
        m = min(sub, n - j)
        rng = np.random.default_rng([seed, start + j])
        z = centers[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, latent), dtype=np.float32)
        blk = x[j:j + m]
        np.matmul(z, proj, out=blk)
        blk += (noise * np.sqrt(latent)) * table[rng.integers(0, len(table), m)]
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
    return x


_GEN: dict = {}


def _generator(dim: int, seed: int, clusters: int, latent: int):
    key = (dim, seed, clusters, latent)
    if key not in _GEN:
        base = np.random.default_rng(seed)
        centers = base.standard_normal((clusters, latent)).astype(np.float32)
        proj = (base.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
        table = base.standard_normal((4093, dim), dtype=np.float32)
        _GEN.clear()
        _GEN[key] = centers, proj, table
    return _GEN[key]


CHUNK = 65536


def fill_index(index, n: int, dim: int, seed: int = 0) -> None:
    """Add the ``n``-row clustered gallery to a FAISS index chunk by chunk (one copy in memory)."""
    buf = np.empty((min(CHUNK, n), dim), np.float32)
    for s in range(0, n, CHUNK):
        index.add(clustered_chunk(s, min(CHUNK, n - s), dim, seed, out=buf))


def flat_view(index) -> np.ndarray:
    """The float32 rows stored in an IndexFlat, as a zero-copy numpy array."""
    from indexer.exact import flat_rows

    return flat_rows(index)[0]


def make_queries(nq: int, dim: int, seed: int = 0) -> np.ndarray:
    """Queries from the gallery's distribution, but not in it (another chunk position)."""
    return clustered_chunk(10**12, nq, dim, seed)


# --- floor probes ---------------------------------------------------------------------------------

class Probes:
    """Memory bandwidth and matmul rate, measured interleaved with the subjects (CPU or CUDA)."""

    def __init__(self, device: str = "cpu", copy_mib: int = 1024, mm: int = 2048):
        self.device = device
        n = copy_mib * 2**20 // 4
        self.mm = mm
        if device == "cpu":
            import torch

            self.src = np.ones(n, np.float32)
            self.dst = np.empty_like(self.src)
            self.tsrc, self.tdst = torch.from_numpy(self.src), torch.from_numpy(self.dst)
            self.a = np.random.default_rng(0).random((mm, mm), dtype=np.float32)
            self.ta = torch.from_numpy(self.a)
            self.subjects = {
                "copy_numpy": lambda: np.copyto(self.dst, self.src),
                "copy_torch": lambda: self.tdst.copy_(self.tsrc),
                "sum_torch": lambda: self.tsrc.sum(),
                "mm_numpy": lambda: self.a @ self.a,
                "mm_torch": lambda: self.ta @ self.ta,
            }
        else:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: exact search uses it
            self.tsrc = torch.ones(n, device=device)
            self.tdst = torch.empty_like(self.tsrc)
            self.ta = torch.rand(mm, mm, device=device)
            self.subjects = {
                "copy_torch": lambda: self.tdst.copy_(self.tsrc),
                "sum_torch": lambda: self.tsrc.sum(),
                "mm_torch": lambda: self.ta @ self.ta,
            }
        self.nbytes = n * 4

    def rates(self, t: dict[str, list[float]], rep: int) -> tuple[float, float]:
        """(bandwidth bytes/s, multiply-adds/s) of repetition ``rep``: the best probe of each kind."""
        bw = max([2 * self.nbytes / t[k][rep] for k in t if k.startswith("copy_")]
                 + [self.nbytes / t[k][rep] for k in t if k.startswith("sum_")])
        rate = max(self.mm ** 3 / t[k][rep] for k in t if k.startswith("mm_"))
        return bw, rate

    def read_bandwidth(self, t: dict[str, list[float]], rep: int) -> float:
        """Bytes/s of the best read-only probe (a reduction): what a scan, which writes nothing, can reach."""
        return max(self.nbytes / t[k][rep] for k in t if k.startswith("sum_"))


def floor_seconds(n: int, dim: int, nq: int, bw: float, rate: float) -> tuple[float, str]:
    """The floor of one exact search of ``nq`` queries over ``n`` x ``dim`` float32 vectors, and its bound."""
    t_mem = n * dim * 4 / bw
    t_mac = nq * n * dim / rate
    return (t_mem, "memory") if t_mem >= t_mac else (t_mac, "matmul")


# --- exact search ---------------------------------------------------------------------------------

@contextmanager
def faiss_blas_settings(threshold: int, database_bs: int):
    import faiss

    old = faiss.cvar.distance_compute_blas_threshold, faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_threshold = threshold
    faiss.cvar.distance_compute_blas_database_bs = database_bs
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold, faiss.cvar.distance_compute_blas_database_bs = old


def same_neighbours(a_ids: np.ndarray, a_s: np.ndarray, b_ids: np.ndarray, eps: float = 1e-5) -> float:
    """Fraction of queries whose top-k id sets agree, counting only queries whose k-th and (k+1)-th
    scores are separated by more than ``eps`` (so that float rounding cannot legitimately swap them)."""
    ok = tot = 0
    for ai, as_, bi in zip(a_ids, a_s, b_ids):
        if len(as_) > 1 and abs(as_[-2] - as_[-1]) <= eps:
            continue
        tot += 1
        ok += set(ai[:-1].tolist()) == set(bi[:-1].tolist())
    return ok / tot if tot else float("nan")


def bench_exact_cpu(n: int, dim: int, batches, reps: int, min_seconds: float, log, seed: int = 0,
                    probe_mib: int = 1024, probe_mm: int = 2048) -> dict:
    """Exact search subjects vs the floor on an ``n`` x ``dim`` gallery; returns rows and the gallery."""
    import faiss

    exact, exact_name = _engine_exact()
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(dim)
    fill_index(index, n, dim, seed)
    xb = flat_view(index)
    log(f"  gallery {n} x {dim} filled in {time.perf_counter() - t0:.1f}s")
    queries = make_queries(max(batches), dim, seed)
    probes = Probes("cpu", copy_mib=probe_mib, mm=probe_mm)
    rows = []
    for nq in batches:
        q = queries[:nq]
        # correctness first: the engine's neighbours against plain FAISS (K+1 to see the K-th gap)
        fs, fi = index.search(q, K + 1)
        es, ei = exact(xb, q, K + 1)
        agree = same_neighbours(fi, fs, ei)
        max_diff = float(np.abs(fs - es).max())
        subjects = dict(probes.subjects)
        subjects["engine"] = lambda q=q: exact(xb, q, K)
        subjects["faiss_tuned"] = lambda q=q: _tuned_search(index, q)
        # plain FAISS at batch >1 on a big gallery takes tens of seconds: time it once, not every rep
        slow_faiss = nq > 1 and n * dim * nq > 2e10
        if not slow_faiss:
            subjects["faiss_flat"] = lambda q=q: index.search(q, K)
        t = interleave(subjects, reps, min_seconds=min_seconds)
        if slow_faiss:
            t["faiss_flat"] = [_once(lambda q=q: index.search(q, K))] * reps
        floors, read_floors, bounds, bws, mms = [], [], [], [], []
        for r in range(reps):
            bw, rate = probes.rates(t, r)
            f, bound = floor_seconds(n, dim, nq, bw, rate)
            floors.append(f), bounds.append(bound), bws.append(bw), mms.append(rate)
            read_floors.append(floor_seconds(n, dim, nq, probes.read_bandwidth(t, r), rate)[0])
        row = {"n": n, "dim": dim, "batch": nq, "floor_s": stats(floors)["median"],
               "bound": max(set(bounds), key=bounds.count), "bandwidth_gbs": stats(bws)["median"] / 1e9,
               "read_bandwidth_gbs": stats(probes.read_bandwidth(t, r) for r in range(reps))["median"] / 1e9,
               "matmul_gmacs": stats(mms)["median"] / 1e9, "engine_impl": exact_name,
               "probe_seconds": {k: stats(t[k])["median"] for k in probes.subjects},
               "agree_with_faiss": agree, "max_score_diff": max_diff,
               "faiss_flat_once": slow_faiss, "methods": {}}
        for m in ("engine", "faiss_tuned", "faiss_flat"):
            ratios = pairwise_ratios(t[m], floors)
            row["methods"][m] = {"seconds": stats(t[m]), "ratio_to_floor": stats(ratios),
                                 "ratio_to_read_floor": stats(pairwise_ratios(t[m], read_floors)),
                                 "qps": nq / stats(t[m])["median"]}
        rows.append(row)
        log(f"  batch {nq}: floor {row['floor_s'] * 1e3:.1f} ms ({row['bound']}), "
            + ", ".join(f"{m} {row['methods'][m]['ratio_to_floor']['median']:.2f}x" for m in row["methods"])
            + f"; neighbours agree {agree:.3f}")
    return {"rows": rows, "index": index, "xb": xb, "queries": queries}


def _tuned_search(index, q):
    with faiss_blas_settings(1, 65536):
        return index.search(q, K)


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- approximate indexes --------------------------------------------------------------------------

class _IndexerRerank:
    """``search(q, k)`` as ``indexer.Index.search_vectors`` does it for ``ivfsq``: FAISS returns ``k * factor``
    candidates, ``indexer.index.rerank_exact`` re-scores them from the float32 rows (ids = row numbers here)."""

    def __init__(self, index, xb: np.ndarray, factor: int):
        self.index, self.xb, self.factor = index, xb, factor

    def search(self, q: np.ndarray, k: int):
        from indexer.index import rerank_exact

        _, ids = self.index.search(q, k * self.factor)
        return rerank_exact(q, ids, k, lambda rows: self.xb[rows])


def _qps(index, q: np.ndarray, batch: int, min_seconds: float = 1.0) -> float:
    """Queries per second of ``index.search`` at a batch size (see :func:`_qps_fn`)."""
    index.search(q[:batch], K)
    return _qps_fn(lambda qq: index.search(qq, K), q, batch, min_seconds)


def bench_ann(exact: dict, n: int, dim: int, nq_eval: int, log, seed: int = 0, nlist: int = 1024,
              hnsw_subset: int = 20_000, qps_seconds: float = 0.5) -> dict:
    """IVF-Flat, IVF-PQ (+ exact re-rank), fp16 SQ (and HNSW on a subset) vs exact search at ``n`` vectors."""
    import faiss

    from indexer.faiss_index import IndexParams, empty_index, resolve_params

    index, xb = exact["index"], exact["xb"]
    engine, _ = _engine_exact()
    q = make_queries(nq_eval, dim, seed + 1)
    out = {"n": n, "dim": dim, "queries": nq_eval, "nlist": nlist, "types": []}
    # ground truth and exact QPS at both batch sizes (the engine's exact search: the speed to beat)
    _, truth = engine(xb, q, K)
    exact_qps = {b: _qps_fn(lambda qq: engine(xb, qq, K), q, b, 2 * qps_seconds) for b in (1, 64)}
    out["exact"] = {"qps": exact_qps, "bytes_per_vector": 4 * dim + 8}
    log(f"  exact: {exact_qps[1]:.1f} QPS at batch 1, {exact_qps[64]:.1f} at batch 64")

    # one coarse quantizer (k-means on a sample) and one assignment of the gallery, shared by both IVF types
    rng = np.random.default_rng(seed)
    sample = xb[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    t0 = time.perf_counter()
    km = faiss.Kmeans(dim, nlist, niter=10, spherical=True, seed=seed)
    km.train(sample)
    t_km = time.perf_counter() - t0
    t0 = time.perf_counter()
    ct = np.ascontiguousarray(km.centroids.T)
    assign = np.concatenate([np.argmax(xb[s:s + 16384] @ ct, axis=1) for s in range(0, n, 16384)])
    t_assign = time.perf_counter() - t0
    log(f"  k-means {nlist} cells on {len(sample)} vectors: {t_km:.1f}s; assigning {n} vectors: {t_assign:.1f}s")

    def quantizer():
        qz = faiss.IndexFlatIP(dim)
        qz.add(km.centroids)
        return qz

    def add_assigned(ivf, start, rows):
        ivf.add_core(len(rows), faiss.swig_ptr(np.ascontiguousarray(rows)), None,
                     faiss.swig_ptr(np.ascontiguousarray(assign[start:start + len(rows)], dtype=np.int64)))

    def record(name, param, searcher, nbytes, build_s, extra=None, batches=(1, 64)):
        _, ids = searcher.search(q, K)
        rec = recall_at_k(ids, truth, K)
        qps = {b: _qps(searcher, q, b, qps_seconds) for b in batches}
        row = {"type": name, "param": param, "recall@10": rec, "qps": qps,
               "speedup": {b: qps[b] / exact_qps[b] for b in batches}, "bytes_per_vector": nbytes / n,
               "build_s": build_s, **(extra or {})}
        out["types"].append(row)
        log(f"  {name} {param}: recall {rec:.3f}, " + ", ".join(
            f"batch {b}: {qps[b]:.0f} QPS ({row['speedup'][b]:.1f}x exact)" for b in batches))

    # IVF-PQ as the indexer builds it (pq_m = the divisor of dim nearest dim/16, 8-bit codes)
    p = resolve_params(IndexParams(index_type="ivfpq", nlist=nlist), n, dim)
    t0 = time.perf_counter()
    ivfpq = faiss.IndexIVFPQ(quantizer(), dim, nlist, p.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(sample)
    for s in range(0, n, CHUNK):
        add_assigned(ivfpq, s, xb[s:s + CHUNK])
    build = time.perf_counter() - t0 + t_km + t_assign
    pq_bytes = index_bytes(ivfpq)
    for nprobe in (16, 64):
        ivfpq.nprobe = nprobe
        record("ivfpq", f"nprobe={nprobe}", ivfpq, pq_bytes, build, {"pq_m": p.pq_m})
    # the same, re-ranking its top 100 exactly from float32 vectors already held (the flat index here;
    # the indexer keeps them in its vector file)
    refine = faiss.IndexRefine(ivfpq, index)
    refine.k_factor = 10
    for nprobe in (16, 32):
        ivfpq.nprobe = nprobe
        record("ivfpq+rerank", f"nprobe={nprobe}, top {10 * K} re-ranked", refine, pq_bytes, build,
               {"pq_m": p.pq_m, "note": "plus the float32 vectors for the re-rank (on disk in the indexer)"})
    del refine, ivfpq
    gc.collect()

    # IVF with 8-bit scalar quantisation (a quarter of the bytes each probe reads) and an exact float32
    # re-rank of its top candidates (a probe of whether fewer bytes per probe close the batch-64 gap)
    t0 = time.perf_counter()
    ivfsq = faiss.IndexIVFScalarQuantizer(quantizer(), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    ivfsq.train(sample)
    for s in range(0, n, CHUNK):
        add_assigned(ivfsq, s, xb[s:s + CHUNK])
    build = time.perf_counter() - t0 + t_km + t_assign
    sq_bytes = index_bytes(ivfsq)
    for nprobe in (32,):
        ivfsq.nprobe = nprobe
        record("ivfsq8", f"nprobe={nprobe}", ivfsq, sq_bytes, build)
    searcher = _IndexerRerank(ivfsq, xb, factor=4)  # the indexer's own re-rank (indexer.index.rerank_exact)
    for nprobe in (16, 20, 24, 32):
        ivfsq.nprobe = nprobe
        record("ivfsq8+rerank", f"nprobe={nprobe}, top {4 * K} re-ranked", searcher, sq_bytes, build,
               {"note": "plus the float32 vectors for the re-rank (on disk in the indexer)"})
    del searcher, ivfsq
    gc.collect()

    # fp16 scalar quantisation (flat, exact up to fp16 rounding); no BLAS path, so batch 64 is slow
    t0 = time.perf_counter()
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for s in range(0, n, CHUNK):
        sq.add(xb[s:s + CHUNK])
    record("sq_fp16", "", sq, index_bytes(sq), time.perf_counter() - t0, batches=(1,))
    del sq
    gc.collect()

    # HNSW on a subset: build rate and bytes per vector (a 1M build takes too long on 2 cores)
    sub = min(hnsw_subset, n)
    hp = resolve_params(IndexParams(index_type="hnsw"), sub, dim)
    hnsw = empty_index(hp, dim)
    t0 = time.perf_counter()
    hnsw.add_with_ids(np.ascontiguousarray(xb[:sub]), np.arange(sub, dtype=np.int64))
    rate = sub / (time.perf_counter() - t0)
    out["hnsw_subset"] = {"n": sub, "M": hp.hnsw_m, "ef_construction": hp.ef_construction,
                          "build_vectors_per_s": rate, "bytes_per_vector": index_bytes(hnsw) / sub,
                          "estimated_build_s_at_n": n / rate * max(1.0, math.log(n) / math.log(sub))}
    log(f"  hnsw subset {sub}: {rate:.0f} vectors/s to build, est. "
        f"{out['hnsw_subset']['estimated_build_s_at_n'] / 60:.0f} min at {n}")
    del hnsw
    gc.collect()

    # IVF-Flat last: it holds a second full copy, so the flat index is dropped first (rows regenerated)
    exact["index"] = exact["xb"] = index = xb = None
    gc.collect()
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(quantizer(), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    buf = np.empty((min(CHUNK, n), dim), np.float32)
    for s in range(0, n, CHUNK):
        add_assigned(ivf, s, clustered_chunk(s, min(CHUNK, n - s), dim, seed, out=buf))
    build = time.perf_counter() - t0 + t_km + t_assign
    ivf_bytes = index_bytes(ivf)
    for nprobe in (8, 16, 20, 24, 32, 64):
        ivf.nprobe = nprobe
        record("ivf", f"nprobe={nprobe}", ivf, ivf_bytes, build)
    del ivf
    gc.collect()
    return out


def _qps_fn(fn, q: np.ndarray, batch: int, min_seconds: float = 1.0, tries: int = 3) -> float:
    """Queries per second of ``fn(batch of queries)``, batches cycled over ``q``: the best of ``tries``
    spans of ``min_seconds / tries`` (the least disturbed one, on a shared machine; exact and approximate
    searches are measured the same way, so their ratio stays fair)."""
    best = 0.0
    for _ in range(tries):
        done, start, pos = 0, time.perf_counter(), 0
        while True:
            qq = q[pos:pos + batch]
            if len(qq) < batch:
                pos, qq = 0, q[:batch]
            fn(qq)
            done += len(qq)
            pos += batch
            if time.perf_counter() - start >= min_seconds / tries:
                break
        best = max(best, done / (time.perf_counter() - start))
    return best


# --- GPU ------------------------------------------------------------------------------------------

def torch_exact_search(xb, q, k: int, block: int = 1 << 20):
    """Exact top-k on a torch device: blocked float32 matmul + topk (TF32 off)."""
    import torch

    best_s = best_i = None
    for s in range(0, xb.shape[0], block):
        sc = q @ xb[s:s + block].T
        v, i = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        i = i + s
        if best_s is None:
            best_s, best_i = v, i
        else:
            v, j = torch.topk(torch.cat([best_s, v], 1), k, dim=1)
            best_i, best_s = torch.gather(torch.cat([best_i, i], 1), 1, j), v
    return best_s, best_i


def bench_exact_gpu(n: int, dim: int, batches, reps: int, log, device: str = "cuda", seed: int = 0) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device=device).manual_seed(seed)  # exact-search speed does not depend on the data
    xb = torch.nn.functional.normalize(torch.randn((n, dim), device=device, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn((max(batches), dim), device=device, generator=g), dim=1)
    probes = Probes(device, copy_mib=1024, mm=8192)
    gpu_faiss = None
    try:
        import faiss

        if faiss.get_num_gpus() > 0:
            res = faiss.StandardGpuResources()
            gpu_faiss = faiss.GpuIndexFlatIP(res, dim)
            for s in range(0, n, CHUNK):
                gpu_faiss.add(xb[s:s + CHUNK].cpu().numpy())
    except (ImportError, AttributeError, RuntimeError):
        gpu_faiss = None
    rows = []
    for nq in batches:
        q = queries[:nq]
        subjects = dict(probes.subjects)
        subjects["torch_gpu"] = lambda q=q: torch_exact_search(xb, q, K)
        qn = q.cpu().numpy()
        if gpu_faiss is not None:
            subjects["faiss_gpu"] = lambda qn=qn: gpu_faiss.search(qn, K)
        t = interleave(subjects, reps, min_seconds=0.2, device=device)
        floors = [floor_seconds(n, dim, nq, *probes.rates(t, r))[0] for r in range(reps)]
        bw, rate = probes.rates(t, reps - 1)
        row = {"n": n, "dim": dim, "batch": nq, "floor_s": stats(floors)["median"],
               "bound": floor_seconds(n, dim, nq, bw, rate)[1], "bandwidth_gbs": bw / 1e9,
               "matmul_gmacs": rate / 1e9, "methods": {}}
        for m in ("torch_gpu", "faiss_gpu"):
            if m in t:
                row["methods"][m] = {"seconds": stats(t[m]), "ratio_to_floor": stats(pairwise_ratios(t[m], floors)),
                                     "qps": nq / stats(t[m])["median"]}
        rows.append(row)
        log(f"  batch {nq}: floor {row['floor_s'] * 1e3:.2f} ms, "
            + ", ".join(f"{m} {v['ratio_to_floor']['median']:.2f}x" for m, v in row["methods"].items()))
    return {"rows": rows}


# --- report ---------------------------------------------------------------------------------------

def markdown(res: dict) -> str:
    lines = []
    rows = []
    for r in res["exact"]:
        for m, v in r["methods"].items():
            ratio = v["ratio_to_floor"]["median"]
            target = verdict(ratio, EXACT_TARGET, False) if m in ("engine", "torch_gpu") else ""
            label = f"{m} (timed once)" if m == "faiss_flat" and r.get("faiss_flat_once") else m
            rows.append([r["n"], r["dim"], r["batch"], label, v["seconds"]["median"] * 1e3, r["floor_s"] * 1e3,
                         r["bound"], ratio, f"{v['ratio_to_floor']['min']:.2f}-{v['ratio_to_floor']['max']:.2f}",
                         (v.get("ratio_to_read_floor") or {}).get("median"), v["qps"], target])
    lines.append("## Exact search vs its floor\n")
    lines.append(f"Target: the engine's exact search within {EXACT_TARGET}x of the floor "
                 "(median of per-repetition ratios; each repetition's floor measured next to it).\n")
    lines.append(md_table(["N", "dim", "batch", "method", "ms", "floor ms", "bound", "x floor", "range",
                           "x read floor", "QPS", "target"], rows))
    lines.append("\n`x read floor`: the same ratio with the bandwidth of the read-only probe (a reduction) instead "
                 "of the copy (read + write bytes): a scan only reads, and reading alone does not reach a copy's "
                 "combined rate on every machine.")
    probes = [[r["n"], r["dim"], r["batch"], r["bandwidth_gbs"], r.get("read_bandwidth_gbs"), r["matmul_gmacs"],
               r.get("agree_with_faiss"), r.get("max_score_diff")] for r in res["exact"]]
    lines.append("\nProbes (medians) and agreement of the engine's neighbours with FAISS (queries whose 10th and "
                 "11th scores differ by > 1e-5):\n")
    lines.append(md_table(["N", "dim", "batch", "bandwidth GB/s (copy)", "read GB/s", "matmul GMAC/s",
                           "same top-10 as FAISS", "max |score diff|"], probes))
    if res["exact"] and "engine_impl" in res["exact"][0]:
        lines.append(f"\nEngine implementation measured: `{res['exact'][0]['engine_impl']}`.")
    for ann in res.get("ann", []):
        lines.append(f"\n## Approximate indexes at {ann['n']} x {ann['dim']} ({ann['queries']} queries, "
                     f"nlist {ann['nlist']})\n")
        e = ann["exact"]
        eq = _by_batch(e["qps"])
        lines.append(f"Exact (engine): {eq[1]:.1f} QPS at batch 1, {eq[64]:.1f} QPS at batch 64, "
                     f"{e['bytes_per_vector']} bytes/vector (float32 + id).\n")
        trows = []
        for t in ann["types"]:
            qps, sp = _by_batch(t["qps"]), _by_batch(t["speedup"])
            ok = t["recall@10"] >= ANN_RECALL_TARGET and sp[1] >= ANN_SPEEDUP_TARGET
            trows.append([t["type"], t["param"], t["recall@10"], qps[1], sp[1], qps.get(64), sp.get(64),
                          t["bytes_per_vector"], t["build_s"], "met" if ok else "NOT met"])
        lines.append(md_table(["type", "param", "recall@10", "QPS b1", "x exact b1", "QPS b64", "x exact b64",
                               "bytes/vector", "build s", f"recall>={ANN_RECALL_TARGET} & >={ANN_SPEEDUP_TARGET:g}x (b1)"],
                              trows))
        h = ann.get("hnsw_subset")
        if h:
            lines.append(f"\nHNSW (M={h['M']}, efConstruction={h['ef_construction']}) built on {h['n']} vectors only: "
                         f"{h['build_vectors_per_s']:.0f} vectors/s, {h['bytes_per_vector']:.0f} bytes/vector; "
                         f"a {ann['n']} build is estimated at {h['estimated_build_s_at_n'] / 60:.0f} min here.")
    for note in res.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def _by_batch(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="gallery sizes")
    ap.add_argument("--dims", type=int, nargs="+", default=[2048, 1280], help="dimensions (resnet50, lite0)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="query batch sizes")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per configuration")
    ap.add_argument("--min-seconds", type=float, default=0.3, help="minimum timed span per repetition")
    ap.add_argument("--ann-size", type=int, default=1_000_000,
                    help="gallery size for the approximate indexes (0: skip); uses the last of --dims")
    ap.add_argument("--ann-queries", type=int, default=256, help="queries for recall and QPS")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF cells for the approximate indexes")
    ap.add_argument("--qps-seconds", type=float, default=0.5, help="time spent measuring each approximate QPS")
    ap.add_argument("--probe-mib", type=int, default=1024, help="MiB copied / summed by the bandwidth probe (CPU)")
    ap.add_argument("--probe-mm", type=int, default=2048, help="side of the square matmul probe (CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--max-gib", type=float, default=None,
                    help="largest gallery in GiB (default: 40%% of MemAvailable on CPU); bigger ones shrink to fit")
    ap.add_argument("--name", default=None, help="result file name (default search, or search_gpu on CUDA)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    info = machine_info(args.device)
    res = {"exact": [], "ann": [], "notes": [], "k": K}
    cap = args.max_gib or (0.4 * (mem_available_gib() or 8) if args.device == "cpu" else 1e9)
    for dim in args.dims:
        for n in args.sizes:
            use = n
            while use * dim * 4 / 2**30 > cap:
                use //= 2
            if use != n:
                res["notes"].append(f"{n} x {dim} ({n * dim * 4 / 2**30:.1f} GiB) exceeds the memory cap "
                                    f"{cap:.1f} GiB on this shared machine: measured at {use} instead.")
            log(f"{use} x {dim} on {args.device}")
            ann_here = args.device == "cpu" and args.ann_size and dim == args.dims[-1] and n == max(args.sizes)
            if args.device == "cpu":
                ex = bench_exact_cpu(use, dim, args.batches, args.reps, args.min_seconds, log,
                                     probe_mib=args.probe_mib, probe_mm=args.probe_mm)
                res["exact"].extend(ex["rows"])
                if ann_here:
                    res["ann"].append(bench_ann(ex, use, dim, args.ann_queries, log, nlist=args.nlist,
                                                qps_seconds=args.qps_seconds))
                del ex
            else:
                res["exact"].extend(bench_exact_gpu(use, dim, args.batches, args.reps, log, args.device)["rows"])
            gc.collect()
    name = args.name or ("search" if args.device == "cpu" else "search_gpu")
    res = to_jsonable(res)
    paths = write_results(name, res, markdown(res), title="Search: exact vs floor, approximate vs exact",
                          info=info, out_dir=args.out)
    log(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
