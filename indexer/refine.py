"""Query-time re-ranking of an index's results (``--refine`` of ``ppssl search``, ``index eval`` and the Search
page), built on the pure functions of :mod:`engine.rerank`.

Each method is a registered :class:`Reranker` with its serving form (over any
:class:`indexer.backend.SearchBackend`) and its leave-one-out form (``index eval``, the benchmark): ``qe``
(alpha query expansion) searches twice; ``dba`` (database-side augmentation) searches the gallery's augmented
vectors, computed once per index state and cached beside the raw vectors (``dba_k{K}.f32`` with a JSON stamp);
``dba+qe`` combines them; ``kr`` (k-reciprocal) re-orders each query's best ``candidates``. Measured on cub100
and the demo in benchmarks/results/rerank.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

import numpy as np

from engine.atomic import atomic_write_bytes, atomic_write_json
from engine.rerank import alpha_qe, augment_database, k_reciprocal_scores
from indexer.errors import IndexError_

#: above this many items, DBA vectors (one exact top-k search per item: O(N^2 D)) are not computed inside a
#: query; `ppssl index dba --index DIR` computes and caches them once (minutes at 100k, hours beyond 1M)
LAZY_DBA_MAX = 20_000


@dataclass(frozen=True)
class Refine:
    """How to re-rank (defaults: the settings measured in benchmarks/results/rerank.md). ``method`` names a
    registered :class:`Reranker`; the other fields are the settings those methods read."""

    method: str = "none"  # a registered re-ranker: none | qe | dba | dba+qe | kr (reranker_names())
    k: int | None = None  # neighbours averaged by alpha-QE and by DBA; None = the method's default_k
    alpha: float = 3.0  # similarity exponent of the alpha-QE / DBA weights
    candidates: int = 100  # k-reciprocal: the query's best candidates that are re-ordered
    k1: int = 20  # k-reciprocal set size
    k2: int = 6  # k-reciprocal local query expansion
    lam: float = 0.3  # k-reciprocal weight of the original distance

    def __post_init__(self):
        if self.method not in RERANKERS:
            raise IndexError_(f"unknown re-ranking {self.method!r}; use one of {', '.join(RERANKERS)}")
        if (self.k is not None and self.k < 1) or self.candidates < 2 or self.k1 < 1 or self.k2 < 1 or not 0 <= self.lam <= 1:
            raise IndexError_(f"bad re-ranking settings: {asdict(self)}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def reranker(self) -> "Reranker":
        return RERANKERS[self.method]

    @property
    def neighbours(self) -> int:
        """``k``, or the method's default (chosen on cub100's validation part: benchmarks/results/rerank_val.md)."""
        return self.k if self.k is not None else self.reranker.default_k


@dataclass
class LeaveOneOut:
    """A re-ranker's leave-one-out form, as :func:`engine.metrics.retrieval_metrics` takes it: the (expanded)
    queries, the (augmented) gallery, and an optional ``rescore(start, sims)`` of each chunk of query rows."""

    queries: np.ndarray
    gallery: np.ndarray
    rescore: Callable | None = None

    def scores(self) -> np.ndarray:
        """The whole (Q, N) score matrix (for small sets: benchmarks score it with an independent metric)."""
        import torch

        s = self.queries @ self.gallery.T
        return s if self.rescore is None else self.rescore(0, torch.from_numpy(s)).numpy()


class Reranker:
    """One query-time re-ranking method: how it serves a query and how it is evaluated leave-one-out.

    Subclass, set the class attributes, implement :meth:`search` and :meth:`leave_one_out`, and decorate with
    :func:`register_reranker`: the CLI's ``--refine`` choices, the Search page, the API, ``index eval`` and
    ``benchmarks/rerank.py`` read the registry (docs/extending.md).
    """

    name: ClassVar[str]  # the --refine value
    label: ClassVar[str]  # the Search page's name for it
    summary: ClassVar[str]  # one line for --help
    needs_cache: ClassVar[bool] = False  # searches vectors cached in the backend's cache_dir (DBA)
    default_k: ClassVar[int] = 2  # neighbours averaged when Refine.k is None

    def search(self, backend, q: np.ndarray, k: int, refine: Refine, exclude, extra: int):
        """``(scores (Q, k), ids (Q, k))`` of ``backend`` (a :class:`indexer.backend.SearchBackend`) for
        queries ``q``; ``extra`` = the most ids any query excludes (fetch that many more before dropping)."""
        raise NotImplementedError

    def leave_one_out(self, qf: np.ndarray, gf: np.ndarray, self_pos: np.ndarray, refine: Refine) -> LeaveOneOut:
        """Every query ranked against the gallery ``gf`` with its own item (``self_pos``: gallery row of each
        query, -1 = none) held out of its ranking *and* of everything the method derives (expansions,
        augmented vectors): leave-one-out must not score a re-ranker with the answer inside."""
        raise NotImplementedError


RERANKERS: dict[str, Reranker] = {}


def register_reranker(cls: type[Reranker]) -> type[Reranker]:
    """Class decorator: make ``cls`` a ``--refine`` choice everywhere."""
    if cls.name in RERANKERS:
        raise ValueError(f"re-ranker {cls.name!r} is already registered")
    RERANKERS[cls.name] = cls()
    return cls


def reranker_names() -> tuple[str, ...]:
    """The registered ``--refine`` choices, ``none`` first."""
    return tuple(RERANKERS)


def _stamp(index, k: int, alpha: float) -> dict:
    """What DBA vectors depend on: the live ids, the backend's vector state, k and alpha."""
    ids = index.ids()
    return {"k": int(k), "alpha": float(alpha), "count": int(len(ids)), "dim": int(index.dim),
            "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest(),
            **index.state()}


def dba_vectors(index, k: int, alpha: float = 3.0, *, save: bool = True, lazy: bool = True) -> np.ndarray:
    """The index's DBA vectors (rows in ``index.ids()`` order), from the cache beside the raw vectors when it
    matches the index's current state, else computed (one exact top-k search per item) and cached.

    ``lazy`` (inside a query): refuse to compute for more than :data:`LAZY_DBA_MAX` items."""
    if index.cache_dir is None:
        raise IndexError_(f"{index.dir}: database-side augmentation re-ranks vectors cached beside a local index's "
                          "files; search the index directory for it, or use --refine "
                          + " / ".join(n for n, r in RERANKERS.items() if n != "none" and not r.needs_cache))
    stamp = _stamp(index, k, alpha)
    data, meta = index.cache_dir / f"dba_k{k}.f32", index.cache_dir / f"dba_k{k}.json"
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
    scores, rows = index.exact_scan(v, v, min(k, len(v)))
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
    """``(scores (Q, k), ids (Q, k))`` of ``index`` (a :class:`indexer.backend.SearchBackend`) for ``queries``
    re-ranked by ``refine``.

    ``exclude``: per query, ids left out of its results and of its expansion (e.g. the query's own record).
    Scores are cosine similarities to the (expanded) query, except for ``kr``: 1 - the blended distance.
    """
    q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, index.dim))
    extra = max((len(e) for e in exclude or [] if e is not None), default=0)
    return refine.reranker.search(index, q, k, refine, exclude, extra)


def _rows_or_zero(index, ids: np.ndarray) -> np.ndarray:
    """(Q, k, D) stored vectors of ``ids`` (zeros where the id is -1)."""
    flat = ids.reshape(-1)
    ok = flat >= 0
    out = np.zeros((len(flat), index.dim), np.float32)
    if ok.any():
        out[ok] = index.vectors(flat[ok])
    return out.reshape(ids.shape[0], ids.shape[1], index.dim)


def _top(sims: np.ndarray, k: int, drop: np.ndarray | None):
    """Each row's ``k`` best columns and scores, column ``drop[r]`` (>= 0) left out of row r."""
    if drop is not None:
        sims = sims.copy()
        has = drop >= 0
        sims[np.nonzero(has)[0], drop[has]] = -np.inf
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(sims, rows, 1)


# --- the re-rankers ------------------------------------------------------------------------------------------

@register_reranker
class NoRerank(Reranker):
    name, label, summary = "none", "none", "the index's own order"

    def search(self, backend, q, k, refine, exclude, extra):
        return _exclude(*backend.search_vectors(q, k + extra), exclude, k)

    def leave_one_out(self, qf, gf, self_pos, refine):
        return LeaveOneOut(qf, gf)


@register_reranker
class AlphaQE(Reranker):
    """Alpha query expansion: the query averaged with its ``k`` best results (weights = similarity^alpha),
    searched again."""

    name, label, summary = "qe", "alpha query expansion", "alpha query expansion (searches twice)"
    default_k = 1  # validation: +1.4 mAP mean over three indexes, rank-1 never lower; k=2 +1.1 (rerank_val.md)

    def search(self, backend, q, k, refine, exclude, extra):
        s, i = _exclude(*backend.search_vectors(q, refine.neighbours + extra), exclude, refine.neighbours)
        q2 = alpha_qe(q, _rows_or_zero(backend, i), np.where(i >= 0, s, 0.0), refine.alpha)
        return _exclude(*backend.search_vectors(q2, k + extra), exclude, k)

    def leave_one_out(self, qf, gf, self_pos, refine):
        rows, sc = _top(qf @ gf.T, min(refine.neighbours, len(gf) - 1), self_pos)
        return LeaveOneOut(alpha_qe(qf, gf[rows], np.where(np.isfinite(sc), sc, 0.0), refine.alpha), gf)


@register_reranker
class DBA(Reranker):
    """Database-side augmentation: every gallery vector averaged with its ``k`` nearest (computed once per
    index state and cached in the backend's ``cache_dir``), then an exact scan of the augmented gallery."""

    name, label = "dba", "database-side augmentation"
    summary = "database-side augmentation (computed once per index state, cached beside the vectors)"
    needs_cache = True
    default_k = 5  # validation: +4.2 mAP mean, rank-1 never lower; k=2 +2.6 (rerank_val.md)
    expand = False  # dba+qe: expand the query over the augmented gallery first

    def search(self, backend, q, k, refine, exclude, extra):
        gal = dba_vectors(backend, refine.neighbours, refine.alpha)
        ids = backend.ids()

        def scan(x: np.ndarray, n: int):
            s, rows = backend.exact_scan(gal, x, n)
            return s, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)

        if self.expand:
            s, i = _exclude(*scan(q, refine.neighbours + extra), exclude, refine.neighbours)
            pos = {int(v): n for n, v in enumerate(ids)}
            nb = np.zeros((len(q), refine.neighbours, backend.dim), np.float32)
            for r in range(len(q)):
                for j, v in enumerate(i[r]):
                    if v >= 0:
                        nb[r, j] = gal[pos[int(v)]]
            q = alpha_qe(q, nb, np.where(i >= 0, s, 0.0), refine.alpha)
        return _exclude(*scan(q, k + extra), exclude, k)

    def leave_one_out(self, qf, gf, self_pos, refine):
        import torch

        gal, fixes = held_out_dba(gf, refine.neighbours, refine.alpha)

        def fixed_rows(start: int, q: np.ndarray, sims: np.ndarray) -> np.ndarray:
            for r in range(len(sims)):
                own = self_pos[start + r]
                if own >= 0:
                    rows, vecs = fixes[own]
                    sims[r, rows] = vecs @ q[r]
            return sims

        if self.expand:
            expanded = np.empty_like(qf)
            for s in range(0, len(qf), 1024):
                sims = fixed_rows(s, qf[s:s + 1024], qf[s:s + 1024] @ gal.T)
                rows, sc = _top(sims, min(refine.neighbours, len(gal) - 1), self_pos[s:s + 1024])
                nb = gal[rows]
                for r in range(len(rows)):
                    own = self_pos[s + r]
                    if own >= 0:
                        fix_rows, fix_vecs = fixes[own]
                        where = {int(j): m for m, j in enumerate(fix_rows)}
                        for c, j in enumerate(rows[r]):
                            if int(j) in where:
                                nb[r, c] = fix_vecs[where[int(j)]]
                expanded[s:s + 1024] = alpha_qe(qf[s:s + 1024], nb, np.where(np.isfinite(sc), sc, 0.0),
                                                refine.alpha)
            qf = expanded

        def rescore(start: int, sims: torch.Tensor) -> torch.Tensor:
            out = sims.cpu().numpy().copy()
            return torch.from_numpy(fixed_rows(start, qf[start:start + len(out)], out))

        return LeaveOneOut(qf, gal, rescore)


@register_reranker
class DBAQE(DBA):
    name, label, summary = "dba+qe", "DBA + query expansion", "DBA, then alpha query expansion over it"
    default_k = 2  # the one setting measured (rerank_val.md)
    expand = True


@register_reranker
class KReciprocal(Reranker):
    """k-reciprocal re-ranking (Zhong et al. 2017) of each query's best ``candidates``."""

    name, label, summary = "kr", "k-reciprocal", "k-reciprocal on the best 100 candidates"

    def search(self, backend, q, k, refine, exclude, extra):
        cs, ci = _exclude(*backend.search_vectors(q, refine.candidates + extra), exclude, refine.candidates)
        out_s = np.full((len(q), k), -np.finfo(np.float32).max, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            ok = ci[r] >= 0
            if not ok.any():
                continue
            cand = ci[r][ok]
            new = k_reciprocal_scores(q[r], backend.vectors(cand), refine.k1, refine.k2, refine.lam)
            order = np.argsort(-new, kind="stable")[:k]
            out_s[r, :len(order)], out_i[r, :len(order)] = new[order], cand[order]
        return out_s, out_i

    def leave_one_out(self, qf, gf, self_pos, refine):
        import torch

        n = min(refine.candidates, len(gf) - 1)

        def rescore(start: int, sims: torch.Tensor) -> torch.Tensor:
            out = sims.cpu().numpy().copy()
            rows, _ = _top(out, n, self_pos[start:start + len(out)])
            for r in range(len(out)):
                out[r, rows[r]] = 10.0 + k_reciprocal_scores(qf[start + r], gf[rows[r]], refine.k1, refine.k2,
                                                              refine.lam)
            return torch.from_numpy(out)

        return LeaveOneOut(qf, gf, rescore)


def held_out_dba(gf: np.ndarray, k: int, alpha: float):
    """DBA vectors of the gallery, and for each item i the vectors of the items whose neighbourhood holds i,
    recomputed without i: a query must not find itself averaged into the gallery it is ranked against
    (leave-one-out would otherwise score DBA with the answer inside). Returns ``(gal, fixes)`` with
    ``fixes[i] = (rows, vectors)``."""
    n = len(gf)
    k = min(k, n)
    sims = gf @ gf.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :min(k + 1, n)]
    top = np.take_along_axis(sims, order, 1)
    gal = augment_database(gf, order[:, :k], top[:, :k], alpha)
    holders: list[list[int]] = [[] for _ in range(n)]
    for j in range(n):
        for i in order[j, :k]:
            if i != j:
                holders[int(i)].append(j)
    fixes = []
    for i in range(n):
        rows = np.asarray(holders[i], dtype=np.int64)
        if not len(rows):
            fixes.append((rows, np.zeros((0, gf.shape[1]), np.float32)))
            continue
        nb = np.stack([[c for c in order[j] if c != i][:k] for j in rows])
        fixes.append((rows, augment_database(gf, nb, np.take_along_axis(sims[rows], nb, 1), alpha, items=rows)))
    return gal, fixes
