"""The manifest: one SQLite database per index, the commit point of every change.

Tables:
    records(id, path, label, sha256, added_at, size, mtime_ns, vec_row)  one row per gallery item; ``id`` is
        the FAISS id (AUTOINCREMENT: never reused, so ids never shift); ``vec_row`` is the item's row in the
        vector file.
    skipped(path, reason, at)  files a build could not read, until a later build reads them.
    meta(key, value)  ``vec_rows`` (rows of the vector file that are committed), ``vectors_file``.

A chunk of new items is committed by appending its vectors to the vector file (fsync) and then inserting
its rows and the new ``vec_rows`` in one transaction: a crash before the commit leaves only uncommitted
bytes at the end of the vector file, which the next writer truncates.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Iterable, NamedTuple

from indexer.errors import IndexFormatError, IndexStorageError

MANIFEST_FILE = "manifest.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    label TEXT,
    sha256 TEXT NOT NULL,
    added_at TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    vec_row INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

RECORD_FIELDS = ("id", "path", "label", "sha256", "added_at")  # what Index.records() shows of a Record


class Record(NamedTuple):
    """One manifest row as the open index keeps it."""

    id: int  # stable id (never reused)
    path: str  # manifest key (relative to the gallery root when under it)
    label: str | None  # class name, or None
    sha256: str  # content hash of the embedded file
    added_at: str  # ISO-8601 UTC time of the commit
    vec_row: int  # row of its vector in the vectors file

    def as_dict(self) -> dict:
        """The public fields (RECORD_FIELDS) as a dict."""
        return {k: getattr(self, k) for k in RECORD_FIELDS}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """Thin wrapper over the SQLite file; readers and writers both use it (WAL: readers never block)."""

    def __init__(self, path: str | Path, *, create: bool = False, id_offset: int = 0):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise IndexFormatError(f"{self.path.parent}: not an index directory (no {MANIFEST_FILE})")
        self.db = None
        try:
            if not create and not os.access(self.path.parent, os.W_OK):
                self.db = self._connect_read_only()
            else:
                self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            if create:
                self.db.executescript(_SCHEMA)
                if id_offset and self.max_id() == 0:
                    # First id will be id_offset + 1 (shards built apart get disjoint id ranges).
                    with self.db:
                        self.db.execute("BEGIN IMMEDIATE")
                        self.db.execute("INSERT OR REPLACE INTO sqlite_sequence(name, seq) VALUES ('records', ?)",
                                        (int(id_offset),))
            self.db.execute("SELECT id, path, label, sha256, added_at, vec_row FROM records LIMIT 1")
        except sqlite3.DatabaseError as exc:
            if self.db is not None:
                self.db.close()  # a leaked connection would keep SQLite's shared -shm state for this file
            if isinstance(exc, sqlite3.OperationalError) and shutil.disk_usage(self.path.parent).free < 64 << 10:
                raise IndexStorageError(f"{self.path}: cannot open the manifest ({exc}): the disk is full") from None
            raise IndexFormatError(f"{self.path}: not a readable manifest ({exc})") from None

    def _connect_read_only(self) -> sqlite3.Connection:
        """A directory this process cannot write (read-only medium or mount): SQLite cannot create the WAL's
        -shm file there. Read through an existing one if a writer (with more rights) has it open, else read the
        file as immutable: with no -shm present no writer is connected."""
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        """Fold the WAL into the main file so a copied directory is complete."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass

    # --- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def vec_rows(self) -> int:
        return int(self.get_meta("vec_rows", "0"))

    def vectors_file(self) -> str:
        return self.get_meta("vectors_file", "vectors.f32")

    # --- reads ------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def max_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        top = self.db.execute("SELECT MAX(id) FROM records").fetchone()[0] or 0
        return max(top, row[0] if row else 0)

    def snapshot(self) -> tuple[list[Record], int, str]:
        """All rows as :class:`Record` by id, plus vec_rows and vectors file,
        read in one transaction so they agree."""
        self.db.execute("BEGIN")
        try:
            rows = [Record(*r) for r in self.db.execute(
                "SELECT id, path, label, sha256, added_at, vec_row FROM records ORDER BY id")]
            vec_rows = self.vec_rows()
            bad = next((r for r in rows if not 0 <= r.vec_row < vec_rows), None)
            if bad is not None:
                raise IndexFormatError(f"{self.path}: record id {bad.id} points at vector row {bad.vec_row}, but only "
                                       f"{vec_rows} vector rows are committed")
            return rows, vec_rows, self.vectors_file()
        finally:
            self.db.execute("COMMIT")

    def by_path(self) -> dict[str, tuple]:
        """path -> (id, sha256, size, mtime_ns, label)."""
        return {p: (i, s, sz, mt, lab) for i, p, s, sz, mt, lab in
                self.db.execute("SELECT id, path, sha256, size, mtime_ns, label FROM records")}

    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.db.execute("SELECT path, reason FROM skipped ORDER BY path")]

    # --- writes (callers hold the index lock) -------------------------------------------------------
    def commit_rows(self, rows: Iterable[tuple], new_vec_rows: int, replaced_ids: Iterable[int] = (),
                    resolved_paths: Iterable[str] = ()) -> list[int]:
        """Insert ``(path, label, sha256, size, mtime_ns, vec_row)`` rows and set ``vec_rows``, atomically.

        ``replaced_ids`` (changed files) are deleted in the same transaction; ``resolved_paths`` are removed
        from the skip list. Returns the new ids in row order.
        """
        ts = now()
        ids = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for rid in replaced_ids:
                self.db.execute("DELETE FROM records WHERE id=?", (int(rid),))
            for path, label, sha, size, mtime_ns, vec_row in rows:
                cur = self.db.execute(
                    "INSERT INTO records(path, label, sha256, added_at, size, mtime_ns, vec_row) "
                    "VALUES (?,?,?,?,?,?,?)", (path, label, sha, ts, size, mtime_ns, int(vec_row)))
                ids.append(cur.lastrowid)
            self.db.executemany("DELETE FROM skipped WHERE path=?", [(p,) for p in resolved_paths])
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vec_rows', ?)", (str(new_vec_rows),))
        return ids

    def record_skipped(self, items: Iterable[tuple[str, str]]) -> None:
        ts = now()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO skipped(path, reason, at) VALUES (?,?,?)",
                                [(p, r, ts) for p, r in items])

    def delete_ids(self, ids: Iterable[int]) -> int:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.executemany("DELETE FROM records WHERE id=?", [(int(i),) for i in ids])
        return cur.rowcount

    def set_vectors(self, vectors_file: str, vec_rows: int, row_of_id: dict[int, int]) -> None:
        """Point the manifest at a compacted vector file, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE records SET vec_row = -id")  # keep UNIQUE(vec_row) satisfied meanwhile
            self.db.executemany("UPDATE records SET vec_row=? WHERE id=?", [(r, i) for i, r in row_of_id.items()])
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vec_rows', ?)", (str(vec_rows),))
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vectors_file', ?)", (vectors_file,))
