"""Writing indexes: build (resumable), add, remove, rebuild, and adding precomputed vectors.

Every change holds the writer lock, commits to the manifest first (the commit point), then rewrites
``index.faiss`` and ``header.json`` atomically. A build commits every ``chunk_size`` images, so a killed
build keeps what it embedded and a rerun continues with the rest (files already in the manifest with the
same content are skipped; a file whose content changed is replaced under a new id).
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
from indexer.encoders import EncoderSpec, load_recorded_encoder, resolve_encoder
from engine.errors import PPSSLError
from indexer.errors import EncoderMismatchError, IndexError_, IndexStorageError
from indexer.faiss_index import (INDEX_TYPES, IVF_TYPES, IndexParams, add, default_nprobe, empty_index, remove,
                                 resolve_params)
from indexer.manifest import MANIFEST_FILE, Manifest, now
from indexer.sources import (Item, dataset_items, embed_items, folder_label, manifest_key, scan_folder,
                             sha256_file)
from indexer.store import (FAISS_FILE, FORMAT, FORMAT_VERSION, HEADER_FILE, METRIC, REPORT_FILE, TRAINED_FILE,
                           WriterLock, clone_empty, consistent_faiss, faiss_from_vectors, load_trained, read_faiss,
                           read_header, write_faiss, write_header)
from indexer.vectors import VectorAppender, read_rows

#: Test hook: seconds to sleep after each committed chunk (lets a test kill a build mid-way).
SLOW_CHUNK_ENV = "PPSSL_TEST_SLOW_CHUNK"


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


def _storage_errors(fn):
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


class _Writer:
    """An open index directory with the writer lock held."""

    def __init__(self, index_dir: str | Path, header: dict | None = None, id_offset: int = 0):
        self.dir = Path(index_dir)
        self.lock = WriterLock(self.dir)
        try:
            if header is not None and (self.dir / HEADER_FILE).exists():
                # another writer created the index while we waited for the lock
                existing = read_header(self.dir)
                if existing["encoder"]["fingerprint"] != header["encoder"]["fingerprint"]:
                    raise EncoderMismatchError(existing["encoder"]["fingerprint"], header["encoder"]["fingerprint"],
                                               "extend this index")
                header = None
            if header is not None:
                write_header(self.dir, header)
            self.header = read_header(self.dir)
            self.manifest = Manifest(self.dir / MANIFEST_FILE, create=header is not None, id_offset=id_offset)
            self.dim = int(self.header["dim"])
            self.vec_path = self.dir / self.manifest.vectors_file()
            self.appender = VectorAppender(self.vec_path, self.dim, self.manifest.vec_rows())
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

    def vectors(self, vec_rows: np.ndarray) -> np.ndarray:
        return read_rows(self.vec_path, self.dim, self.manifest.vec_rows(), vec_rows)

    @property
    def params(self) -> IndexParams:
        return IndexParams.from_dict(self.header.get("requested") or {"index_type": self.header["index_type"]})

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
        if p.index_type in IVF_TYPES and (self.header.get("fixed_training") or not retrain):
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
        if retrain and not self.header.get("fixed_training"):
            self.header["trained_on"] = int(len(ids))
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
        self.header["index_type"] = p.index_type
        self.header["params"] = p.to_dict()

    def save(self, state: str | None = None, persist_trained: bool = False) -> None:
        """Write index.faiss (if changed) and header.json atomically, after the manifest."""
        if self.faiss_dirty and self.faiss is not None:
            if persist_trained and self._trained is not None:
                write_faiss(self._trained, self.dir / TRAINED_FILE)
            write_faiss(self.faiss, self.dir / FAISS_FILE)
            self.faiss_dirty = False
        n = self.manifest.count()
        self.header["counts"] = {"records": n, "faiss": int(self.faiss.ntotal) if self.faiss is not None else None,
                                 "skipped": len(self.manifest.skipped())}
        if state:
            self.header["state"] = state
        self.header["updated"] = now()
        write_header(self.dir, self.header)

    def compact(self) -> None:
        """Rewrite the vector file with only live rows (removed items' vectors are dropped)."""
        ids, rows = self.live()
        if len(rows) == self.manifest.vec_rows():
            return
        vecs = self.vectors(rows)
        name = f"vectors.{int(time.time() * 1000)}.f32"
        new = self.dir / name
        with open(new, "wb") as fh:
            fh.write(np.ascontiguousarray(vecs, np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self.manifest.set_vectors(name, len(ids), {int(i): r for r, i in enumerate(ids)})
        self.vec_path = new
        self.appender = VectorAppender(new, self.dim, len(ids))
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


def _nlist(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


# --- shared ingestion --------------------------------------------------------------------------------

def _partition(w: _Writer, items: list[Item], report: BuildReport):
    """Split items into (to embed, ids they replace) and count the ones already present."""
    known = w.manifest.by_path()
    todo, replaces = [], {}
    for it in items:
        old = known.get(it.key)
        if old is None:
            todo.append(it)
            continue
        rid, sha, size, mtime, _label = old
        try:
            st = os.stat(it.path)
        except OSError:
            todo.append(it)  # reported as unreadable by the loader
            continue
        if st.st_size == size and st.st_mtime_ns == mtime:
            report.already_present += 1
            continue
        if sha256_file(it.path) == sha:
            report.already_present += 1
            continue
        todo.append(it)
        replaces[it.key] = rid
    return todo, replaces


def _ingest(w: _Writer, encoder, items: list[Item], report: BuildReport, *, batch_size: int, num_workers: int,
            device, amp: bool, chunk_size: int, progress, incremental: bool, checkpoint_faiss: bool) -> None:
    """Embed ``items`` and commit them chunk by chunk; keeps ``w.faiss`` in step when ``incremental``."""
    seen, unique = set(), []
    for it in items:
        if it.key is None:
            report.skipped.append((it.path, "outside the gallery root recorded in the index"))
        elif it.key not in seen:
            seen.add(it.key)
            unique.append(it)
    report.total += len(items)
    todo, replaces = _partition(w, unique, report)
    if not todo:
        return
    slow = float(os.environ.get(SLOW_CHUNK_ENV, "0") or 0)
    written_at = [w.manifest.count() if (w.dir / FAISS_FILE).is_file() else 0]
    pend_vecs, pend_items, pend_fail = [], [], []

    def flush():
        if not pend_items and not pend_fail:
            return
        vecs = np.concatenate(pend_vecs) if pend_vecs else np.zeros((0, w.dim), np.float32)
        rows = [(it.key, it.label, sha, size, mtime) for it, sha, size, mtime in pend_items]
        replaced = [replaces[it.key] for it, *_ in pend_items if it.key in replaces]
        if pend_fail:
            w.manifest.record_skipped([(it.key, reason) for it, reason in pend_fail])
        new_ids = w.commit(vecs, rows, replaced, [it.key for it, *_ in pend_items])
        report.added += len(new_ids)
        report.replaced += len(replaced)
        report.skipped.extend((it.key, reason) for it, reason in pend_fail)
        if incremental:
            _apply_incremental(w, vecs, np.asarray(new_ids, np.int64), replaced)
        elif checkpoint_faiss:
            n = w.manifest.count()
            if written_at[0] == 0 or n >= 2 * written_at[0]:  # doubling: all checkpoints cost <= 2 final writes
                try:
                    w.rebuild_faiss(retrain=True)
                    w.save(state="building")
                    written_at[0] = n
                except IndexError_:
                    pass  # too few images yet to train this index type; the manifest holds the work
        pend_vecs.clear(), pend_items.clear(), pend_fail.clear()
        if slow:
            time.sleep(slow)

    for batch in embed_items(encoder, todo, batch_size=batch_size, num_workers=num_workers, device=device,
                             amp=amp, progress=progress):
        if batch.vectors.shape[1] != w.dim:
            raise EncoderMismatchError(f"dim {w.dim}", f"dim {batch.vectors.shape[1]}", "add to this index")
        pend_vecs.append(batch.vectors)
        pend_items.extend((todo[i], sha, size, mtime) for i, sha, size, mtime in batch.done)
        pend_fail.extend((todo[i], reason) for i, reason in batch.failed)
        if len(pend_items) + len(pend_fail) >= chunk_size:
            flush()
    flush()


def _apply_incremental(w: _Writer, vecs: np.ndarray, ids: np.ndarray, replaced: list[int]) -> None:
    index = w.load_faiss()
    kind = w.header["index_type"]
    if kind == "hnsw" and replaced:
        w.rebuild_faiss(retrain=False)  # HNSW cannot remove: rebuild from the stored vectors
        return
    if replaced:
        remove(index, replaced)
    if kind in IVF_TYPES and not index.is_trained:
        w.rebuild_faiss(retrain=True)
        return
    add(index, vecs, ids)
    w.faiss_dirty = True


# --- public API --------------------------------------------------------------------------------------

def _new_header(*, dim: int, fingerprint: str, weights_fp: str | None, spec: EncoderSpec | None,
                params: IndexParams, root: str | None, source: dict, fixed_training: bool = False) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "encoder": {"fingerprint": fingerprint, "weights_fingerprint": weights_fp,
                    "spec": spec.to_dict() if spec else None, "ref": spec.describe() if spec else None},
        "dim": int(dim), "metric": METRIC, "index_type": _concrete_type(params, dim),
        "requested": params.to_dict(), "params": params.to_dict(),
        "root": root, "source": source, "fixed_training": fixed_training,
        "label_rule": "parent" if "dataset" in source else "top",  # labels of files added later (see sources)
        "counts": {"records": 0, "faiss": 0, "skipped": 0},
        "state": "building", "created": now(), "updated": now(),
    }


def _concrete_type(params: IndexParams, dim: int) -> str:
    try:
        return resolve_params(params, 0, dim).index_type
    except ValueError as exc:
        raise IndexError_(str(exc)) from None


def _requested_params(index_type: str | None, params, base: dict | None = None) -> IndexParams:
    """User overrides on top of ``base`` (an existing index's request), validated."""
    d = dict(base or {})
    if params is not None:
        d.update({k: v for k, v in (params if isinstance(params, dict) else params.to_dict()).items()
                  if v is not None})
    p = IndexParams.from_dict(d)
    p.index_type = index_type or p.index_type or "flat"
    if p.index_type not in INDEX_TYPES + ("auto",):
        raise IndexError_(f"unknown index type {p.index_type!r}; use one of {', '.join(INDEX_TYPES)} or auto")
    return p


def _install_trained(out_dir: Path, trained_from: str | Path, params: IndexParams, dim: int) -> IndexParams:
    """Copy an IVF training (centroids, codebooks) from another index so shards can be merged."""
    from indexer.faiss_index import index_type_of

    src = Path(trained_from)
    path = src / TRAINED_FILE if (src / TRAINED_FILE).is_file() else (src / FAISS_FILE if src.is_dir() else src)
    index = read_faiss(path)
    kind = index_type_of(index)
    if kind not in IVF_TYPES or not index.is_trained:
        raise IndexError_(f"{path}: not a trained IVF index (it is {kind})")
    if index.d != dim:
        raise IndexError_(f"{path}: dimension {index.d}, but the encoder gives {dim}")
    empty = clone_empty(index)
    write_faiss(empty, out_dir / TRAINED_FILE)
    p = IndexParams(**params.to_dict())
    p.index_type, p.nlist = kind, _nlist(empty)
    p.nprobe = p.nprobe or default_nprobe(p.nlist)
    if kind == "ivfpq":
        import faiss

        pq = faiss.downcast_index(empty).pq
        p.pq_m, p.pq_nbits = int(pq.M), int(pq.nbits)
    return p


@_storage_errors
def build_index(encoder=None, out_dir=None, images=None, dataset=None, root=None, split="test",
                index_type=None, batch_size=64, num_workers=2, device=None, progress=None, *,
                weights=None, pooling=None, input_size=None, params=None, chunk_size=512, amp=True,
                rebuild=False, shard=None, trained_from=None, id_offset=0) -> BuildReport:
    """Build (or resume, or extend) a gallery index.

    Args:
        encoder: an engine ``Encoder``, an :class:`EncoderSpec`, or a checkpoint directory / backbone name
            (with ``weights``, ``pooling``, ``input_size``). ``None`` resumes with the recorded encoder.
        out_dir: the index directory (created; an existing index is resumed / extended).
        images: a folder of images; labels are the files' parent folder names (None directly in the folder).
        dataset, root, split: or an engine dataset reader (labels = its class names).
        index_type: "flat" (exact, default), "ivf", "ivfpq", "hnsw", or "auto" (flat up to 100k images).
        params: :class:`IndexParams` overrides (nlist, nprobe, pq_m, hnsw_m, ef_search, ...).
        chunk_size: images per manifest commit (the unit of work a killed build can lose).
        rebuild: recreate the FAISS index from the stored vectors (new type/params, retrained, vector file
            compacted) without re-embedding; new files, if any sources are given, are added first.
        shard: ``(i, n)``: index only every n-th file starting at i (one job of a sharded build).
        trained_from: an IVF index (dir or .faiss) whose training this index reuses (shards to merge).
        id_offset: first id minus one, for shards searched together without merging (disjoint ids).
        progress: ``callable(done, total)``; a tqdm bar is shown when None.
    """
    if out_dir is None:
        raise IndexError_("out_dir is required")
    t0 = time.time()
    out = Path(out_dir).expanduser().resolve()
    report = BuildReport()
    if images is not None and dataset is not None:
        raise IndexError_("give images= or dataset=, not both")
    if dataset is not None and root is None:
        raise IndexError_("dataset= needs root=")
    exists = (out / HEADER_FILE).is_file()
    if not exists and images is None and dataset is None:
        raise IndexError_(f"{out}: no index there yet; give --images DIR or --dataset NAME --root DIR")
    if images is not None and not Path(images).is_dir():
        raise IndexError_(f"{images}: not a directory")
    enc = spec = fp = None
    if encoder is not None:
        enc, spec, fp = resolve_encoder(encoder, weights, pooling, input_size)
    if exists:
        header = read_header(out)
        if fp is not None and fp != header["encoder"]["fingerprint"]:
            raise EncoderMismatchError(header["encoder"]["fingerprint"], fp, "extend this index")
        requested = _requested_params(index_type, params, header.get("requested"))
        if requested.to_dict() != IndexParams.from_dict(header.get("requested") or {}).to_dict() and not rebuild:
            raise IndexError_(f"{out} is a {header['index_type']} index with parameters {header.get('requested')}; "
                              "pass --rebuild to rebuild it with new ones from the stored vectors (no re-embedding)")
        w = _Writer(out)
        w.header["requested"] = requested.to_dict()
    else:
        if enc is None:
            raise IndexError_("an encoder is required to create an index (--checkpoint or --encoder)")
        requested = _requested_params(index_type, params)
        gallery_root = str(Path(images if images is not None else root).expanduser().resolve())
        source = ({"images": gallery_root} if images is not None else
                  {"dataset": dataset, "root": gallery_root, "split": split})
        if shard:
            source["shard"] = list(shard)
        out.mkdir(parents=True, exist_ok=True)
        if trained_from is not None:
            requested = _install_trained(out, trained_from, requested, enc.feature_dim)
        header = _new_header(dim=enc.feature_dim, fingerprint=fp, weights_fp=fp.split("|")[0], spec=spec,
                             params=requested, root=gallery_root, source=source,
                             fixed_training=trained_from is not None)
        w = _Writer(out, header=header, id_offset=id_offset)
    try:
        recorded = w.header.get("source") or {}
        if exists and images is None and dataset is None and not rebuild:
            # resume: the sources the index was built from
            images = recorded.get("images")
            dataset, root, split = recorded.get("dataset"), recorded.get("root"), recorded.get("split", split)
            shard = shard or (tuple(recorded["shard"]) if recorded.get("shard") else None)
        if images is not None or dataset is not None:
            if enc is None:
                enc = load_recorded_encoder(w.header)
            root_dir = w.header["root"]
            if images is not None:
                items = scan_folder(images, root_dir)
            else:
                items = [Item(it.path, manifest_key(it.path, root_dir), it.label)
                         for it in dataset_items(dataset, root, split)]
            if shard:
                i, n = shard
                items = items[i::n]
            _ingest(w, enc, items, report, batch_size=batch_size, num_workers=num_workers, device=device, amp=amp,
                    chunk_size=chunk_size, progress=progress, incremental=False, checkpoint_faiss=True)
        if rebuild:
            w.compact()
        retrain = not w.header.get("fixed_training")
        w.rebuild_faiss(retrain=retrain)
        w.save(state="complete", persist_trained=retrain)
        report.seconds = time.time() - t0
        w.write_report(report)
    finally:
        w.close()
    return report


@_storage_errors
def add_to_index(index_dir, paths_or_folder, encoder=None, progress=None, *, labels=None, batch_size=64,
                 num_workers=2, device=None, amp=True, chunk_size=512) -> BuildReport:
    """Add files (or every file under folders) to an index without rebuilding it.

    Ids of existing items never change; a file already present with the same content is a no-op; a file
    whose content changed replaces its old record. Files must lie under the index's gallery root. Labels
    are the parent folder names unless ``labels`` (one per path, or one for all) is given. IVF indexes are
    not retrained (``build_index(..., rebuild=True)`` retrains).
    """
    t0 = time.time()
    index_dir = Path(index_dir).expanduser().resolve()
    header = read_header(index_dir)
    if encoder is None:
        enc = load_recorded_encoder(header)
        fp = header["encoder"]["fingerprint"]
    else:
        enc, _spec, fp = resolve_encoder(encoder)
    if fp != header["encoder"]["fingerprint"]:
        raise EncoderMismatchError(header["encoder"]["fingerprint"], fp, "add to this index")
    if isinstance(paths_or_folder, (str, os.PathLike)):
        paths_or_folder = [paths_or_folder]
    root = header["root"]
    rule = header.get("label_rule", "top")
    if isinstance(labels, str) or labels is None:
        labels = [labels] * len(paths_or_folder)
    if len(labels) != len(paths_or_folder):
        raise IndexError_(f"{len(labels)} labels for {len(paths_or_folder)} paths")
    items: list[Item] = []
    outside = []
    for p, lab in zip(paths_or_folder, labels):
        p = Path(p).expanduser()
        if manifest_key(p, root) is None:
            outside.append(str(p))
            continue
        if p.is_dir():
            items.extend(scan_folder(p, root, label=lab, rule=rule))
        else:
            key = manifest_key(p, root)
            items.append(Item(os.path.abspath(p), key, lab if lab is not None else folder_label(key, rule)))
    if outside:
        raise IndexError_(f"{outside[0]} lies outside the gallery root {root} of this index"
                          + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                          + "; copy the files under the root first")
    report = BuildReport()
    with _Writer(index_dir) as w:
        w.load_faiss()  # before any commit: new rows are added to it incrementally
        _ingest(w, enc, items, report, batch_size=batch_size, num_workers=num_workers, device=device, amp=amp,
                chunk_size=chunk_size, progress=progress, incremental=True, checkpoint_faiss=False)
        w.save()
        report.seconds = time.time() - t0
        w.write_report(report)
    return report


@_storage_errors
def remove_from_index(index_dir, ids=None, paths=None) -> int:
    """Remove records by id and/or path; returns how many were removed. Other ids are unchanged.

    Flat and IVF indexes remove in place; HNSW, which cannot remove, is rebuilt from the stored vectors
    (no re-embedding). Unknown ids and paths are ignored.
    """
    index_dir = Path(index_dir).expanduser().resolve()
    with _Writer(index_dir) as w:
        want = set(int(i) for i in (ids or []))
        if paths:
            known = w.manifest.by_path()
            root = w.header.get("root")
            for p in paths:
                key = str(p)
                if key not in known and root:
                    key = manifest_key(Path(p).expanduser(), root) or key
                if key in known:
                    want.add(known[key][0])
        live, _ = w.live()
        todo = sorted(want & set(live.tolist()))
        if not todo:
            w.load_faiss()  # a rerun after a killed remove: persist what that writer did not
            if w.faiss_dirty or (w.header.get("counts") or {}).get("records") != w.manifest.count():
                w.save()
            return 0
        index = w.load_faiss()
        n = w.manifest.delete_ids(todo)  # commit point
        if w.header["index_type"] == "hnsw":
            w.rebuild_faiss(retrain=False)
        else:
            remove(index, todo)
            w.faiss_dirty = True
        w.save()
        return n


@_storage_errors
def create_index(out_dir, *, dim: int, fingerprint: str, spec: EncoderSpec | None = None, index_type="flat",
                 params=None, root=None, id_offset: int = 0, trained_from=None) -> None:
    """Create an empty index for precomputed vectors (see :func:`add_vectors`)."""
    out = Path(out_dir).expanduser().resolve()
    if (out / HEADER_FILE).exists():
        raise IndexError_(f"{out}: an index already exists there")
    requested = _requested_params(index_type, params)
    out.mkdir(parents=True, exist_ok=True)
    if trained_from is not None:
        requested = _install_trained(out, trained_from, requested, dim)
    header = _new_header(dim=dim, fingerprint=fingerprint, weights_fp=fingerprint.split("|")[0], spec=spec,
                         params=requested, root=None if root is None else str(Path(root).resolve()),
                         source={"vectors": True}, fixed_training=trained_from is not None)
    with _Writer(out, header=header, id_offset=id_offset) as w:
        w.save(state="complete")


@_storage_errors
def add_vectors(index_dir, vectors: np.ndarray, paths: Sequence[str], labels: Sequence[str | None] | None = None,
                hashes: Sequence[str] | None = None, *, retrain: bool = False) -> list[int]:
    """Add precomputed (L2-normalised) vectors under the given manifest paths; returns their new ids.

    Paths already in the manifest are skipped (no-op). IVF indexes are trained on the first vectors added
    (or use ``trained_from`` given at creation); ``retrain=True`` retrains on everything stored.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = list(labels) if labels is not None else [None] * len(paths)
    hashes = list(hashes) if hashes is not None else [""] * len(paths)
    if not (len(vectors) == len(paths) == len(labels) == len(hashes)):
        raise IndexError_("vectors, paths, labels and hashes must have the same length")
    with _Writer(index_dir) as w:
        if vectors.ndim != 2 or vectors.shape[1] != w.dim:
            raise IndexError_(f"expected vectors of shape (n, {w.dim}), got {vectors.shape}")
        known = w.manifest.by_path()
        keep, seen = [], set(known)
        for i, p in enumerate(paths):
            if str(p) not in seen:
                seen.add(str(p))
                keep.append(i)
        if not keep:
            return []
        rows = [(str(paths[i]), labels[i], hashes[i], None, None) for i in keep]
        index = w.load_faiss()  # before the commit: it must not hold the new rows yet
        new_ids = w.commit(vectors[keep], rows)
        if retrain or (w.header["index_type"] in IVF_TYPES and not index.is_trained):
            w.rebuild_faiss(retrain=not w.header.get("fixed_training"))
            w.save(state="complete", persist_trained=True)
        else:
            add(index, vectors[keep], np.asarray(new_ids, np.int64))
            w.faiss_dirty = True
            w.save(state="complete")
        return new_ids
