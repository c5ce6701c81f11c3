"""Retrieval metrics (rank-k, mAP over the full ranking, MAP@R) computed in memory-bounded chunks.

Conventions, shared by every number this module reports:

* Similarity is the inner product of the features as given. Features are expected to be L2-normalised
  (``engine.embed.extract_features`` returns them so); they are NOT renormalised here, so un-normalised inputs
  are ranked by raw inner product. They are cast to float32 and the similarities computed with a float32 torch
  matmul.
* Ranking: descending similarity; equal similarities are ordered by ascending gallery index (a stable rule,
  which the brute-force reference in the tests reproduces). ``-0.0`` and ``0.0`` count as equal.
* Relevant item: a gallery item with the query's label. In leave-one-out mode (``gallery_feats=None``) each
  query is removed from its own ranking; in query-vs-gallery mode nothing is removed unless
  ``exclude_self_ids`` names, per query, the gallery index of the same image.
* Queries with no relevant item are left out of every summary metric; they are counted in
  ``n_without_relevant`` and have ``first_hit_rank == -1`` and NaN ``ap``/``ap_at_r``.
* rank-k: fraction of queries whose top k hold at least one relevant item.
* AP: mean over the relevant items of the precision at their rank, over the full ranking (no cut-off).
* MAP@R (Musgrave et al., "A Metric Learning Reality Check"): with R relevant items,
  AP@R = (1/R) * sum_{i<=R} P(i) * rel(i).

Instead of sorting each query's full similarity row, the rank of every relevant item is counted: the row is
mapped to unique int64 keys (float32 order, then the index tie rule), each item is bucketed against the query's
R sorted relevant keys (``searchsorted``, O(N log R)) and a histogram of buckets gives how many items precede
each relevant item. Peak memory is about 16 bytes per (query, gallery) pair of one chunk; the chunk is capped at
``_MAX_CHUNK_ELEMENTS`` pairs (~0.25 GiB) whatever ``chunk_size`` asks for, so memory does not grow with the
number of queries (measured in benchmarks/metrics_scale.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.errors import PPSSLError

# Cap on (query rows x gallery size) pairs handled at once (~16 bytes each at peak).
_MAX_CHUNK_ELEMENTS = 1 << 24
_INT64_MAX = torch.iinfo(torch.int64).max
_INT64_MIN = torch.iinfo(torch.int64).min


class MetricsError(PPSSLError, ValueError):
    """Inputs the metrics cannot be computed from (shape mismatch, non-finite features, no relevant items)."""


@dataclass
class RetrievalReport:
    """Summary and per-query retrieval results; see the module docstring for the definitions."""

    summary: dict[str, float]  # "rank-<k>" for each k, "mAP", "MAP@R": fractions in [0, 1]
    first_hit_rank: np.ndarray  # int64 (Q,): 0-based rank of the first relevant item, -1 if none
    ap: np.ndarray  # float64 (Q,): average precision over the full ranking, NaN if no relevant item
    ap_at_r: np.ndarray  # float64 (Q,): AP@R, NaN if no relevant item
    top1: np.ndarray  # int64 (Q,): gallery index of the nearest item (-1 if the ranking is empty)
    n_relevant: np.ndarray  # int64 (Q,): R, number of relevant gallery items (self excluded)
    query_labels: np.ndarray  # (Q,) original query labels
    gallery_labels: np.ndarray  # (N,) original gallery labels (the query labels in leave-one-out mode)
    ks: tuple[int, ...]  # the k of the rank-k entries in summary
    leave_one_out: bool  # True when the gallery was the query set itself
    n_queries: int = field(init=False)  # Q, all queries including those without a relevant item
    n_without_relevant: int = field(init=False)  # queries left out of the metrics (R == 0)

    def __post_init__(self):
        self.n_queries = int(len(self.query_labels))
        self.n_without_relevant = int(np.count_nonzero(self.n_relevant == 0))

    @property
    def scored(self) -> np.ndarray:
        """Boolean mask of the queries that enter the metrics (at least one relevant item)."""
        return self.n_relevant > 0

    def rank_curve(self, max_k: int = 50) -> np.ndarray:
        """rank-k for k = 1..max_k (float64 array of length max_k)."""
        if max_k < 1:
            raise MetricsError(f"max_k must be >= 1, got {max_k}")
        hits = self.first_hit_rank[self.scored]
        counts = np.bincount(hits, minlength=max_k)[:max_k]
        return np.cumsum(counts) / len(hits)

    def per_class(self) -> dict[Any, dict[str, float]]:
        """Metrics per query label (scored queries only), keyed by the original label, in label order."""
        ok = self.scored
        labels = self.query_labels[ok]
        out = {}
        for lab in np.unique(labels):
            m = labels == lab
            out[_native(lab)] = {
                "count": int(m.sum()),
                "rank-1": float(np.mean(self.first_hit_rank[ok][m] == 0)),
                "mAP": float(np.mean(self.ap[ok][m])),
                "MAP@R": float(np.mean(self.ap_at_r[ok][m])),
            }
        return out

    def confused_pairs(self, top: int = 10) -> list[tuple[Any, Any, int]]:
        """Most frequent ``(query_label, top1_label, count)`` among scored queries whose top-1 is wrong."""
        wrong = self.scored & (self.first_hit_rank != 0)
        pairs = Counter(zip((_native(x) for x in self.query_labels[wrong]),
                            (_native(x) for x in self.gallery_labels[self.top1[wrong]])))
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1])))
        return [(q, t, n) for (q, t), n in ranked[:top]]

    def to_dict(self, per_query: bool = False, max_k: int = 50) -> dict[str, Any]:
        """JSON-serialisable view (NaN becomes None); per-query arrays only when ``per_query``."""
        d: dict[str, Any] = {
            "summary": dict(self.summary),
            "n_queries": self.n_queries,
            "n_without_relevant": self.n_without_relevant,
            "leave_one_out": self.leave_one_out,
            "ks": list(self.ks),
            "rank_curve": [float(x) for x in self.rank_curve(max_k)],
            "per_class": [{"label": lab, **m} for lab, m in self.per_class().items()],
            "confused_pairs": [list(p) for p in self.confused_pairs()],
        }
        if per_query:
            d["per_query"] = {
                "query_label": [_native(x) for x in self.query_labels],
                "first_hit_rank": self.first_hit_rank.tolist(),
                "ap": [None if np.isnan(x) else float(x) for x in self.ap],
                "ap_at_r": [None if np.isnan(x) else float(x) for x in self.ap_at_r],
                "top1": self.top1.tolist(),
                "n_relevant": self.n_relevant.tolist(),
            }
        return d


def retrieval_metrics(query_feats, query_labels, gallery_feats=None, gallery_labels=None, ks=(1, 5, 10),
                      chunk_size: int = 1024, device=None, exclude_self_ids=None, rescore=None) -> RetrievalReport:
    """Rank the gallery for every query and score the rankings.

    Args:
        query_feats: (Q, D) numpy array or torch tensor, L2-normalised (not renormalised here).
        query_labels: (Q,) ints or strings (numpy, torch or list).
        gallery_feats: (N, D), or None for leave-one-out on the query set.
        gallery_labels: (N,) labels; required with ``gallery_feats``.
        ks: the k of the reported rank-k values.
        chunk_size: most query rows ranked at once (also capped so a chunk holds <= 2**24 pairs).
        device: where similarities are computed; default the query tensor's device (CPU for numpy).
        exclude_self_ids: query-vs-gallery mode only: (Q,) gallery index of each query's own image, or -1;
            that item is removed from the query's ranking (as in leave-one-out).
        rescore: optional ``f(start, sims) -> sims``: re-ranking applied to each chunk of similarities
            (rows are queries ``start..start + len(sims)``, columns the gallery) before ranking, e.g. the
            k-reciprocal re-ordering of each query's best candidates.

    Returns:
        A ``RetrievalReport``.

    Raises:
        MetricsError: bad shapes/labels/ks, non-finite features, or no query with a relevant item.
    """
    ks = _check_ks(ks)
    if int(chunk_size) < 1:
        raise MetricsError(f"chunk_size must be >= 1, got {chunk_size}")
    if device is None:
        device = query_feats.device if isinstance(query_feats, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    q = _features(query_feats, "query_feats")
    qlab = _labels(query_labels, len(q), "query_labels")
    if len(q) == 0:
        raise MetricsError("no queries: query_feats is empty")
    leave_one_out = gallery_feats is None
    if leave_one_out:
        if gallery_labels is not None or exclude_self_ids is not None:
            raise MetricsError("gallery_labels/exclude_self_ids need gallery_feats "
                               "(leave-one-out already excludes each query)")
        g, glab = q, qlab
        self_ids = np.arange(len(q), dtype=np.int64)
    else:
        g = _features(gallery_feats, "gallery_feats")
        if gallery_labels is None:
            raise MetricsError("gallery_labels is required with gallery_feats")
        glab = _labels(gallery_labels, len(g), "gallery_labels")
        if g.shape[1] != q.shape[1]:
            raise MetricsError(f"feature dims differ: queries {q.shape[1]}, gallery {g.shape[1]}")
        self_ids = _self_ids(exclude_self_ids, len(q), len(g))
    qcode, gcode = _encode(qlab, glab)
    if len(g) and float(q.norm(dim=1).max()) * float(g.norm(dim=1).max()) > 1e37:
        raise MetricsError("feature norms are so large that float32 similarities overflow: L2-normalise them")

    with torch.no_grad():
        res = _rank_relevant(q, g, qcode, gcode, self_ids, int(chunk_size), device, rescore)
    first_hit, ap, ap_at_r, top1, n_rel = res
    scored = n_rel > 0
    if not scored.any():
        raise MetricsError(f"none of the {len(q)} queries has a same-label item in the gallery: "
                           "retrieval metrics are undefined")
    summary = {f"rank-{k}": float(np.mean(first_hit[scored] < k)) for k in ks}
    summary["mAP"] = float(np.mean(ap[scored]))
    summary["MAP@R"] = float(np.mean(ap_at_r[scored]))
    return RetrievalReport(summary=summary, first_hit_rank=first_hit, ap=ap, ap_at_r=ap_at_r, top1=top1,
                           n_relevant=n_rel, query_labels=qlab, gallery_labels=glab, ks=ks,
                           leave_one_out=leave_one_out)


def recall_at_k(found_ids, true_ids, k: int = 10) -> float:
    """ANN quality: fraction of the exact top-k ids found in the approximate top-k, averaged over queries.

    Args:
        found_ids: (Q, >=k) ids returned by the approximate search, best first.
        true_ids: (Q, >=k) ids of the exact search, best first. Negative ids (FAISS padding when the gallery
            holds fewer than k items) are ignored; queries with no true id are skipped.
        k: cut-off.
    """
    found = np.asarray(found_ids)
    true = np.asarray(true_ids)
    if found.ndim != 2 or true.ndim != 2 or len(found) != len(true):
        raise MetricsError(f"found_ids and true_ids must be (Q, k) arrays with equal Q, got shapes "
                           f"{found.shape} and {true.shape}")
    if k < 1 or found.shape[1] < k or true.shape[1] < k:
        raise MetricsError(f"need 1 <= k <= number of columns, got k={k} with shapes {found.shape}, {true.shape}")
    found, true = found[:, :k], true[:, :k]
    valid = true >= 0
    hit = (true[:, :, None] == found[:, None, :]).any(axis=2) & valid
    n_true = valid.sum(axis=1)
    keep = n_true > 0
    if not keep.any():
        raise MetricsError("true_ids holds no valid id")
    return float(np.mean(hit.sum(axis=1)[keep] / n_true[keep]))


# ---------------------------------------------------------------------------------------------------------
# internals


def _rank_relevant(q: torch.Tensor, g: torch.Tensor, qcode: np.ndarray, gcode: np.ndarray, self_ids: np.ndarray,
                   chunk_size: int, device: torch.device, rescore=None):
    """Per query: first-hit rank, AP, AP@R, top-1 index and R, from the ranks of the relevant items."""
    n_q, n_g = len(q), len(g)
    first_hit = np.full(n_q, -1, np.int64)
    ap = np.full(n_q, np.nan)
    ap_at_r = np.full(n_q, np.nan)
    top1 = np.full(n_q, -1, np.int64)
    n_rel = np.zeros(n_q, np.int64)
    if n_g == 0:
        return first_hit, ap, ap_at_r, top1, n_rel

    # Gallery grouped by label: the relevant items of a query are one contiguous slice of `by_label`.
    by_label = np.argsort(gcode, kind="stable")
    n_codes = int(max(qcode.max(), gcode.max())) + 1
    class_count = np.bincount(gcode, minlength=n_codes)
    class_start = np.concatenate([[0], np.cumsum(class_count)[:-1]])
    by_label_t = torch.from_numpy(by_label).to(device)

    g_dev = g.to(device)
    # Tie rule: among equal similarities the smaller gallery index ranks first (gets the larger key).
    tie = (2**32 - 1) - torch.arange(n_g, dtype=torch.int64, device=device)
    rows = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // n_g))
    for s in range(0, n_q, rows):
        e = min(n_q, s + rows)
        c = e - s
        sims = q[s:e].to(device) @ g_dev.T
        if rescore is not None:
            sims = torch.as_tensor(rescore(s, sims), dtype=torch.float32, device=device).contiguous()
        keys = _order_keys(sims, tie)
        sid = torch.from_numpy(self_ids[s:e]).to(device)
        has_self = sid >= 0
        keys[has_self.nonzero()[:, 0], sid[has_self]] = _INT64_MIN  # excluded item: below everything

        best = keys.max(dim=1)
        t1 = torch.where(best.values > _INT64_MIN, best.indices, -1)
        top1[s:e] = t1.cpu().numpy()

        # Padded (c, rmax) matrix of each query's relevant gallery indices.
        counts = class_count[qcode[s:e]]
        rmax = int(counts.max())
        if rmax == 0:
            continue
        starts = torch.from_numpy(class_start[qcode[s:e]]).to(device)
        cnt = torch.from_numpy(counts).to(device)
        j = torch.arange(rmax, device=device)
        in_class = j[None, :] < cnt[:, None]
        rel_idx = by_label_t[torch.where(in_class, starts[:, None] + j[None, :], 0)]
        valid = in_class & (rel_idx != sid[:, None])
        rel_keys = torch.where(valid, keys.gather(1, rel_idx), _INT64_MAX).sort(dim=1).values
        r = valid.sum(dim=1)  # R per query

        # bucket b = number of relevant keys below the item's key; item ranks above relevant key j iff b > j.
        b = torch.searchsorted(rel_keys, keys, out_int32=True)
        del keys
        # one histogram per row: offset each row's buckets (int32 is enough: c * (rmax + 1) <= 2**25)
        b += (torch.arange(c, device=device, dtype=torch.int32) * (rmax + 1))[:, None]
        hist = torch.bincount(b.view(-1), minlength=c * (rmax + 1)).view(c, rmax + 1)
        del b
        # rank of relevant key j (ascending j) = number of items with key > it = sum(hist[j+1:]).
        ranks = hist.flip(1).cumsum(1).flip(1)[:, 1:].cpu().numpy()
        _score_chunk(ranks, r.cpu().numpy(), s, first_hit, ap, ap_at_r, n_rel)
    return first_hit, ap, ap_at_r, top1, n_rel


def _score_chunk(ranks: np.ndarray, r: np.ndarray, s: int, first_hit, ap, ap_at_r, n_rel):
    """Fill the per-query outputs of one chunk from the 0-based ranks of its relevant items (ascending key)."""
    c, rmax = ranks.shape
    j = np.arange(rmax)[None, :]
    r_col = r[:, None]
    valid = j < r_col
    # ascending key index j is the (R - j)-th relevant item in ranking order
    prec = np.where(valid, (r_col - j) / (ranks + 1.0), 0.0)
    ok = r > 0
    rows = np.arange(c)[ok]
    n_rel[s:s + c] = r
    first_hit[s + rows] = ranks[rows, r[ok] - 1]
    # Sequential sums in ranking order (reversed columns; the zero padding then comes first and adds
    # nothing), so values do not depend on the chunking and equal a plain loop over the ranking.
    ap[s + rows] = np.cumsum(prec[ok, ::-1], axis=1)[:, -1] / r[ok]
    ap_at_r[s + rows] = np.cumsum(np.where(ranks < r_col, prec, 0.0)[ok, ::-1], axis=1)[:, -1] / r[ok]


def _order_keys(sims: torch.Tensor, tie: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys, larger = ranked earlier: float32 order in the high 32 bits, tie rule in the low.

    Overwrites ``sims`` (the caller's fresh similarity chunk) to save memory.
    """
    sims.add_(0.0)  # -0.0 + 0.0 = +0.0: the two zeros share one key
    bits = sims.view(torch.int32)
    flip = bits >> 31  # -1 for negative floats, 0 otherwise
    flip &= 0x7FFFFFFF
    bits ^= flip  # negative floats: reverse the order of their magnitude bits -> int order = float order
    del flip
    return bits.to(torch.int64).mul_(2**32).add_(tie)


def _features(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise MetricsError(f"{name} must be a 2-D (n, dim) array, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise MetricsError(f"{name} must be numeric, got {t.dtype}")
    t = t.to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise MetricsError(f"{name} contains NaN or infinite values")
    return t


def _labels(x, n: int, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or len(a) != n:
        raise MetricsError(f"{name} must be 1-D with one label per feature row ({n}), got shape {a.shape}")
    return a


def _encode(qlab: np.ndarray, glab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map both label arrays to shared int codes (ints and strings alike; mixing the two is refused)."""
    kinds = {_label_kind(qlab), _label_kind(glab)}
    if len(kinds) > 1:
        raise MetricsError(f"query and gallery labels must both be numbers or both be strings, got {kinds}")
    try:
        _, codes = np.unique(np.concatenate([qlab, glab]), return_inverse=True)
    except TypeError as e:
        raise MetricsError(f"labels cannot be compared: {e}") from e
    codes = codes.reshape(-1).astype(np.int64)
    return codes[:len(qlab)], codes[len(qlab):]


def _label_kind(a: np.ndarray) -> str:
    if a.dtype.kind in "biuf":
        return "number"
    if a.dtype.kind in "US":
        return "string"
    if a.dtype.kind == "O":
        if all(isinstance(x, str) for x in a):
            return "string"
        if all(isinstance(x, (int, float, np.integer, np.floating)) for x in a):
            return "number"
        raise MetricsError("labels must all be strings or all be numbers")
    raise MetricsError(f"unsupported label dtype {a.dtype}")


def _self_ids(ids, n_q: int, n_g: int) -> np.ndarray:
    if ids is None:
        return np.full(n_q, -1, np.int64)
    a = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if a.shape != (n_q,) or a.dtype.kind not in "iu":
        raise MetricsError(f"exclude_self_ids must be {n_q} integers, got shape {a.shape} dtype {a.dtype}")
    a = a.astype(np.int64)
    if (a >= n_g).any() or (a < -1).any():
        raise MetricsError(f"exclude_self_ids must be gallery indices in [0, {n_g}) or -1")
    return a


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise MetricsError(f"ks must be positive integers, got {ks}")
    return ks


def _native(x):
    """numpy scalar -> plain Python value (JSON-friendly dict keys and tuples)."""
    return x.item() if isinstance(x, np.generic) else x
