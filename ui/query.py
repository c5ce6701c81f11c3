"""The Search page's one query path: embed a photo, search the index, time both.

The benchmark (``benchmarks/ui_latency.py``) calls :func:`run_query` too, so the latency it reports is
the latency the page shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.embed import embed_pil


@dataclass
class QueryResult:
    """Hits of one query and where the time went."""

    hits: list  # indexer.Hit, best first
    feature: np.ndarray  # the query's L2-normalised feature (D,)
    embed_ms: float = 0.0  # preprocess + forward pass (0 when a stored vector was used)
    search_ms: float = 0.0  # FAISS search + manifest lookups
    excluded: list[int] = field(default_factory=list)  # ids dropped from the hits (the query itself)

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.search_ms


def embed_image(encoder, image: Image.Image) -> np.ndarray:
    """One image -> its L2-normalised float32 feature (D,), with the encoder's evaluation transform."""
    return embed_pil(encoder, [image])[0]


def search_vector(index, feature: np.ndarray, k: int, exclude: tuple[int, ...] = (), refine=None) -> list:
    """Top-``k`` hits for one feature, leaving out ``exclude`` ids (e.g. the query's own record), re-ranked by
    ``refine`` (an ``indexer.refine.Refine``) when given."""
    q = np.ascontiguousarray(np.asarray(feature, dtype=np.float32).reshape(1, -1))
    if refine is not None and refine.active:
        return index.search(q, k=k, refine=refine, exclude=[list(exclude)])[0]
    hits = index.search(q, k=min(k + len(exclude), max(index.count, 1)))[0]
    return [h for h in hits if h.id not in exclude][:k]


def run_query(index, encoder, image: Image.Image | None = None, *, feature: np.ndarray | None = None,
              k: int = 10, exclude: tuple[int, ...] = (), refine=None) -> QueryResult:
    """Embed ``image`` (or use ``feature``) and search ``index``.

    Args:
        index: an open ``indexer.Index``.
        encoder: the index's encoder (fingerprint already checked by ``Index.load_encoder``).
        image: the query photo; ignored when ``feature`` is given.
        feature: a stored vector to search with instead of embedding.
        k: number of hits.
        exclude: ids to leave out of the hits.
        refine: query-time re-ranking (``indexer.refine.Refine``), or None.
    """
    embed_ms = 0.0
    if feature is None:
        if image is None:
            raise ValueError("run_query needs an image or a feature")
        t0 = time.perf_counter()
        feature = embed_image(encoder, image)
        embed_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    hits = search_vector(index, feature, k, exclude, refine)
    search_ms = (time.perf_counter() - t0) * 1e3
    return QueryResult(hits=hits, feature=feature, embed_ms=embed_ms, search_ms=search_ms, excluded=list(exclude))
