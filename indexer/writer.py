"""The transactional core of every index change: an open index directory with the writer lock held.

Order of every change: vectors appended to the vector file, then manifest rows committed (the commit point),
then ``index.faiss`` and ``header.json`` rewritten atomically. A writer killed anywhere leaves an index that
the next writer (or :meth:`indexer.Index.open`) repairs from the manifest.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from engine.atomic import atomic_write_json
from engine.errors import PPSSLError
from indexer.errors import EncoderMismatchError, IndexError_, IndexStorageError
from indexer.faiss_index import IVF_TYPES, IndexParams, default_nprobe, empty_index, resolve_params
from indexer.manifest import MANIFEST_FILE, Manifest, now
from indexer.header import HEADER_FILE, IndexHeader, read_header, write_header
from indexer.store import (FAISS_FILE, REPORT_FILE, TRAINED_FILE, WriterLock, consistent_faiss, faiss_from_vectors,
                           load_trained, write_faiss)
from indexer.vectors import VectorAppender, read_rows


@dataclass
class BuildReport:
    """What a build or add did."""

    added: int = 0  # new records committed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files that could not be read
    already_present: int = 0  # files already in the index with the same content (no-op)
    replaced: int = 0  # files whose content changed: old record removed, new one added
    total: int = 0  # files considered
    seconds: float = 0.0  # wall time
    count: int = 0  # records in the index afterwards
    index_dir: str = ""
    adapt: dict | None = None  # the head fitted by this build (indexer.adapt), or {"skipped": why}, or None
    precision: dict | None = None  # the index's precision (indexer.precision): mode, and why fp32 / agreement, speed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


def storage_errors(fn):
    """Report a failed write (disk full, read-only directory, file size limit) as one clear
    :class:`IndexStorageError`: the manifest keeps every committed chunk, so nothing else is lost."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PPSSLError:
            raise
        except (OSError, sqlite3.Error) as exc:
            what = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror and exc.filename
                    else str(exc))
            raise IndexStorageError(f"cannot write the index ({what}); work committed before this point is "
                                    "kept, rerun the command once the problem is fixed") from exc

    return wrapper


class IndexWriter:
    """An open index directory with the writer lock held."""

    def __init__(self, index_dir: str | Path, header: IndexHeader | None = None, id_offset: int = 0):
        self.dir = Path(index_dir)
        self.lock = WriterLock(self.dir)
        try:
            if header is not None and (self.dir / HEADER_FILE).exists():
                # another writer created the index while we waited for the lock
                existing = read_header(self.dir)
                if existing.encoder.fingerprint != header.encoder.fingerprint:
                    raise EncoderMismatchError(existing.encoder.fingerprint, header.encoder.fingerprint,
                                               "extend this index")
                header = None
            if header is not None:
                write_header(self.dir, header)
            self.header = read_header(self.dir)
            self.manifest = Manifest(self.dir / MANIFEST_FILE, create=header is not None, id_offset=id_offset)
            self.reload_space()
            self.vec_path = self.dir / self.manifest.vectors_file()
            self.appender = VectorAppender(self.vec_path, self.stored_dim, self.manifest.vec_rows())
            self._cleanup_stale_vector_files()
            for tmp in self.dir.glob(".*.tmp"):  # atomic writes of a killed writer (we hold the lock)
                if tmp.is_file():
                    tmp.unlink()
        except BaseException:
            self.lock.release()
            raise
        self.faiss = None  # loaded lazily for incremental changes
        self.faiss_dirty = False
        self._trained = None  # the empty trained IVF index of the last rebuild

    # --- state ------------------------------------------------------------------------------------
    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vector rows) of all records, by id."""
        rows = self.manifest.db.execute("SELECT id, vec_row FROM records ORDER BY id").fetchall()
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def reload_space(self) -> None:
        """Read the stored and searched dimensions and the head (an adapted index) from the header."""
        from indexer.adapt import projector

        self.dim = int(self.header.dim)  # the searched space (FAISS)
        self.project = projector(self.dir, self.header)  # stored -> searched space; None: the same space
        self.stored_dim = self.header.stored_dim
        self.faiss = None

    def stored_vectors(self, vec_rows: np.ndarray) -> np.ndarray:
        """Rows of the vector file: the encoder's own features."""
        return read_rows(self.vec_path, self.stored_dim, self.manifest.vec_rows(), vec_rows)

    def vectors(self, vec_rows: np.ndarray) -> np.ndarray:
        """Rows in the searched space (through the head of an adapted index)."""
        return self.searched(self.stored_vectors(vec_rows))

    def searched(self, stored: np.ndarray) -> np.ndarray:
        return stored if self.project is None else self.project(stored)

    @property
    def params(self) -> IndexParams:
        return IndexParams.from_dict(self.header.requested or {"index_type": self.header.index_type})

    def load_faiss(self):
        """The FAISS index consistent with the manifest (repairing a crashed writer's leftovers)."""
        if self.faiss is None:
            ids, rows = self.live()
            self.faiss, repaired = consistent_faiss(self.dir, self.header, ids, lambda: self.vectors(rows))
            self.faiss_dirty = repaired
        return self.faiss

    # --- writes -----------------------------------------------------------------------------------
    def commit(self, vectors: np.ndarray, items: Sequence[tuple[str, str | None, str, int, int]],
               replaced: Iterable[int] = (), resolved: Iterable[str] = ()) -> list[int]:
        """Append vectors, then commit their manifest rows (the commit point). Returns the new ids."""
        rows = self.appender.append(vectors) if len(vectors) else range(0)
        ids = self.manifest.commit_rows(
            [(key, label, sha, size, mtime, r) for (key, label, sha, size, mtime), r in zip(items, rows)],
            self.appender.rows, replaced, resolved)
        return ids

    def rebuild_faiss(self, retrain: bool) -> None:
        """Recreate the FAISS index from the stored vectors.

        IVF types are trained on the stored vectors when ``retrain`` (unless the index uses a fixed,
        shared training), else they reuse ``trained.faiss``.
        """
        ids, rows = self.live()
        p = resolve_params(self.params, len(ids), self.dim)
        trained = None
        if p.index_type in IVF_TYPES and (self.header.fixed_training or not retrain):
            trained = load_trained(self.dir, p, self.dim)
        if p.index_type in IVF_TYPES and trained is None:
            need = max(p.nlist, 2 ** (p.pq_nbits or 0))
            if len(ids) == 0:
                self.faiss, self.faiss_dirty, self._trained = empty_index(p, self.dim), True, None
                self._set_params(p, self.faiss)
                return
            if len(ids) < need:
                raise IndexError_(f"a {p.index_type} index needs at least {need} images to train; this gallery "
                                  f"has {len(ids)} (use --index flat)")
        self.faiss = None  # replaced: let it go before the new one is built (peak memory of a build)
        self.faiss, p, self._trained = faiss_from_vectors(p, self.dim, self.vectors(rows), ids, trained)
        if retrain and not self.header.fixed_training:
            self.header.trained_on = int(len(ids))
        self._set_params(p, self.faiss)
        self.faiss_dirty = True

    def _set_params(self, p: IndexParams, index) -> None:
        """Record the parameters the FAISS index really has (a reused training fixes nlist / PQ size)."""
        import faiss

        if p.index_type in IVF_TYPES:
            ivf = faiss.extract_index_ivf(index)
            if ivf.nlist != p.nlist:
                p.nlist = int(ivf.nlist)
                p.nprobe = self.params.nprobe or default_nprobe(p.nlist)
            if p.index_type == "ivfpq":
                pq = faiss.downcast_index(index).pq
                p.pq_m, p.pq_nbits = int(pq.M), int(pq.nbits)
        self.header.index_type = p.index_type
        self.header.params = p.to_dict()

    def save(self, state: str | None = None, persist_trained: bool = False) -> None:
        """Write index.faiss (if changed) and header.json atomically, after the manifest."""
        if self.faiss_dirty and self.faiss is not None:
            if persist_trained and self._trained is not None:
                write_faiss(self._trained, self.dir / TRAINED_FILE)
            write_faiss(self.faiss, self.dir / FAISS_FILE)
            self.faiss_dirty = False
        n = self.manifest.count()
        self.header.counts = {"records": n, "faiss": int(self.faiss.ntotal) if self.faiss is not None else None,
                                 "skipped": len(self.manifest.skipped())}
        if state:
            self.header.state = state
        self.header.updated = now()
        write_header(self.dir, self.header)

    def compact(self) -> None:
        """Rewrite the vector file with only live rows (removed items' vectors are dropped)."""
        ids, rows = self.live()
        if len(rows) == self.manifest.vec_rows():
            return
        vecs = self.stored_vectors(rows)
        name = f"vectors.{int(time.time() * 1000)}.f32"
        new = self.dir / name
        with open(new, "wb") as fh:
            fh.write(np.ascontiguousarray(vecs, np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self.manifest.set_vectors(name, len(ids), {int(i): r for r, i in enumerate(ids)})
        self.vec_path = new
        self.appender = VectorAppender(new, self.stored_dim, len(ids))
        self._cleanup_stale_vector_files()

    def _cleanup_stale_vector_files(self) -> None:
        current = self.vec_path.name
        for p in self.dir.glob("vectors*.f32"):
            if p.name != current:
                try:
                    p.unlink()
                except OSError:
                    pass

    def write_report(self, report: BuildReport) -> None:
        report.count = self.manifest.count()
        report.index_dir = str(self.dir)
        d = report.to_dict()
        d["outstanding_skipped"] = [{"path": p, "reason": r} for p, r in self.manifest.skipped()]
        d["finished_at"] = now()
        atomic_write_json(self.dir / REPORT_FILE, d)

    def close(self) -> None:
        try:
            self.manifest.checkpoint()
            self.manifest.close()
        finally:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
