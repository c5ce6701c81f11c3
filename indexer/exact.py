"""Exact inner-product top-k over the float32 rows of a flat index, close to the machine's floor.

``IndexFlatIP.search`` measured 2-14x its floor on 2 shared cores (benchmarks/results/search.md):
FAISS 1.15 scans query by query unless queries x dim reaches ``distance_compute_blas_threshold``
(128000), so one query uses one core and 64 queries of 1280 dims read the gallery 64 times. Here the
gallery is split into one contiguous range per core, each scanned by single-threaded BLAS (no barrier
between cores, which a busy machine punishes) in 4k-64k-row GEMMs (GEMV for one query), with a per-block
top-k that only looks at scores above the running k-th best. Results: best first; equal scores in row
order; missing entries padded like FAISS (row -1, score -FLT_MAX).
"""

from __future__ import annotations

import os

import numpy as np

BLOCK_SCORES = 262144  # scores per GEMM block (1 MiB: the block's scores stay in cache for the top-k)
_MIN_ROWS_PER_THREAD = 16384  # below this a second thread costs more than it saves
_POOL: dict = {}


def flat_rows(index) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-copy views of a CPU flat index's stored vectors (n, d) and of its ids (None: ids are rows).

    ``index`` is an ``IndexFlat`` or an ``IndexIDMap``/``IndexIDMap2`` around one; the views are valid
    while ``index`` is alive and unchanged.
    """
    import faiss

    ids = None
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        n = index.id_map.size()
        ids = faiss.rev_swig_ptr(index.id_map.data(), n) if n else np.zeros(0, np.int64)
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexFlat):
        raise TypeError(f"not a flat index: {type(index).__name__}")
    n, d = index.ntotal, index.d
    xb = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
    return xb, ids


def exact_search(xb: np.ndarray, q: np.ndarray, k: int, threads: int | None = None,
                 block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query against the rows of ``xb``.

    ``block``: gallery rows per GEMM (default: 4096 to 65536, fewer for more queries).

    Returns:
        ``(scores float32 (nq, k), rows int64 (nq, k))``, best first.
    """
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, xb.shape[1])
    n, nq = len(xb), len(q)
    kk = min(k, n)
    if nq == 0 or kk <= 0:
        return _pad(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), max(k, 0))
    qt = np.ascontiguousarray(q.T)
    block = block or int(min(65536, max(4096, BLOCK_SCORES // nq)))
    threads = threads or len(os.sched_getaffinity(0))
    parts = max(1, min(threads, n // _MIN_ROWS_PER_THREAD))
    pool, single_blas = _workers(parts) if parts > 1 else (None, None)
    if pool is None:
        results = [_scan(xb, qt, 0, n, kk, block)]
    else:
        bounds = [n * p // parts for p in range(parts + 1)]
        with single_blas():
            futures = [pool.submit(_scan, xb, qt, bounds[p], bounds[p + 1], kk, block) for p in range(parts)]
            results = [f.result() for f in futures]
    s, i = _best_k(np.concatenate([r[0] for r in results], 1), np.concatenate([r[1] for r in results], 1), kk)
    return _pad(*_rescore(xb, q, s, i), k)


def _rescore(xb: np.ndarray, q: np.ndarray, s: np.ndarray, i: np.ndarray):
    """Recompute the winners' scores in float64 (then float32) and re-sort them.

    A GEMM's float32 sum for one row depends on where the row sits in the matrix (kernel tiles), so
    the same item could score differently after a removal shifted it. The float64 products make a
    score a function of the two vectors alone, as FAISS's per-pair scan is.
    """
    out = s.copy()
    for j in range(len(q)):
        ok = i[j] >= 0
        if ok.any():
            out[j, ok] = (xb[i[j, ok]].astype(np.float64) @ q[j].astype(np.float64)).astype(np.float32)
    return _best_k(out, i, s.shape[1])


def _scan(xb: np.ndarray, qt: np.ndarray, lo: int, hi: int, k: int, block: int):
    """Sorted top-k of rows ``lo..hi`` for each query (columns of ``qt``).

    A first small block sets each query's k-th best score; later blocks pass only the scores above it
    (one comparison and ``np.nonzero``) to the merge, so the top-k costs little next to the GEMM.
    """
    nq = qt.shape[1]
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    q0 = np.ascontiguousarray(qt[:, 0]) if nq == 1 else None
    s, step = lo, min(block, max(4096, 4 * k))
    while s < hi:
        e = min(s + step, hi)
        step = block
        sc = (xb[s:e] @ q0 if q0 is not None else xb[s:e] @ qt).reshape(e - s, nq)  # GEMV for one query
        rows, cols = np.nonzero(sc > best_s[:, -1])
        if len(rows) > max(8 * k * nq, sc.size // 16):  # many candidates (first block, rising scores)
            v, r = _topk_rows(np.ascontiguousarray(sc.T), k)
            cand_s, cand_i = v, r + s
        else:
            cand_s, cand_i = _per_query(sc[rows, cols], rows + s, cols, nq, k)
        best_s, best_i = _best_k(np.concatenate([best_s, cand_s], 1), np.concatenate([best_i, cand_i], 1), k)
        s = e
    return best_s, best_i


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered top-k of each row of ``scores`` (nq, b); among scores tied at the k-th place the lowest
    columns are kept (``argpartition`` alone would pick arbitrarily)."""
    kk = min(k, scores.shape[1])
    part = np.argpartition(scores, scores.shape[1] - kk, axis=1)[:, -kk:]
    vals = np.take_along_axis(scores, part, 1)
    kth = vals.min(axis=1)
    for r in np.flatnonzero((scores == kth[:, None]).sum(axis=1) > (vals == kth[:, None]).sum(axis=1)):
        above = np.flatnonzero(scores[r] > kth[r])
        tied = np.flatnonzero(scores[r] == kth[r])[:kk - len(above)]
        part[r] = np.concatenate([above, tied])
        vals[r] = scores[r, part[r]]
    return vals, part


def _per_query(vals: np.ndarray, rows: np.ndarray, cols: np.ndarray, nq: int, k: int):
    """Candidates (score, row, query) -> (nq, k) arrays of each query's k best, -inf / -1 padded."""
    order = np.lexsort((rows, -vals, cols))
    cols, vals, rows = cols[order], vals[order], rows[order]
    rank = np.arange(len(cols)) - np.searchsorted(cols, cols)
    keep = rank < k
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    out_s[cols[keep], rank[keep]] = vals[keep]
    out_i[cols[keep], rank[keep]] = rows[keep]
    return out_s, out_i


def _best_k(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row, sorted: score descending, then row ascending (padding last)."""
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _pad(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = s.copy()
    s[np.isneginf(s)] = -np.finfo(np.float32).max  # FAISS's padding score
    if s.shape[1] < k:
        fill = k - s.shape[1]
        s = np.concatenate([s, np.full((len(s), fill), -np.finfo(np.float32).max, np.float32)], 1)
        i = np.concatenate([i, np.full((len(i), fill), -1, np.int64)], 1)
    return s, i


def _workers(parts: int):
    """A persistent pool of ``parts`` threads and a context making BLAS single-threaded meanwhile
    (threadpoolctl); ``(None, None)`` without threadpoolctl: then one multi-threaded BLAS scan is used."""
    from concurrent.futures import ThreadPoolExecutor

    if "controller" not in _POOL:
        try:
            from threadpoolctl import ThreadpoolController

            _POOL["controller"] = ThreadpoolController()
        except ImportError:
            _POOL["controller"] = None
    controller = _POOL["controller"]
    if controller is None:
        return None, None
    if _POOL.get("size") != parts:
        if _POOL.get("pool") is not None:
            _POOL["pool"].shutdown(wait=False)
        _POOL["pool"], _POOL["size"] = ThreadPoolExecutor(parts, thread_name_prefix="exact-search"), parts
    return _POOL["pool"], lambda: controller.limit(limits=1, user_api="blas")
