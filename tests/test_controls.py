"""Result controls (indexer/controls.py): the score threshold and near-duplicate collapse against brute force,
and the thresholds are the ones the committed validation run chose."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from indexer.controls import COLLAPSE_COSINE, ResultControls, apply_controls

REPO = Path(__file__).resolve().parents[1]


@dataclass
class _Hit:
    id: int
    score: float


class _Index:
    def __init__(self, vecs, shas, adapted=None):
        self.v, self.shas, self.adapted, self.dim = vecs, shas, adapted, vecs.shape[1]

    def vectors(self, ids):
        return self.v[list(ids)]

    def record(self, i):
        return {"sha256": self.shas[i]}

    def load_encoder(self):
        raise RuntimeError("no encoder")


def test_collapse_and_threshold_match_brute_force():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 16)).astype(np.float32)
    v[5] = v[3] + 0.05 * rng.standard_normal(16)  # a near-copy of 3
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    shas = [f"s{i}" for i in range(40)]
    shas[9] = shas[2]  # an exact copy (same bytes) of 2
    idx = _Index(v, shas)
    q = v[3] + 0.1 * v[2]
    order = np.argsort(-(v @ q), kind="stable")
    hits = [_Hit(int(i), float(v[i] @ q)) for i in order]
    for thr in (0.5, 0.8, 0.95):
        kept, dropped = apply_controls(idx, hits, ResultControls(collapse=True, collapse_cosine=thr))
        ref = []
        for h in hits:
            if any(shas[h.id] == shas[r] or float(v[h.id] @ v[r]) >= thr for r in ref):
                continue
            ref.append(h.id)
        assert [h.id for h in kept] == ref and dropped["collapsed"] == len(hits) - len(ref)
    kept, _ = apply_controls(idx, hits, ResultControls(collapse=True, collapse_cosine=0.95))
    assert 5 not in [h.id for h in kept][:3] or 3 not in [h.id for h in kept]
    assert not (2 in [h.id for h in kept] and 9 in [h.id for h in kept])
    cut = hits[7].score
    kept, dropped = apply_controls(idx, hits, ResultControls(min_score=cut))
    assert [h.id for h in kept] == [h.id for h in hits if h.score >= cut] and dropped["below_min_score"] == 32


def test_default_threshold_follows_the_space_and_the_committed_choice():
    data = json.loads((REPO / "benchmarks" / "results" / "collapse.json").read_text())["results"]["thresholds"]
    assert COLLAPSE_COSINE == {"plain": data["plain"], "whitened": data["adapted"]}
    from indexer.controls import default_collapse_cosine

    v = np.eye(4, dtype=np.float32)
    assert default_collapse_cosine(_Index(v, ["a"] * 4, adapted={"dim": 4})) == COLLAPSE_COSINE["whitened"]
    assert default_collapse_cosine(_Index(np.eye(300, dtype=np.float32), ["a"] * 300)) == COLLAPSE_COSINE["plain"]
