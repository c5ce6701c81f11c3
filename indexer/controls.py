"""Result controls shared by the HTTP API and the app: a score threshold and the collapse of near-duplicates.

Collapse keeps, in rank order, a hit unless an earlier kept hit is the same file content (sha256) or lies closer
than ``collapse_cosine`` to it in the index's own space: one photo saved twice, resized or recompressed, shows
once. The thresholds were chosen on cub100's validation part (``benchmarks/results/collapse.md``), one per kind of
space: a whitened space (an adapted index, or an encoder ending in a retrieval head) spreads photos out, so copies
and distinct photos part at a lower cosine there than in an encoder's plain pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: cosine from which two gallery items count as near-duplicates, per space (benchmarks/results/collapse.md)
COLLAPSE_COSINE = {"plain": 0.88, "whitened": 0.77}


def space_of(index) -> str:
    """``whitened`` for an adapted index or one built by an encoder with a retrieval head, else ``plain``."""
    if getattr(index, "adapted", None):
        return "whitened"
    try:
        return "whitened" if index.load_encoder().config.whiten_dim else "plain"
    except Exception:  # noqa: BLE001 - an index whose encoder cannot be rebuilt here: judge by its width
        return "whitened" if index.dim <= 256 else "plain"


def default_collapse_cosine(index) -> float:
    return COLLAPSE_COSINE[space_of(index)]


@dataclass(frozen=True)
class ResultControls:
    """What the caller wants filtered out of the ranked hits."""

    min_score: float | None = None  # drop hits scoring below this (cosine similarity)
    collapse: bool = False  # drop near-duplicates of a higher-ranked hit
    collapse_cosine: float | None = None  # what counts as a near-duplicate (None: the index's space's default)

    @property
    def active(self) -> bool:
        return self.min_score is not None or self.collapse


def apply_controls(index, hits: list, controls: ResultControls) -> tuple[list, dict]:
    """``(kept hits, {"below_min_score": n, "collapsed": n})`` for hits in rank order."""
    dropped = {"below_min_score": 0, "collapsed": 0}
    if controls.min_score is not None:
        kept = [h for h in hits if h.score >= controls.min_score]
        dropped["below_min_score"] = len(hits) - len(kept)
        hits = kept
    if not controls.collapse or len(hits) < 2:
        return hits, dropped
    threshold = controls.collapse_cosine if controls.collapse_cosine is not None else default_collapse_cosine(index)
    ids = [h.id for h in hits]
    vecs = np.asarray(index.vectors(ids), dtype=np.float32)
    shas = [index.record(i).get("sha256") for i in ids]
    kept_rows: list[int] = []
    seen: set[str] = set()
    for r, h in enumerate(hits):
        if shas[r] and shas[r] in seen:
            continue
        if kept_rows and float(np.max(vecs[kept_rows] @ vecs[r])) >= threshold:
            continue
        kept_rows.append(r)
        if shas[r]:
            seen.add(shas[r])
    dropped["collapsed"] = len(hits) - len(kept_rows)
    return [hits[r] for r in kept_rows], dropped
