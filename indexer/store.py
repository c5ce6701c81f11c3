"""The index directory: file names, the JSON header, the writer lock, and loading a consistent FAISS index.

Layout::

    header.json      format, encoder (spec + fingerprint), dim, metric, index type and parameters, root, counts
    manifest.sqlite  records (id, path, label, sha256, added_at, ...), skipped files, committed vector rows
    vectors.f32      every committed vector, raw float32 rows (numpy.memmap-able)
    index.faiss      the FAISS index (faiss.write_index format; readable by plain faiss.read_index)
    trained.faiss    IVF types: the empty trained index (centroids / codebooks) reused by rebuilds
    report.json      the last build/add: counts and every skipped file with its reason
    .lock            writers hold an exclusive flock on it

The manifest is the source of truth. ``index.faiss`` is rewritten atomically after it; if a crash leaves it
behind (or ahead of) the manifest, readers rebuild the FAISS index in memory from ``vectors.f32`` and the
next writer persists the repair.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import numpy as np

from engine.atomic import atomic_path
from indexer.errors import IndexFormatError
from indexer.header import HEADER_FILE, IndexHeader
from indexer.manifest import MANIFEST_FILE
from indexer.faiss_index import IVF_TYPES, IndexParams, add, index_type_of, stored_ids, train_index, resolve_params

FAISS_FILE = "index.faiss"
TRAINED_FILE = "trained.faiss"
REPORT_FILE = "report.json"
LOCK_FILE = ".lock"
VECTORS_FILE = "vectors.f32"  # the default name; the manifest records the one in use
#: the files whose change means the index's content changed (readers that cache an open index watch these)
CONTENT_FILES = (HEADER_FILE, FAISS_FILE, MANIFEST_FILE, VECTORS_FILE)


def write_faiss(index, path: str | Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_faiss(path: str | Path):
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFormatError(f"{path}: not a readable FAISS index ({str(exc).strip().splitlines()[-1]})") from None


class WriterLock:
    """Exclusive ``flock`` on ``<index_dir>/.lock``: concurrent writers wait for each other."""

    def __init__(self, index_dir: str | Path):
        self.path = Path(index_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another writer of {self.path.parent} ...", file=sys.stderr)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def load_trained(index_dir: str | Path, params: IndexParams, dim: int):
    """The persisted empty trained index, if it fits ``params`` (else None)."""
    path = Path(index_dir) / TRAINED_FILE
    if params.index_type not in IVF_TYPES or not path.is_file():
        return None
    index = read_faiss(path)
    if index.d != dim or index_type_of(index) != params.index_type or index.ntotal:
        return None
    return index


def clone_empty(index):
    """A copy of a trained index with no vectors (for adding another set with the same training)."""
    import faiss

    copy = faiss.clone_index(index)
    copy.reset()
    return copy


def faiss_from_vectors(params: IndexParams, dim: int, vectors: np.ndarray, ids: np.ndarray, trained=None):
    """A FAISS index holding ``vectors`` under ``ids``: from ``trained`` (an empty trained index) when
    given, else trained on ``vectors``. Returns ``(index, resolved params, trained-or-None)``."""
    p = resolve_params(params, len(vectors), dim)
    if trained is not None:
        index = clone_empty(trained)
    else:
        index = train_index(p, dim, vectors)
        trained = clone_empty(index) if p.index_type in IVF_TYPES else None
    add(index, vectors, ids)
    return index, p, trained


def check_faiss(index, header: IndexHeader, path) -> bool:
    """Refuse a FAISS file of another dimension or metric (a foreign file); return whether its type is the
    header's (a writer killed between writing index.faiss and header.json leaves them differing)."""
    import faiss

    if index.d != header.dim:
        raise IndexFormatError(f"{path}: dimension {index.d} but header.json says {header.dim}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(f"{path}: metric is not inner product")
    return index_type_of(index) == header.index_type


def consistent_faiss(index_dir: Path, header: IndexHeader, ids: np.ndarray, get_vectors):
    """Read ``index.faiss`` and make sure it holds exactly ``ids``; otherwise rebuild it from the stored
    vectors. Returns ``(index, repaired: bool)``; ``get_vectors()`` returns the vectors aligned with ``ids``."""
    path = index_dir / FAISS_FILE
    index = None
    if path.is_file():
        index = read_faiss(path)
        if not check_faiss(index, header, path):
            index = None
        else:
            held = stored_ids(index)
            if len(held) == len(ids) and np.array_equal(np.sort(held), np.sort(ids)):
                return index, False
    params = IndexParams.from_dict(header.params or {"index_type": header.index_type})
    if index is not None and params.index_type in IVF_TYPES and index.is_trained:
        trained = clone_empty(index)
    else:
        trained = load_trained(index_dir, params, header.dim)
    if params.index_type in IVF_TYPES and trained is None and len(ids) == 0:
        from indexer.faiss_index import empty_index

        return empty_index(resolve_params(params, 0, header.dim), header.dim), True
    index, _, _ = faiss_from_vectors(params, header.dim, get_vectors(), ids, trained)
    return index, True
