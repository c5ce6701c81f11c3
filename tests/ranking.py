"""Comparisons of rankings and retrieval metrics that hold on any CPU and BLAS.

Two code paths (FAISS vs numpy, other batch sizes, other kernels) compute the same similarity to within a few
ulps, so items whose scores lie within ``TIE`` of each other may come out in either order. These helpers accept
exactly those swaps and nothing else.
"""

from __future__ import annotations

import numpy as np

#: scores closer than this are near-ties that another CPU or BLAS may order either way
TIE = 1e-5


def assert_same_hits(a, b, tol: float = TIE) -> None:
    """Two top-k result lists (per query, a list of ``(id, score)``) agree up to near-tie swaps.

    Scores must match rank by rank within ``tol``; an id may move only among items whose scores are within
    ``tol``, and may fall off (or onto) the list only when its score is within ``tol`` of the k-th score.
    """
    assert len(a) == len(b), f"{len(a)} vs {len(b)} queries"
    for qi, (ha, hb) in enumerate(zip(a, b)):
        assert len(ha) == len(hb), f"query {qi}: {len(ha)} vs {len(hb)} hits"
        if not ha:
            continue
        sa = np.array([s for _, s in ha], dtype=np.float64)
        sb = np.array([s for _, s in hb], dtype=np.float64)
        np.testing.assert_allclose(sa, sb, rtol=0, atol=tol, err_msg=f"query {qi}: scores by rank")
        da, db = dict(ha), dict(hb)
        for i, s in da.items():
            if i in db:
                assert abs(db[i] - s) <= tol, f"query {qi}: id {i} scored {s} vs {db[i]}"
            else:
                assert s <= sb[-1] + tol, f"query {qi}: id {i} (score {s}) missing from the other list"
        for i, s in db.items():
            if i not in da:
                assert s <= sa[-1] + tol, f"query {qi}: id {i} (score {s}) missing from the first list"


def _tie_groups(scores: np.ndarray, tol: float) -> np.ndarray:
    """Group ids for scores sorted in decreasing order: consecutive scores within ``tol`` share a group."""
    gaps = np.diff(scores) < -tol
    return np.concatenate([[0], np.cumsum(gaps)])


def metric_bounds(q: np.ndarray, qlabels, g: np.ndarray | None = None, glabels=None, ks=(1, 5, 10),
                  tol: float = TIE) -> dict[str, tuple[float, float]]:
    """Rank-k and mAP at their lowest and highest over every order of the near-ties.

    Leave-one-out on ``q`` when ``g`` is None, else queries ``q`` against gallery ``g``. Brute force in
    float64 (an independent reference for ``engine.metrics``): within each group of near-tied scores, the
    pessimistic order ranks the other-label items first, the optimistic one the same-label items first.
    """
    q = np.asarray(q, dtype=np.float64)
    qlabels = np.asarray(qlabels, dtype=object)
    loo = g is None
    g = q if loo else np.asarray(g, dtype=np.float64)
    glabels = qlabels if loo else np.asarray(glabels, dtype=object)
    sims = q @ g.T
    out: dict[str, list[list[float]]] = {f"rank-{k}": [[], []] for k in ks}
    out["mAP"] = [[], []]
    for i in range(len(q)):
        others = np.delete(np.arange(len(g)), i) if loo else np.arange(len(g))
        s = sims[i, others]
        rel = glabels[others] == qlabels[i]
        if not rel.any():
            continue
        order = np.argsort(-s, kind="stable")
        s, rel = s[order], rel[order]
        group = _tie_groups(s, tol)
        for side, first in ((0, False), (1, True)):  # 0: same-label last in a tie group; 1: first
            key = np.lexsort((rel if not first else ~rel, group))
            r = rel[key]
            pos = np.flatnonzero(r) + 1
            first_hit = pos[0]
            for k in ks:
                out[f"rank-{k}"][side].append(float(first_hit <= k))
            out["mAP"][side].append(float(np.mean(np.arange(1, len(pos) + 1) / pos)))
    return {k: (float(np.mean(lo)), float(np.mean(hi))) for k, (lo, hi) in out.items()}


def assert_within_bounds(summary: dict, bounds: dict, eps: float = 1e-9) -> None:
    """Every metric in ``bounds`` that ``summary`` reports lies between its near-tie extremes."""
    for key, (lo, hi) in bounds.items():
        if key in summary:
            assert lo - eps <= summary[key] <= hi + eps, f"{key} = {summary[key]} outside [{lo}, {hi}]"


def sklearn_loo_map(feats: np.ndarray, labels) -> tuple[float, float]:
    """Leave-one-out ``(rank-1, mAP)`` of L2-normalised features by scikit-learn's ``average_precision_score``:
    a reference independent of engine.metrics (queries without another item of their class are skipped)."""
    from sklearn.metrics import average_precision_score

    x = np.asarray(feats, np.float64)
    labels = np.asarray(labels)
    sims = x @ x.T
    aps, top1 = [], []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        rel = labels[rest] == labels[i]
        if rel.any():
            aps.append(average_precision_score(rel, sims[i, rest]))
            top1.append(rel[int(np.argmax(sims[i, rest]))])
    return float(np.mean(top1)), float(np.mean(aps))
