"""Query-time re-ranking of retrieval results: alpha query expansion, database-side augmentation, k-reciprocal.

Pure functions on L2-normalised float32 vectors, independent of the index that found the candidates:

* :func:`alpha_qe` (Radenović et al., TPAMI 2018): the query becomes ``L2norm(q + sum_i s_i^alpha x_i)`` over its
  top-k neighbours ``x_i`` with similarities ``s_i``, then the gallery is searched again.
* :func:`augment_database` (DBA; same paper, after Arandjelović & Zisserman 2012): every gallery vector is
  replaced, once, by the same weighted sum over its own top-k neighbours (itself included).
* :func:`k_reciprocal_scores` (Zhong et al., CVPR 2017): Jaccard distance of k-reciprocal neighbour sets,
  computed on the query's top candidates only (the subset problem of size 1 + n), blended with the
  original distance.
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def alpha_qe(queries: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float = 3.0) -> np.ndarray:
    """Expanded queries ``L2norm(q + sum_i max(s_i, 0)^alpha x_i)``.

    Args:
        queries: (Q, D) the original queries.
        neighbours: (Q, k, D) each query's top-k gallery vectors (rows of zeros where fewer exist).
        scores: (Q, k) their similarities to the query.
        alpha: weight exponent (0 = plain average query expansion; 3 is the paper's choice).
    """
    w = np.maximum(np.asarray(scores, np.float64), 0.0) ** alpha
    q = np.asarray(queries, np.float64) + np.einsum("qk,qkd->qd", w, np.asarray(neighbours, np.float64))
    return _normalise(q)


def augment_database(vectors: np.ndarray, neighbour_rows: np.ndarray, neighbour_scores: np.ndarray,
                     alpha: float = 3.0, items: np.ndarray | None = None) -> np.ndarray:
    """DBA: ``x_i <- L2norm(sum_j max(s_ij, 0)^alpha x_j)`` over item i's top-k neighbours (itself included,
    with weight 1). ``neighbour_rows``: (M, k) rows into ``vectors`` (-1 = none), ``neighbour_scores``: (M, k);
    ``items``: the (M,) items these rows augment (default: all N, in order). Returns (M, D)."""
    x = np.asarray(vectors, np.float64)
    rows = np.asarray(neighbour_rows)
    items = np.arange(len(x)) if items is None else np.asarray(items)
    w = np.where(rows >= 0, np.maximum(np.asarray(neighbour_scores, np.float64), 0.0) ** alpha, 0.0)
    self_in = (rows == items[:, None]).any(axis=1)
    out = np.einsum("nk,nkd->nd", w, x[np.maximum(rows, 0)])
    out[~self_in] += x[items[~self_in]]  # the item itself always counts once
    return _normalise(out)


def k_reciprocal_scores(query: np.ndarray, candidates: np.ndarray, k1: int = 20, k2: int = 6,
                        lam: float = 0.3) -> np.ndarray:
    """New scores (higher = better) of one query's candidates: ``1 - ((1 - lam) * jaccard + lam * original)``.

    The k-reciprocal encoding of Zhong et al. computed on the subset {query} ∪ candidates: squared Euclidean
    distances normalised per column by their maximum, k-reciprocal sets of size ``k1`` expanded by their
    ``k1/2`` reciprocal sets, Gaussian weights, local query expansion over ``k2`` neighbours, Jaccard distance.

    Args:
        query: (D,) the query vector.
        candidates: (n, D) its top-n gallery vectors (n well above ``k1``; 100 in practice).
    """
    x = np.concatenate([np.asarray(query, np.float32)[None], np.asarray(candidates, np.float32)])
    m = len(x)
    k1 = max(1, min(k1, m - 1))
    k2 = max(1, min(k2, m))
    gram = x.astype(np.float64) @ x.T.astype(np.float64)
    dist = np.maximum(2.0 - 2.0 * gram, 0.0)  # squared Euclidean of unit vectors
    dist = (dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)).T
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(round(k1 / 2.0))

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, :k + 1]
        return forward[(rank[forward, :k + 1] == i).any(axis=1)]

    v = np.zeros((m, m))
    for i in range(m):
        base = reciprocal(i, k1)
        expansion = [base]
        for c in base:
            cand = reciprocal(int(c), half)
            if len(np.intersect1d(cand, base)) > 2.0 / 3.0 * len(cand):
                expansion.append(cand)
        idx = np.unique(np.concatenate(expansion))
        weight = np.exp(-dist[i, idx])
        v[i, idx] = weight / weight.sum()
    if k2 > 1:
        v = v[rank[:, :k2]].mean(axis=1)
    overlap = np.minimum(v[0][None, :], v).sum(axis=1)
    jaccard = 1.0 - overlap / (2.0 - overlap)
    final = (1.0 - lam) * jaccard + lam * dist[0]
    return (1.0 - final[1:]).astype(np.float32)
