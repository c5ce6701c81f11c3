"""The search-backend contract: what the CLI, the Search page, the API and the re-rankers use of a gallery.

Three backends implement it: :class:`indexer.Index` (an index directory, FAISS or the exact scan),
:class:`indexer.vectordb.VectorDBIndex` (a Qdrant collection mirroring one) and :class:`indexer.ShardedIndex`
(several indexes of one encoder searched as one). A new backend (another vector database) implements
:class:`SearchBackend`, answers :meth:`SearchBackend.search` with :func:`search_hits`, and is added to the
contract tests (``tests/test_backends.py``); docs/extending.md has the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from indexer.errors import IndexError_
from indexer.refine import Refine, refined_search


@dataclass(slots=True)
class Hit:
    """One search result."""

    id: int  # stable id of the gallery item (manifest / FAISS id)
    path: str  # as recorded in the manifest (relative to Index.root when under it); Index.resolve() it
    label: str | None  # class name, or None
    score: float  # inner product of L2-normalised features = cosine similarity

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class SearchBackend(Protocol):
    """A searchable gallery of L2-normalised vectors with stable integer ids.

    ``cache_dir`` is where vectors derived from the gallery (DBA's augmented vectors) may be cached, or None
    where there is no such place (a remote database): re-rankers that need a cache are then refused.
    ``state()`` changes whenever the searched vectors change (it stamps those caches).
    """

    dim: int  # dimension of the searched space
    count: int  # live items
    fingerprint: str  # encoder + space identity: queries from another encoder are refused
    index_type: str  # flat | ivf... | hnsw | qdrant | sharded: approximate ones get recall figures in eval
    dir: Path  # a name for reports (an index directory, or location/collection)
    cache_dir: Path | None

    def ids(self) -> np.ndarray:
        """Live ids, in the order :meth:`vectors` returns rows for ``ids=None``."""

    def vectors(self, ids=None) -> np.ndarray:
        """Float32 vectors in the searched space: all (in :meth:`ids` order) or those of ``ids``, in order."""

    def records(self) -> list[dict]:
        """``{id, path, label, sha256, added_at}`` of every item, by id."""

    def record(self, id: int) -> dict:
        """One item's record (IndexError_ when the id is not live)."""

    def state(self) -> dict:
        """What the searched vectors depend on (JSON-able); equal states mean equal vectors."""

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k: ``(scores (Q, k) float32, ids (Q, k) int64)``, id -1 where fewer than k items exist."""

    def exact_scan(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``queries`` over the rows of ``gallery`` with this backend's scan threads:
        ``(scores, rows)``, row -1 where fewer exist (re-rankers search derived galleries with it)."""

    def search(self, queries, k: int = 10, encoder=None, *, device=None, refine=None,
               exclude: list | None = None) -> list[list[Hit]]:
        """Top-k :class:`Hit` lists for features (Q, D) or images, re-ranked by ``refine``, without the
        ``exclude`` ids of each query."""


def make_hits(scores: np.ndarray, ids: np.ndarray,
              lookup: Callable[[np.ndarray], tuple[list, list]]) -> list[list[Hit]]:
    """:class:`Hit` lists from ``(scores, ids)`` (-1 = no item); ``lookup(ids)`` gives the paths and labels of
    the found ids (an int64 array, sorted, unique), one call for the whole batch so that a remote backend
    fetches its payloads once and a local one gathers them vectorised."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    found = np.unique(ids[ids >= 0])
    paths, labels = lookup(found) if len(found) else ([], [])
    paths, labels = np.asarray(paths, dtype=object), np.asarray(labels, dtype=object)
    out = []
    for srow, irow in zip(scores, ids):  # vectorised gathers, then one map: k = 1000 costs well under a ms
        ok = irow >= 0
        at = np.searchsorted(found, irow[ok])
        out.append(list(map(Hit, irow[ok].tolist(), paths[at].tolist(), labels[at].tolist(), srow[ok].tolist())))
    return out


def search_hits(backend: SearchBackend, feats: np.ndarray, k: int, refine=None, exclude: list | None = None,
                lookup: Callable[[np.ndarray], tuple[list, list]] | None = None) -> list[list[Hit]]:
    """The common body of every backend's :meth:`SearchBackend.search` once queries are features: plain or
    re-ranked search (:mod:`indexer.refine`), then hits. ``lookup`` defaults to the backend's records."""
    q = np.asarray(feats, np.float32)
    q = q[None] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != backend.dim:
        raise IndexError_(f"query features have shape {q.shape}; this index holds dimension {backend.dim}")
    if (refine is not None and refine.active) or exclude is not None:
        scores, ids = refined_search(backend, q, k, refine or Refine(), exclude)
    else:
        scores, ids = backend.search_vectors(q, k)
    if lookup is None:
        def lookup(found):
            recs = [backend.record(i) for i in found.tolist()]
            return [r["path"] for r in recs], [r["label"] for r in recs]
    return make_hits(scores, ids, lookup)


class ArrayBackend:
    """An in-memory gallery searched exactly: vectors and their records held in arrays (a quick gallery for a
    notebook or a benchmark, and the smallest complete :class:`SearchBackend`).

    Args:
        vectors: (N, D) L2-normalised float32 rows.
        ids: their stable ids (default 0..N-1).
        paths, labels: per row (default ``str(id)`` and None).
    """

    index_type = "flat"
    fingerprint = "array"
    cache_dir = None  # nothing on disk: DBA is refused

    def __init__(self, vectors: np.ndarray, ids=None, paths=None, labels=None):
        from indexer.exact import ExactSearcher

        self._v = np.ascontiguousarray(np.asarray(vectors, np.float32))
        n = len(self._v)
        self._ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self._pos = {int(i): r for r, i in enumerate(self._ids)}
        if len(self._pos) != n:
            raise ValueError("ids must be unique")
        self._paths = [str(i) for i in self._ids] if paths is None else list(paths)
        self._labels = [None] * n if labels is None else list(labels)
        self._exact = ExactSearcher()
        self.dim, self.count, self.dir = int(self._v.shape[1]), n, Path("<memory>")

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def _rows(self, ids) -> np.ndarray:
        try:
            return np.asarray([self._pos[int(i)] for i in ids], np.int64)
        except KeyError as exc:
            raise IndexError_(f"no record with id {exc.args[0]}") from None

    def vectors(self, ids=None) -> np.ndarray:
        return self._v.copy() if ids is None else self._v[self._rows(ids)]

    def records(self) -> list[dict]:
        return [self.record(i) for i in sorted(self._pos)]

    def record(self, id: int) -> dict:
        r = int(self._rows([id])[0])
        return {"id": int(id), "path": self._paths[r], "label": self._labels[r], "sha256": None, "added_at": None}

    def state(self) -> dict:
        return {"rows": self.count}

    def exact_scan(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._exact.search(gallery, queries, k)

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        s, rows = self._exact.search(self._v, np.asarray(queries, np.float32).reshape(-1, self.dim), int(k))
        return s, np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)

    def search(self, queries, k: int = 10, encoder=None, *, device=None, refine=None,
               exclude: list | None = None) -> list[list[Hit]]:
        if not isinstance(queries, np.ndarray):
            raise TypeError("an ArrayBackend searches features; embed images first")
        pos, paths, labels = self._pos, self._paths, self._labels
        return search_hits(self, queries, k, refine, exclude,
                           lookup=lambda found: ([paths[pos[i]] for i in found.tolist()],
                                                 [labels[pos[i]] for i in found.tolist()]))
