"""Reading and searching an index directory: :class:`Index` (an :class:`indexer.backend.SearchBackend`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from indexer.backend import Hit, search_hits
from indexer.encoders import feature_fingerprint, load_recorded_encoder
from indexer.errors import EncoderMismatchError, IndexError_, PathOutsideRootError
from indexer.exact import ExactSearcher, flat_rows
from indexer.faiss_index import IVF_TYPES, RERANK_TYPES, IndexParams, default_nprobe, maybe_to_gpu, set_search_params
from indexer.manifest import MANIFEST_FILE, Manifest, Record
from indexer.header import IndexHeader, read_header
from indexer.store import consistent_faiss
from indexer.vectors import read_rows


def rerank_exact(q: np.ndarray, ids: np.ndarray, k: int, fetch) -> tuple[np.ndarray, np.ndarray]:
    """Re-score a lossy index's candidates ``ids`` (Q, C; -1 = none) exactly and keep the best ``k``.

    Scores are float64 dot products of the queries with ``fetch(unique ids)`` (float32 vectors, as stored),
    as the exact search scores its winners. Returns ``(scores (Q, k) float32, ids (Q, k))``, -1 padded.
    """
    valid = ids >= 0
    uniq = np.unique(ids[valid])
    exact = np.full(ids.shape, -np.inf)
    if len(uniq):
        vecs = np.asarray(fetch(uniq), dtype=np.float64)
        pos = np.searchsorted(uniq, np.where(valid, ids, uniq[0]))
        exact = np.einsum("qd,qcd->qc", q.astype(np.float64), vecs[pos])
        exact[~valid] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(exact, order, axis=1)
    out_ids = np.where(np.isfinite(top), np.take_along_axis(ids, order, axis=1), -1)
    out_scores = np.where(np.isfinite(top), top, -np.finfo(np.float32).max).astype(np.float32)
    return out_scores, out_ids.astype(np.int64)


class Index:
    """A read-only, consistent view of an index directory (the manifest snapshot at open time).

    Open with :meth:`open`. If the FAISS file disagrees with the manifest (a writer was killed between
    the two), the FAISS index is rebuilt in memory from the stored vectors and :attr:`repaired` is True.
    """

    def __init__(self, index_dir: Path, header: IndexHeader, rows: list[Record], vec_rows: int, vectors_file: str,
                 faiss_index, repaired: bool, use_gpu: bool | None, project=None):
        self.dir = index_dir
        self.header = header
        self._project = project  # stored -> searched space (an adapted index's head), or None
        self._rows = rows
        self._pos = {r.id: i for i, r in enumerate(rows)}
        self._vec_committed = vec_rows
        self._vec_path = index_dir / vectors_file
        self._cpu_index = faiss_index
        self.repaired = repaired
        self.params = IndexParams.from_dict(header.params or {"index_type": header.index_type})
        if self.params.index_type in IVF_TYPES and not self.params.nprobe:
            import faiss

            self.params.nprobe = default_nprobe(int(faiss.extract_index_ivf(faiss_index).nlist))
        set_search_params(faiss_index, self.params)
        self._search_index = maybe_to_gpu(faiss_index, self.params, use_gpu) if rows else faiss_index
        self._flat = None  # (vectors, ids) of a CPU flat index: searched by indexer.exact, not FAISS
        self._exact = ExactSearcher()  # this index's own scan threads (none shared with other indexes)
        if self._search_index is faiss_index:
            try:
                self._flat = flat_rows(faiss_index)
            except TypeError:
                pass
        self._encoder = None
        self._meta = None  # (ids, paths, labels) arrays for building hits, made on the first search
        self._verified = None  # the last encoder object that passed check_encoder

    @classmethod
    def open(cls, index_dir, *, use_gpu: bool | None = None, plain: bool = False) -> "Index":
        """Open an index directory; validates header, manifest, vectors and FAISS file against each other.

        Args:
            use_gpu: None = search on all GPUs when FAISS has them; False = CPU; True = require a GPU.
            plain: for an adapted index (indexer.adapt), a view of the encoder's own features without the
                head: exact search in the stored space, queries embedded by the building encoder (to compare
                adapted with plain over the same photos). Same as the normal view for other indexes.
        """
        from indexer.adapt import projector

        index_dir = Path(index_dir).expanduser().resolve()
        header = read_header(index_dir)
        manifest = Manifest(index_dir / MANIFEST_FILE)
        try:
            rows, vec_rows, vectors_file = manifest.snapshot()
        finally:
            manifest.close()
        if plain and header.adapt:
            header = plain_header(header)
        project = projector(index_dir, header)
        stored_dim = header.stored_dim
        vec_path = index_dir / vectors_file
        ids = np.asarray([r.id for r in rows], dtype=np.int64)
        row_idx = np.asarray([r.vec_row for r in rows], dtype=np.int64)
        if rows:  # cheap size check now; the vectors themselves are read only when needed
            read_rows(vec_path, stored_dim, vec_rows, row_idx[:1])

        def searched():
            v = read_rows(vec_path, stored_dim, vec_rows, row_idx)
            return v if project is None else project(v)

        if header.plain_view:
            from indexer.store import faiss_from_vectors

            index, repaired = faiss_from_vectors(IndexParams(index_type="flat"), stored_dim, searched(), ids)[0], False
        else:
            index, repaired = consistent_faiss(index_dir, header, ids, searched)
        if repaired and rows:
            print(f"note: {index_dir}/index.faiss lagged its manifest (interrupted write); rebuilt it in memory "
                  "from the stored vectors. Rerun the build (or any add) to persist the repair.", file=sys.stderr)
        return cls(index_dir, header, rows, vec_rows, vectors_file, index, repaired, use_gpu, project)

    # --- description ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.header.dim)

    @property
    def stored_dim(self) -> int:
        """Width of the stored vectors (the encoder's own features; wider than :attr:`dim` when adapted)."""
        return self.header.stored_dim

    @property
    def adapted(self) -> dict | None:
        """The head's record (``header.adapt``) when this index searches an adapted space, else None."""
        return self.header.adapt if self._project is not None else None

    @property
    def count(self) -> int:
        return len(self._rows)

    @property
    def index_type(self) -> str:
        return self.header.index_type

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the searched space: the building encoder's ``<weights sha256>|pooling=..|input=..``,
        plus ``|int8=<model sha256>`` for an int8 index (indexer.precision): vectors of two spaces never mix."""
        from indexer.precision import space_fingerprint

        return space_fingerprint(self.header)

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8``: how this index's photos and queries are embedded (indexer.precision)."""
        from indexer.precision import mode

        return mode(self.header)

    @property
    def encoder_ref(self) -> str | None:
        """The checkpoint path or backbone spec (``name:weights:pooling@size``) recorded at build."""
        return self.header.encoder.ref

    @property
    def root(self) -> str | None:
        return self.header.root

    @property
    def faiss_index(self):
        """The CPU FAISS index (for advanced use; do not modify)."""
        return self._cpu_index

    # --- records ----------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """Manifest rows by id: ``{id, path, label, sha256, added_at}``."""
        return [r.as_dict() for r in self._rows]

    def record(self, id: int) -> dict:
        try:
            return self._rows[self._pos[int(id)]].as_dict()
        except KeyError:
            raise IndexError_(f"no record with id {id} in {self.dir}") from None

    def ids(self) -> np.ndarray:
        return np.asarray([r.id for r in self._rows], dtype=np.int64)

    def labels(self) -> list[str | None]:
        return [r.label for r in self._rows]

    def vectors(self, ids=None) -> np.ndarray:
        """Float32 vectors in the searched space (exact, also for PQ indexes; through the head of an adapted
        index), by id order or in the order of ``ids``."""
        v = self.stored_vectors(ids)
        return v if self._project is None else self._project(v)

    def stored_vectors(self, ids=None) -> np.ndarray:
        """The stored float32 vectors (the encoder's own features), by id order or in the order of ``ids``."""
        if ids is None:
            rows = [r.vec_row for r in self._rows]
        else:
            try:
                rows = [self._rows[self._pos[int(i)]].vec_row for i in ids]
            except KeyError as exc:
                raise IndexError_(f"no record with id {exc.args[0]} in {self.dir}") from None
        return read_rows(self._vec_path, self.stored_dim, self._vec_committed, np.asarray(rows, dtype=np.int64))

    def resolve(self, path: str | os.PathLike) -> Path:
        """Absolute path of a gallery file; refuses anything outside the gallery root (``..``, absolute
        paths elsewhere, symlinks pointing out). Serve files only through this."""
        if not self.root:
            raise PathOutsideRootError(f"{self.dir} records no gallery root; refusing to resolve {path}")
        root = Path(os.path.realpath(self.root))
        p = Path(path)
        target = Path(os.path.realpath(p if p.is_absolute() else root / p))
        try:
            inside = os.path.commonpath([str(target), str(root)]) == str(root)
        except ValueError:
            inside = False
        if not inside:
            raise PathOutsideRootError(f"{path} resolves outside the gallery root {self.root}")
        return target

    # --- encoder ----------------------------------------------------------------------------------
    def load_encoder(self):
        """The query encoder (fingerprint verified; cached): the one recorded in the header, with the head of an
        adapted index (its ``adapter/`` checkpoint)."""
        if self._encoder is None:
            if self._project is not None:
                from indexer.adapt import adapter_encoder

                self._encoder = adapter_encoder(self.dir, self.header)
            else:
                self._encoder = load_recorded_encoder(self.header)
            from indexer.precision import bind

            bind(self.dir, self.header, self._encoder)  # every caller of this encoder embeds at our precision
        return self._encoder

    def check_encoder(self, encoder) -> None:
        """Raise :class:`EncoderMismatchError` (naming both fingerprints) unless ``encoder`` built this index."""
        key = (encoder.config.pooling, encoder.config.input_size)
        if self._verified is not None and self._verified[0] is encoder and self._verified[1] == key:
            return  # hashing large weights on every query would dominate search time
        fp = feature_fingerprint(encoder)
        if fp != self.header.encoder.fingerprint:
            raise EncoderMismatchError(self.header.encoder.fingerprint, fp)
        self._verified = (encoder, key)

    def embed(self, images, encoder=None, *, device=None, batch_size: int = 32,
              precision: str | None = None) -> np.ndarray:
        """Embed PIL images or paths with ``encoder`` (checked) or the recorded encoder, at the index's precision
        (``precision`` other than the index's or ``auto`` is refused)."""
        from indexer.precision import check_query, spec
        from indexer.sources import embed_images

        check_query(self.header, precision)
        if encoder is None:
            encoder = self.load_encoder()
        else:
            self.check_encoder(encoder)
        return embed_images(encoder, list(images), batch_size=batch_size, device=device,
                            precision=spec(self.dir, self.header) or "fp32")

    def int8_spec(self):
        """The index's int8 model (``engine.ort.Int8Spec``), or None for an fp32 index."""
        from indexer.precision import spec

        return spec(self.dir, self.header)

    # --- search -----------------------------------------------------------------------------------
    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None,
                          rerank: int | None = None, threads: int | None = None) -> None:
        """Change this open index's query-time settings (IVF cells probed, HNSW efSearch, re-rank depth,
        threads of the exact scan of a flat index)."""
        if threads is not None:
            self._exact.close()
            self._exact = ExactSearcher(threads)
        if rerank is not None:
            self.params.rerank = int(rerank)
        if nprobe is not None:
            self.params.nprobe = int(nprobe)
        if ef_search is not None:
            self.params.ef_search = int(ef_search)
        if nprobe is not None or ef_search is not None:
            set_search_params(self._search_index, self.params)

    @property
    def cache_dir(self) -> Path:
        """Derived vectors (DBA) are cached in the index directory, stamped with :meth:`state`."""
        return self.dir

    def state(self) -> dict:
        """The vector file, its committed rows and the searched space (an adapted index's head changes the
        vectors, not the vector file)."""
        return {"vectors": self._vec_path.name, "vec_rows": int(self._vec_committed), "space": self.fingerprint}

    def exact_scan(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over ``gallery`` rows with this index's own scan threads."""
        return self._exact.search(gallery, queries, k)

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: ``(scores (Q, k), ids (Q, k))``, id -1 where fewer than k items exist.

        A flat index on the CPU is searched by :func:`indexer.exact.exact_search` over FAISS's own stored
        vectors (the same neighbours, equal scores in id-insertion order); other types by FAISS, and a lossy
        one with ``rerank`` set fetches ``k * rerank`` candidates that :func:`rerank_exact` re-scores."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise IndexError_(f"query features have shape {q.shape}; this index holds dimension {self.dim}")
        if self.count == 0 or k <= 0 or len(q) == 0:
            return np.zeros((len(q), max(k, 0)), np.float32), np.full((len(q), max(k, 0)), -1, np.int64)
        if self._flat is not None:  # same neighbours as FAISS, 2-10x faster (benchmarks/results/search.md)
            xb, id_map = self._flat
            scores, rows = self._exact.search(xb, q, int(k))
            ids = rows if id_map is None else np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)
            return scores, ids
        rerank = int(self.params.rerank or 0) if self.params.index_type in RERANK_TYPES else 0
        scores, ids = self._search_index.search(q, int(k) * max(1, rerank))
        if rerank:
            scores, ids = rerank_exact(q, ids, int(k), self.vectors)
        return scores, ids

    def search(self, queries, k: int = 10, encoder=None, *, device=None, refine=None,
               exclude: list | None = None, precision: str | None = None) -> list[list[Hit]]:
        """Top-k gallery items for each query.

        Args:
            queries: float32 (Q, D) L2-normalised features, or a list of PIL images / image paths (embedded
                with ``encoder`` if given — refused unless it is the index's encoder — else the recorded one).
            k: results per query (fewer when the gallery is smaller).
            refine: an :class:`indexer.refine.Refine` (alpha-QE, DBA, k-reciprocal); None = plain search.
            exclude: per query, ids to leave out of its results (e.g. its own record).
            precision: of embedded queries: the index's own (None/``auto``) or refused (indexer.precision).
        """
        if isinstance(queries, np.ndarray):
            feats = queries
        else:
            if isinstance(queries, (str, os.PathLike)) or hasattr(queries, "size") and hasattr(queries, "mode"):
                queries = [queries]
            feats = self.embed(queries, encoder, device=device, precision=precision)
        return search_hits(self, feats, k, refine, exclude, lookup=self._paths_labels)

    def _paths_labels(self, found: np.ndarray) -> tuple[list, list]:
        """Paths and labels of sorted unique live ids, gathered from arrays built once per snapshot."""
        if self._meta is None:
            self._meta = (np.asarray([r.id for r in self._rows], np.int64),
                          np.asarray([r.path for r in self._rows], dtype=object),
                          np.asarray([r.label for r in self._rows], dtype=object))
        ids, paths, labels = self._meta
        at = np.searchsorted(ids, found)
        return paths[at].tolist(), labels[at].tolist()

    def __repr__(self) -> str:
        return f"Index({str(self.dir)!r}, {self.count} items, {self.index_type}, dim {self.dim})"


def plain_header(header: IndexHeader) -> IndexHeader:
    """The header of an adapted index's plain view: its stored space, exact search, the building encoder."""
    h = header.copy()
    info, h.adapt = h.adapt, None
    h.dim = int(info["stored_dim"])
    h.encoder.fingerprint = info["base_fingerprint"]
    h.index_type, h.params, h.plain_view = "flat", {"index_type": "flat"}, True
    return h
