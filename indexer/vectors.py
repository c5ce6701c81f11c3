"""The raw vector file: float32 rows, append-only, no header (``numpy.fromfile``/``memmap`` readable).

Every vector an index ever held is kept here, so rebuilds, index-type changes, HNSW removals and
evaluation never re-embed, and product-quantised indexes can still be evaluated exactly. The manifest
says how many rows are committed; bytes past them belong to an interrupted chunk and are cut off.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from indexer.errors import IndexFormatError


def read_rows(path: str | Path, dim: int, committed: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of the vector file (all committed rows, or ``rows`` in that order) as float32 (n, dim)."""
    path = Path(path)
    if rows is not None and len(rows):
        rows = np.asarray(rows, dtype=np.int64)
        bad = rows[(rows < 0) | (rows >= committed)]
        if len(bad):
            raise IndexFormatError(f"{path}: the manifest points at vector row {int(bad[0])}, but only {committed} "
                                   "rows are committed")
    if committed == 0:
        return np.zeros((0, dim), np.float32) if rows is None else np.zeros((len(rows), dim), np.float32)
    need = committed * dim * 4
    size = path.stat().st_size if path.is_file() else -1
    if size < need:
        raise IndexFormatError(f"{path}: holds {max(size, 0)} bytes but the manifest commits {committed} rows "
                               f"of dim {dim} ({need} bytes); the vector file is truncated")
    if rows is None or (len(rows) == committed and np.array_equal(rows, np.arange(committed))):
        # all rows in order (a rebuild after a fresh build): one read, no mapped pages held in RSS beside it
        return np.fromfile(path, dtype=np.float32, count=committed * dim).reshape(committed, dim)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(committed, dim))
    out = np.array(mm if rows is None else mm[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    del mm
    return out


class VectorAppender:
    """Appends rows after the committed ones (the caller commits the count to the manifest)."""

    def __init__(self, path: str | Path, dim: int, committed: int):
        self.path = Path(path)
        self.dim = dim
        self.rows = committed
        want = committed * dim * 4
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < want:
            raise IndexFormatError(f"{self.path}: truncated ({size} bytes, {want} committed)")
        with open(self.path, "ab") as fh:
            if size > want:
                fh.truncate(want)  # an interrupted chunk that never reached the manifest
            os.fsync(fh.fileno())

    def append(self, vectors: np.ndarray) -> range:
        """Write and fsync ``vectors``; returns their row numbers (uncommitted until the manifest says so)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        with open(self.path, "r+b") as fh:
            fh.seek(self.rows * self.dim * 4)
            fh.write(vectors.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        start = self.rows
        self.rows += len(vectors)
        return range(start, self.rows)
