"""Query-time re-ranking of an index's results (``--refine`` of ``ppssl search``, ``index eval`` and the Search
page), built on the pure functions of :mod:`engine.rerank`.

``qe`` (alpha query expansion) searches twice; ``dba`` (database-side augmentation) searches the gallery's
augmented vectors, computed once per index state and cached beside the raw vectors (``dba_k{K}.f32`` with a
JSON stamp); ``dba+qe`` combines them; ``kr`` (k-reciprocal) re-orders each query's best ``candidates``.
Measured on cub100 and the demo in benchmarks/results/rerank.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from engine.atomic import atomic_write_bytes, atomic_write_json
from engine.rerank import alpha_qe, augment_database, k_reciprocal_scores
from indexer.errors import IndexError_
from indexer.exact import ExactSearcher

METHODS = ("none", "qe", "dba", "dba+qe", "kr")
#: above this many items, DBA vectors (one exact top-k search per item: O(N^2 D)) are not computed inside a
#: query; `ppssl index dba --index DIR` computes and caches them once (minutes at 100k, hours beyond 1M)
LAZY_DBA_MAX = 20_000


@dataclass(frozen=True)
class Refine:
    """How to re-rank (defaults: the settings measured in benchmarks/results/rerank.md)."""

    method: str = "none"  # none | qe (alpha query expansion) | dba (database-side augmentation) | dba+qe | kr
    k: int = 2  # neighbours averaged by alpha-QE and by DBA
    alpha: float = 3.0  # similarity exponent of the alpha-QE / DBA weights
    candidates: int = 100  # k-reciprocal: the query's best candidates that are re-ordered
    k1: int = 20  # k-reciprocal set size
    k2: int = 6  # k-reciprocal local query expansion
    lam: float = 0.3  # k-reciprocal weight of the original distance

    def __post_init__(self):
        if self.method not in METHODS:
            raise IndexError_(f"unknown re-ranking {self.method!r}; use one of {', '.join(METHODS)}")
        if self.k < 1 or self.candidates < 2 or self.k1 < 1 or self.k2 < 1 or not 0 <= self.lam <= 1:
            raise IndexError_(f"bad re-ranking settings: {asdict(self)}")

    @property
    def active(self) -> bool:
        return self.method != "none"


def _stamp(index, k: int, alpha: float) -> dict:
    """What DBA vectors depend on: the live ids, the vector file, the searched space, k and alpha."""
    ids = index.ids()
    return {"k": int(k), "alpha": float(alpha), "count": int(len(ids)), "dim": int(index.dim),
            "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest(),
            "vectors": index._vec_path.name, "vec_rows": int(index._vec_committed),
            "space": index.fingerprint}  # an adapted index's head changes the vectors, not the vector file


def dba_vectors(index, k: int = 2, alpha: float = 3.0, *, save: bool = True, lazy: bool = True) -> np.ndarray:
    """The index's DBA vectors (rows in ``index.ids()`` order), from the cache beside the raw vectors when it
    matches the index's current state, else computed (one exact top-k search per item) and cached.

    ``lazy`` (inside a query): refuse to compute for more than :data:`LAZY_DBA_MAX` items."""
    stamp = _stamp(index, k, alpha)
    data, meta = index.dir / f"dba_k{k}.f32", index.dir / f"dba_k{k}.json"
    try:
        if json.loads(meta.read_text()) == stamp:
            out = np.fromfile(data, dtype=np.float32)
            if out.size == stamp["count"] * stamp["dim"]:
                return out.reshape(stamp["count"], stamp["dim"])
    except (OSError, ValueError):
        pass
    if lazy and stamp["count"] > LAZY_DBA_MAX:
        raise IndexError_(f"{index.dir}: database-side augmentation for {stamp['count']:,} items must be prepared "
                          f"once: ppssl index dba --index {index.dir} --k {k}")
    v = index.vectors().astype(np.float32)
    searcher = ExactSearcher()
    try:
        scores, rows = searcher.search(v, v, min(k, len(v)))
    finally:
        searcher.close()
    out = augment_database(v, rows, scores, alpha)
    if save:
        try:
            atomic_write_bytes(data, np.ascontiguousarray(out).tobytes())
            atomic_write_json(meta, stamp)  # written last: the stamp vouches for the data file
        except OSError:
            pass  # a read-only index still answers, it recomputes next time
    return out


def _exclude(scores: np.ndarray, ids: np.ndarray, exclude, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded ids from each row (then the k best), padding with id -1."""
    if exclude is None:
        return scores[:, :k], ids[:, :k]
    out_s = np.full((len(ids), k), -np.finfo(np.float32).max, np.float32)
    out_i = np.full((len(ids), k), -1, np.int64)
    for r, (srow, irow) in enumerate(zip(scores, ids)):
        drop = set(exclude[r]) if exclude[r] is not None else set()
        keep = [j for j, i in enumerate(irow) if i >= 0 and int(i) not in drop][:k]
        out_s[r, :len(keep)], out_i[r, :len(keep)] = srow[keep], irow[keep]
    return out_s, out_i


def refined_search(index, queries: np.ndarray, k: int, refine: Refine,
                   exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (Q, k), ids (Q, k))`` of ``index`` for ``queries`` re-ranked by ``refine``.

    ``exclude``: per query, ids left out of its results and of its expansion (e.g. the query's own record).
    Scores are cosine similarities to the (expanded) query, except for ``kr``: 1 - the blended distance.
    """
    q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, index.dim))
    extra = max((len(e) for e in exclude or [] if e is not None), default=0)
    if not refine.active:
        return _exclude(*index.search_vectors(q, k + extra), exclude, k)
    if refine.method == "kr":
        cs, ci = _exclude(*index.search_vectors(q, refine.candidates + extra), exclude, refine.candidates)
        out_s = np.full((len(q), k), -np.finfo(np.float32).max, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            ok = ci[r] >= 0
            if not ok.any():
                continue
            cand = ci[r][ok]
            new = k_reciprocal_scores(q[r], index.vectors(cand), refine.k1, refine.k2, refine.lam)
            order = np.argsort(-new, kind="stable")[:k]
            out_s[r, :len(order)], out_i[r, :len(order)] = new[order], cand[order]
        return out_s, out_i
    if refine.method == "qe":
        s, i = _exclude(*index.search_vectors(q, refine.k + extra), exclude, refine.k)
        q2 = alpha_qe(q, _rows_or_zero(index, i), np.where(i >= 0, s, 0.0), refine.alpha)
        return _exclude(*index.search_vectors(q2, k + extra), exclude, k)
    # dba, dba+qe: exact scan of the augmented gallery
    gal = dba_vectors(index, refine.k, refine.alpha)
    ids = index.ids()
    searcher = index._exact

    def scan(x: np.ndarray, n: int):
        s, rows = searcher.search(gal, x, n)
        return s, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)

    if refine.method == "dba+qe":
        s, i = _exclude(*scan(q, refine.k + extra), exclude, refine.k)
        pos = {int(v): n for n, v in enumerate(ids)}
        nb = np.zeros((len(q), refine.k, index.dim), np.float32)
        for r in range(len(q)):
            for j, v in enumerate(i[r]):
                if v >= 0:
                    nb[r, j] = gal[pos[int(v)]]
        q = alpha_qe(q, nb, np.where(i >= 0, s, 0.0), refine.alpha)
    return _exclude(*scan(q, k + extra), exclude, k)


def _rows_or_zero(index, ids: np.ndarray) -> np.ndarray:
    """(Q, k, D) stored vectors of ``ids`` (zeros where the id is -1)."""
    flat = ids.reshape(-1)
    ok = flat >= 0
    out = np.zeros((len(flat), index.dim), np.float32)
    if ok.any():
        out[ok] = index.vectors(flat[ok])
    return out.reshape(ids.shape[0], ids.shape[1], index.dim)
