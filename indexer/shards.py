"""Beyond one machine, with what FAISS offers (no home-made distributed layer).

Sharded build: one IVF training shared by every shard (``build_index(..., trained_from=...)`` or
``ppssl index build --trained-from``), one embedding job per shard (``--shard i/n``), then
:func:`merge_ivf_shards` merges their inverted lists with ``IndexIVF.merge_from`` into one index. For
galleries larger than RAM, ``faiss.contrib.ondisk.merge_ondisk`` does the same merge into an
``OnDiskInvertedLists`` file (see docs/indexer.md).

Searching shards without merging: :class:`ShardedIndex` wraps the shards' FAISS indexes in
``faiss.IndexShards`` (ids must be disjoint: build shards with ``id_offset``). Several GPUs: FAISS's own
``index_cpu_to_all_gpus`` with ``shard=True`` (used by :class:`indexer.Index` when GPUs are present).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from indexer.backend import Hit, search_hits
from indexer.errors import IndexError_
from indexer.faiss_index import IVF_TYPES, RERANK_TYPES, set_search_params
from indexer.index import Index, rerank_exact
from indexer.manifest import MANIFEST_FILE, Manifest, now
from indexer.header import HEADER_FILE, write_header
from indexer.store import FAISS_FILE, TRAINED_FILE, clone_empty, write_faiss
from indexer.vectors import VectorAppender


def merge_ivf_shards(shard_dirs, out_dir) -> Index:
    """Merge IVF shard indexes that share one training into a new index directory.

    Ids are shifted so they stay unique: shard j's ids are offset by the largest id of the shards before
    it (shards built with disjoint ``id_offset`` ranges keep their ids). Paths must be unique across shards.
    Returns the merged index, opened.
    """
    import faiss

    shard_dirs = [Path(d).expanduser().resolve() for d in shard_dirs]
    out = Path(out_dir).expanduser().resolve()
    if not shard_dirs:
        raise IndexError_("no shards to merge")
    if (out / HEADER_FILE).exists():
        raise IndexError_(f"{out}: an index already exists there")
    shards = [Index.open(d, use_gpu=False) for d in shard_dirs]
    first = shards[0]
    for s in shards[1:]:
        for what in ("fingerprint", "dim", "index_type", "root"):
            if getattr(s, what) != getattr(first, what):
                raise IndexError_(f"{s.dir} and {first.dir} differ in {what}: {getattr(s, what)} vs "
                                  f"{getattr(first, what)}")
    if any(s.adapted for s in shards):
        raise IndexError_("adapted shards have heads fitted on different photos and cannot be merged; build the "
                          "shards with --no-adapt, merge them, then adapt the merged index with --rebuild --adapt")
    if first.index_type not in IVF_TYPES:
        raise IndexError_(f"merge needs IVF shards (built with --index ivf, ivfsq or ivfpq), not {first.index_type}")
    quantizers = [faiss.extract_index_ivf(s.faiss_index).quantizer for s in shards]
    c0 = quantizers[0].reconstruct_n(0, quantizers[0].ntotal)
    for s, q in zip(shards[1:], quantizers[1:]):
        if q.ntotal != len(c0) or not np.array_equal(q.reconstruct_n(0, q.ntotal), c0):
            raise IndexError_(f"{s.dir} was trained apart from {first.dir}; build shards with --trained-from "
                              "the same index so their IVF cells agree")
    seen = set()
    for s in shards:
        for r in s.records():
            if r["path"] in seen:
                raise IndexError_(f"{r['path']} is in more than one shard")
            seen.add(r["path"])

    merged = clone_empty(first.faiss_index)
    offsets, offset = [], 0
    for s in shards:
        ids = s.ids()
        shift = offset if len(ids) and ids.min() <= offset else 0
        offsets.append(shift)
        offset = max(offset, int(ids.max()) + shift if len(ids) else offset)
    tmp = out.with_name(f".{out.name}.merging")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    header = dataclasses.replace(first.header.copy(), source={"merged": [str(d) for d in shard_dirs]},
                                 state="complete", created=now(), updated=now())
    write_header(tmp, header)
    m = Manifest(tmp / MANIFEST_FILE, create=True)
    app = VectorAppender(tmp / "vectors.f32", first.dim, 0)
    for s, shift in zip(shards, offsets):
        merged.merge_from(faiss.clone_index(s.faiss_index), int(shift))
        rows = app.append(s.vectors()) if s.count else range(0)
        with m.db:
            m.db.execute("BEGIN IMMEDIATE")
            m.db.executemany(
                "INSERT INTO records(id, path, label, sha256, added_at, size, mtime_ns, vec_row) "
                "VALUES (?,?,?,?,?,NULL,NULL,?)",
                [(r["id"] + shift, r["path"], r["label"], r["sha256"], r["added_at"], row)
                 for r, row in zip(s.records(), rows)])
            m.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vec_rows', ?)", (str(app.rows),))
    header.counts = {"records": m.count(), "faiss": int(merged.ntotal), "skipped": 0}
    m.checkpoint()
    m.close()
    write_header(tmp, header)
    write_faiss(merged, tmp / FAISS_FILE)
    write_faiss(clone_empty(first.faiss_index), tmp / TRAINED_FILE)
    tmp.rename(out)
    return Index.open(out)


class ShardedIndex:
    """Search several indexes of one encoder as one, with ``faiss.IndexShards`` (results merged by score).

    The shards' ids must be disjoint (build them with ``id_offset``); their records are looked up by id.
    """

    def __init__(self, index_dirs, threaded: bool = True):
        import faiss

        self.shards = [Index.open(d, use_gpu=False) for d in index_dirs]
        if not self.shards:
            raise IndexError_("no shards")
        first = self.shards[0]
        self.owner = {}
        for s in self.shards:
            if s.fingerprint != first.fingerprint or s.dim != first.dim:
                raise IndexError_(f"{s.dir} was built with another encoder or dimension than {first.dir}")
            for i in s.ids().tolist():
                if i in self.owner:
                    raise IndexError_(f"id {i} is in both {self.owner[i].dir} and {s.dir}; build shards with "
                                      "disjoint id_offset ranges (or merge them)")
                self.owner[i] = s
        self.index = faiss.IndexShards(first.dim, threaded, False)  # successive_ids=False: keep our ids
        for s in self.shards:
            set_search_params(s.faiss_index, s.params)
            self.index.add_shard(s.faiss_index)

    index_type = "sharded"  # index eval reports recall against exact search
    cache_dir = None  # no single directory for derived vectors: DBA is refused (merge the shards for it)

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def fingerprint(self) -> str:
        return self.shards[0].fingerprint

    @property
    def dir(self) -> Path:
        """A name for reports: the first shard's directory."""
        return self.shards[0].dir

    def ids(self) -> np.ndarray:
        return np.concatenate([s.ids() for s in self.shards])

    def vectors(self, ids=None) -> np.ndarray:
        if ids is None:
            return np.concatenate([s.vectors() for s in self.shards])
        ids = [int(i) for i in ids]
        out = np.empty((len(ids), self.dim), np.float32)
        for s in self.shards:
            mine = [n for n, i in enumerate(ids) if self.owner.get(i) is s]
            if mine:
                out[mine] = s.vectors([ids[n] for n in mine])
        if len(ids) and any(i not in self.owner for i in ids):
            raise IndexError_(f"no record with id {next(i for i in ids if i not in self.owner)} in these shards")
        return out

    def records(self) -> list[dict]:
        return sorted((r for s in self.shards for r in s.records()), key=lambda r: r["id"])

    def record(self, id: int) -> dict:
        owner = self.owner.get(int(id))
        if owner is None:
            raise IndexError_(f"no record with id {id} in these shards")
        return owner.record(int(id))

    def state(self) -> dict:
        return {"shards": [s.state() for s in self.shards]}

    def exact_scan(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shards[0].exact_scan(gallery, queries, k)

    def search_vectors(self, queries: np.ndarray, k: int = 10):
        """Merged top-k of every shard; lossy shards (IVF-PQ/SQ with ``rerank``) fetch ``k * rerank``
        candidates that :func:`indexer.index.rerank_exact` re-scores from the stored vectors, as one index does."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        params = self.shards[0].params
        rerank = int(params.rerank or 0) if params.index_type in RERANK_TYPES else 0
        scores, ids = self.index.search(q, int(k) * max(1, rerank))
        if rerank:
            scores, ids = rerank_exact(q, ids, int(k), self.vectors)
        return scores, ids

    def search(self, queries, k: int = 10, encoder=None, *, device=None, refine=None,
               exclude: list | None = None) -> list[list[Hit]]:
        """Top-k hits over all shards for features (Q, D) or images (embedded with the shards' encoder)."""
        feats = queries if isinstance(queries, np.ndarray) else self.shards[0].embed(
            queries if isinstance(queries, (list, tuple)) else [queries], encoder, device=device)
        return search_hits(self, feats, k, refine, exclude)
