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

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_SCORES = 262144  # scores per GEMM block (1 MiB: the block's scores stay in cache for the top-k)
_MIN_ROWS_PER_THREAD = 16384  # below this a second thread costs more than it saves


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


class ExactSearcher:
    """Exact top-k with its own worker threads: one per :class:`indexer.Index`, so two indexes (or two
    Streamlit sessions) searching at once never share, resize or shut down each other's pool.

    Args:
        threads: gallery ranges scanned in parallel (default: the CPUs this process may use).
    """

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(threads or len(os.sched_getaffinity(0))))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="exact-search")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool

    def search(self, xb: np.ndarray, q: np.ndarray, k: int, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        parts = max(1, min(self.threads, n // _MIN_ROWS_PER_THREAD))
        if parts == 1 or not _BLAS.available():  # without threadpoolctl: one multi-threaded BLAS scan
            results = [_scan(xb, qt, 0, n, kk, block)]
        else:
            bounds = [n * p // parts for p in range(parts + 1)]
            pool = self._executor()
            with _BLAS.single_threaded():
                futures = [pool.submit(_scan, xb, qt, bounds[p], bounds[p + 1], kk, block) for p in range(parts)]
                results = [f.result() for f in futures]
        s, i = _best_k(np.concatenate([r[0] for r in results], 1), np.concatenate([r[1] for r in results], 1), kk)
        return _pad(*_rescore(xb, q, s, i), k)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None


def exact_search(xb: np.ndarray, q: np.ndarray, k: int, threads: int | None = None,
                 block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-off :meth:`ExactSearcher.search` (its threads are released at return)."""
    searcher = ExactSearcher(threads)
    try:
        return searcher.search(xb, q, k, block)
    finally:
        searcher.close()


class _BlasLimit:
    """Single-threaded BLAS while any parallel scan runs (each scan thread is one core).

    threadpoolctl's limit is process-wide and restores what it saw on entry, so two overlapping scans
    would leave BLAS at one thread for good (the second saves the first's limit). Here the first scan to
    enter sets the limit, the last to leave restores it, under a lock.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._limiter = None
        self._controller = None
        self._probed = False

    def available(self) -> bool:
        with self._lock:
            if not self._probed:
                self._probed = True
                try:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                except ImportError:
                    self._controller = None
            return self._controller is not None

    @contextlib.contextmanager
    def single_threaded(self):
        with self._lock:
            if self._active == 0:
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._limiter.restore_original_limits()
                    self._limiter = None


_BLAS = _BlasLimit()


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


#: one query with k at least this large and a range this many times k: the sampled-threshold scan (large k)
LARGE_K, LARGE_K_RANGE = 64, 8


def _scan(xb: np.ndarray, qt: np.ndarray, lo: int, hi: int, k: int, block: int):
    """Sorted top-k of rows ``lo..hi`` for each query (columns of ``qt``).

    A first small block sets each query's k-th best score; later blocks pass only the scores above it
    (one comparison and ``np.nonzero``) to the merge, so the top-k costs little next to the GEMM.
    """
    nq = qt.shape[1]
    if nq == 1 and k >= LARGE_K and hi - lo >= LARGE_K_RANGE * k:
        found = _scan_one_large_k(xb, np.ascontiguousarray(qt[:, 0]), lo, hi, k, block)
        if found is not None:
            return found
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


def _scan_one_large_k(xb: np.ndarray, q: np.ndarray, lo: int, hi: int, k: int, block: int):
    """One query's sorted top-k of rows ``lo..hi`` for a large k, or None when the guess below fell short.

    With a large k the running k-th best of the first block is a weak bound (k of 4096 rows), so most of the
    next block's scores pass it and each block pays a full partial sort. Instead a threshold is guessed from a
    first block: the score its share of k (x 1.5) reaches. Every block then keeps only the scores at or above
    it; when at least k rows qualify, the k-th best is at or above the guess, so every row of the true top-k
    (ties included) is among them and one sort of those few gives it exactly. Fewer than k: None (the caller
    scans the usual way).
    """
    n = hi - lo
    first = min(n, max(4096, LARGE_K_RANGE * k))
    sc = xb[lo:lo + first] @ q
    m = min(first, int(np.ceil(1.5 * k * first / n)))
    thr = np.partition(sc, first - m)[first - m]
    keep = np.flatnonzero(sc >= thr)
    vals, rows = [sc[keep]], [keep + lo]
    s = lo + first
    while s < hi:
        e = min(s + block, hi)
        sc = xb[s:e] @ q
        keep = np.flatnonzero(sc >= thr)
        vals.append(sc[keep])
        rows.append(keep + s)
        s = e
    v, r = np.concatenate(vals), np.concatenate(rows)
    if len(v) < k:
        return None
    order = np.lexsort((r, -v))[:k]
    return v[order][None].astype(np.float32), r[order][None].astype(np.int64)


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
