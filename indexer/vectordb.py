"""Serving an index from a vector database: Qdrant, embedded (a local folder, for tests and one machine) or a
server / cluster (an ``http(s)://`` URL, sharded and replicated by Qdrant itself).

Why Qdrant rather than Milvus: the same client and API in both modes (``QdrantClient(path=...)`` runs in the
process with no server; ``QdrantClient(url=...)`` talks to a cluster), ids and JSON payloads stored with each
vector, collection-level metadata for the encoder fingerprint, and a pure-Python wheel with no native server
to start in tests (milvus-lite starts a local server process per file).

The index directory stays the source of truth and the manifest its commit point. A collection records the
index's encoder fingerprint and the manifest state it mirrors (a hash of the live ids); ``index add`` /
``index remove`` sync every published collection after their manifest commit, and opening a collection whose
recorded state differs from the manifest (a crash between the two) re-syncs it first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from indexer.backend import Hit, search_hits
from indexer.errors import EncoderMismatchError, IndexError_
from indexer.exact import ExactSearcher
from indexer.index import Index
from indexer.header import read_header

META = "ppssl"  # key of this project's entry in the collection metadata
BATCH = 512  # points per upsert


class VectorDBError(IndexError_):
    """The vector database cannot be used as asked (unreachable, foreign collection, missing client)."""


def _client(location: str):
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise VectorDBError("serving from Qdrant needs qdrant-client (pip install 'ppssl[vectordb]')") from None
    if str(location).startswith(("http://", "https://")):
        return QdrantClient(url=str(location))
    Path(location).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(location))


def manifest_state(index: Index) -> str:
    """What a collection must mirror: a hash of the index's live ids (an add or remove changes it)."""
    ids = np.ascontiguousarray(index.ids(), np.int64)
    return hashlib.sha256(ids.tobytes()).hexdigest()


def _meta(client, collection: str) -> dict:
    return dict((client.get_collection(collection).config.metadata or {}).get(META) or {})


def sync(index: Index, client, collection: str) -> tuple[int, int]:
    """Make ``collection`` hold exactly the index's records (vectors, path, label, sha256); returns
    ``(upserted, deleted)``. The recorded state is written last: a sync cut short is redone at next open."""
    from qdrant_client import models

    meta = _meta(client, collection)
    have: set[int] = set()
    offset = None
    while True:
        pts, offset = client.scroll(collection, limit=4096, offset=offset, with_payload=False, with_vectors=False)
        have.update(int(p.id) for p in pts)
        if offset is None:
            break
    recs = {int(r["id"]): r for r in index.records()}
    new = sorted(set(recs) - have)
    gone = sorted(have - set(recs))
    for s in range(0, len(new), BATCH):
        ids = new[s:s + BATCH]
        vecs = index.vectors(ids)
        client.upsert(collection, points=models.Batch(
            ids=ids, vectors=vecs.tolist(),
            payloads=[{"path": recs[i]["path"], "label": recs[i]["label"], "sha256": recs[i]["sha256"]}
                      for i in ids]))
    if gone:
        client.delete(collection, points_selector=models.PointIdsList(points=gone))
    meta["state"] = manifest_state(index)
    client.update_collection(collection, metadata={META: meta})
    return len(new), len(gone)


def publish(index_dir, location: str, collection: str | None = None) -> dict:
    """Publish the index at ``index_dir`` to ``collection`` at ``location`` (created if missing), and record
    the target in the index header so that ``index add``/``remove`` keep it in step."""
    from qdrant_client import models

    from indexer.writer import IndexWriter

    index = Index.open(index_dir, use_gpu=False)
    name = collection or index.dir.name
    client = _client(location)
    try:
        if client.collection_exists(name):
            fp = _meta(client, name).get("fingerprint")
            if fp != index.fingerprint:
                raise EncoderMismatchError(fp, index.fingerprint, f"publish into collection {name!r}")
        else:
            client.create_collection(name, vectors_config=models.VectorParams(size=index.dim,
                                                                              distance=models.Distance.DOT),
                                     metadata={META: {"fingerprint": index.fingerprint, "dim": index.dim,
                                                      "index_dir": str(index.dir), "state": None}})
        up, down = sync(index, client, name)
    finally:
        client.close()
    with IndexWriter(index.dir) as w:  # record the target (header written atomically under the writer lock)
        targets = [t for t in w.header.published if t != {"location": str(location), "collection": name}]
        w.header.published = targets + [{"location": str(location), "collection": name}]
        w.save()
    return {"collection": name, "location": str(location), "upserted": up, "deleted": down,
            "count": index.count}


def sync_published(index_dir) -> None:
    """After a manifest commit: bring every collection the index was published to up to date."""
    header = read_header(Path(index_dir))
    targets = header.published or []
    if not targets:
        return
    index = Index.open(index_dir, use_gpu=False)
    for t in targets:
        client = _client(t["location"])
        try:
            sync(index, client, t["collection"])
        finally:
            client.close()


class VectorDBIndex:
    """An index served from a Qdrant collection: a :class:`indexer.backend.SearchBackend` (DBA aside, which needs
    the local files), with the mirrored index directory's encoder, gallery files and header.

    Args:
        location: a folder (embedded Qdrant) or an ``http(s)://`` URL.
        collection: the collection name.
        index_dir: the index it mirrors (default: the one recorded in the collection); needed to embed query
            images with the recorded encoder and to repair a collection left behind by a crash.
    """

    def __init__(self, location: str, collection: str, index_dir=None):
        self.location, self.collection = str(location), collection
        self._client = _client(self.location)
        if not self._client.collection_exists(collection):
            self._client.close()
            raise VectorDBError(f"{location}: no collection {collection!r} (publish one with `ppssl index publish`)")
        meta = _meta(self._client, collection)
        self.fingerprint = meta.get("fingerprint")
        self.dim = int(meta.get("dim") or 0)
        index_dir = index_dir or meta.get("index_dir")
        self.index = Index.open(index_dir, use_gpu=False) if index_dir and Path(index_dir).is_dir() else None
        self.repaired = False
        self._exact = ExactSearcher()
        if self.index is not None:
            if self.index.fingerprint != self.fingerprint:
                raise EncoderMismatchError(self.fingerprint, self.index.fingerprint, f"serve {index_dir}")
            if meta.get("state") != manifest_state(self.index):  # a crash between manifest and database
                sync(self.index, self._client, collection)
                self.repaired = True

    cache_dir = None  # nothing derived is cached beside a database: DBA is refused (search the directory)
    index_type = "qdrant"  # approximate (HNSW inside Qdrant): index eval adds its recall against exact search

    @property
    def count(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    @property
    def dir(self) -> Path:
        """A name for reports: the collection under its location."""
        return Path(str(self.location).rstrip("/")) / self.collection

    def _points(self, with_vectors: bool):
        offset = None
        while True:
            pts, offset = self._client.scroll(self.collection, limit=4096, offset=offset, with_payload=True,
                                              with_vectors=with_vectors)
            yield from pts
            if offset is None:
                return

    def records(self) -> list[dict]:
        """``{id, path, label, sha256}`` of every point, by id (what :meth:`Index.records` returns)."""
        return sorted(({"id": int(p.id), "path": p.payload.get("path"), "label": p.payload.get("label"),
                        "sha256": p.payload.get("sha256"), "added_at": None} for p in self._points(False)),
                      key=lambda r: r["id"])

    def vectors(self, ids=None) -> np.ndarray:
        """Stored vectors, by id order (all) or in the order of ``ids``."""
        if ids is None:
            pts = sorted(self._points(True), key=lambda p: int(p.id))
            return np.asarray([p.vector for p in pts], np.float32).reshape(-1, self.dim)
        pts = {int(p.id): p.vector for p in self._client.retrieve(self.collection, ids=[int(i) for i in ids],
                                                                   with_vectors=True)}
        return np.asarray([pts[int(i)] for i in ids], np.float32).reshape(-1, self.dim)

    def ids(self) -> np.ndarray:
        return np.asarray(sorted(int(p.id) for p in self._points(False)), np.int64)

    def record(self, id: int) -> dict:
        pts = self._client.retrieve(self.collection, ids=[int(id)], with_payload=True)
        if not pts:
            raise VectorDBError(f"no point with id {id} in {self.dir}")
        p = pts[0]
        return {"id": int(p.id), "path": p.payload.get("path"), "label": p.payload.get("label"),
                "sha256": p.payload.get("sha256"), "added_at": None}

    def state(self) -> dict:
        return {"collection": self.collection, "state": _meta(self._client, self.collection).get("state")}

    def exact_scan(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._exact.search(gallery, queries, k)

    def close(self) -> None:
        self._exact.close()
        self._client.close()

    def check_encoder(self, encoder) -> None:
        from indexer.encoders import feature_fingerprint

        from indexer.precision import encoder_part

        fp = feature_fingerprint(encoder)
        if fp != encoder_part(self.fingerprint):
            raise EncoderMismatchError(self.fingerprint, fp, "search this collection")

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), ids (Q, k))``, id -1 where fewer than k points exist (as :meth:`Index.search_vectors`)."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        scores = np.full((len(q), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r, row in enumerate(q):
            pts = self._client.query_points(self.collection, query=row.tolist(), limit=k).points
            for j, p in enumerate(pts):
                scores[r, j], ids[r, j] = p.score, int(p.id)
        return scores, ids

    def search(self, queries, k: int = 10, encoder=None, *, device=None, refine=None,
               exclude: list | None = None) -> list[list[Hit]]:
        """Top-k hits for features (Q, D) or images (embedded with the mirrored index's encoder), re-ranked by
        ``refine`` (alpha-QE or k-reciprocal; DBA needs the local index's files) and without ``exclude`` ids."""
        if isinstance(queries, np.ndarray):
            feats = queries
        else:
            if encoder is not None:
                self.check_encoder(encoder)
            feats = self._local("embedding query images").embed(
                queries if isinstance(queries, (list, tuple)) else [queries], encoder, device=device)

        def payloads(found: np.ndarray) -> tuple[list, list]:
            pts = {int(p.id): p.payload for p in self._client.retrieve(self.collection, ids=found.tolist(),
                                                                         with_payload=True)}
            return [pts[i].get("path") for i in found.tolist()], [pts[i].get("label") for i in found.tolist()]

        return search_hits(self, feats, k, refine, exclude, lookup=payloads)

    # --- the mirrored index directory: encoder, gallery files, header -----------------------------------
    def _local(self, what: str) -> Index:
        if self.index is None:
            raise VectorDBError(f"{what} needs the index directory this collection mirrors (index_dir=)")
        return self.index

    @property
    def header(self) -> dict:
        return self._local("the index header").header

    @property
    def root(self) -> str | None:
        return self._local("the gallery root").root

    @property
    def encoder_ref(self) -> str | None:
        return self._local("the encoder").encoder_ref

    @property
    def adapted(self) -> dict | None:
        return self._local("the retrieval head").adapted

    @property
    def precision(self) -> str:
        return self._local("the precision").precision

    def int8_spec(self):
        return self._local("the int8 model").int8_spec()

    def labels(self) -> list[str | None]:
        return [r["label"] for r in self.records()]

    def resolve(self, path):
        return self._local("a gallery file").resolve(path)

    def load_encoder(self):
        return self._local("the encoder").load_encoder()

    def embed(self, images, encoder=None, **kwargs):
        return self._local("embedding images").embed(images, encoder, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
