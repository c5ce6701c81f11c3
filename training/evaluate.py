"""Retrieval evaluation during training: leave-one-out rank-k / mAP with both poolings from one pass."""

from __future__ import annotations

from engine.embed import extract_pooled
from engine.metrics import retrieval_metrics

POOLINGS = ("attention", "gap")


def retrieval_eval(encoder, dataset, device, **kw) -> dict[str, dict[str, float]]:
    """``{"attention": {"rank-1": .., "rank-5": .., "mAP": .., ...}, "gap": {...}}`` as fractions."""
    feats, labels = extract_pooled(encoder, dataset, POOLINGS, device=device, desc="eval", **kw)
    return {p: {k: float(v) for k, v in retrieval_metrics(f, labels).summary.items()} for p, f in feats.items()}
