"""Writing indexes: build (resumable), add, remove, rebuild, and adding precomputed vectors.

Every change holds the writer lock, commits to the manifest first (the commit point), then rewrites
``index.faiss`` and ``header.json`` atomically. A build commits every ``chunk_size`` images, so a killed
build keeps what it embedded and a rerun continues with the rest (files already in the manifest with the
same content are skipped; a file whose content changed is replaced under a new id).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer import precision as precisions
from indexer.adapt import base_fingerprint, without_head
from indexer.encoders import EncoderSpec, load_recorded_encoder, resolve_encoder
from indexer.errors import EncoderMismatchError, IndexError_
from indexer.faiss_index import INDEX_TYPES, IVF_TYPES, IndexParams, add, default_nprobe, remove, resolve_params
from indexer.ingest import ingest
from indexer.manifest import now
from indexer.options import EmbedOptions, Source
from indexer.sources import Item, dataset_items, folder_label, manifest_key, scan_folder
from indexer.header import HEADER_FILE, EncoderRecord, IndexHeader, read_header, write_header
from indexer.store import FAISS_FILE, TRAINED_FILE, clone_empty, read_faiss, write_faiss
from indexer.writer import BuildReport, IndexWriter, storage_errors

__all__ = ["BuildReport", "build_index", "resume_index", "rebuild_index", "add_to_index", "remove_from_index",
           "create_index", "add_vectors"]


def _nlist(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


# --- public API --------------------------------------------------------------------------------------

def _new_header(*, dim: int, fingerprint: str, weights_fp: str | None, spec: EncoderSpec | None,
                params: IndexParams, root: str | None, source: dict, fixed_training: bool = False) -> IndexHeader:
    return IndexHeader(
        encoder=EncoderRecord(fingerprint, weights_fp, spec.to_dict() if spec else None,
                              spec.describe() if spec else None),
        dim=int(dim), index_type=_concrete_type(params, dim), requested=params.to_dict(), params=params.to_dict(),
        root=root, source=source, fixed_training=fixed_training,
        label_rule="parent" if "dataset" in source else "top",  # labels of files added later (see sources)
        created=now(), updated=now())


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


@storage_errors
def build_index(out_dir, source: Source | None = None, encoder=None, *, embed: EmbedOptions = EmbedOptions(),
                index_type=None, params=None, rebuild=False, trained_from=None, id_offset=0, adapt=None,
                adapt_settings=None, precision=None) -> BuildReport:
    """Build (or resume, or extend, or rebuild) a gallery index: what ``ppssl index build`` does.

    A new ``out_dir`` is created (:func:`_create_writer`); an existing one is opened (:func:`_open_writer`),
    and then resumed from its recorded sources when none are given, extended with the given ones, and/or
    rebuilt from its stored vectors. :func:`resume_index` and :func:`rebuild_index` name the last two.

    Args:
        out_dir: the index directory (created; an existing index is resumed / extended).
        source: the photos to index (:class:`Source`: a folder, or a dataset split; optionally one shard of it).
            None for an existing index: its recorded source (a resumed build), or none with ``rebuild``.
        encoder: an engine ``Encoder``, an :class:`EncoderSpec` (``EncoderSpec.parse(name, weights, pooling,
            input_size, view)`` for a backbone name with options), or a checkpoint directory / backbone name.
            ``None`` resumes with the recorded encoder.
        embed: how to embed (:class:`EmbedOptions`: batch size, workers, device, AMP, progress callback, an
            embedder elsewhere such as ``indexer.ray_embed.ray_embedder``, images per committed chunk).
        index_type: "flat" (exact, default), "ivf", "ivfpq", "hnsw", or "auto" (flat up to 100k images).
        params: :class:`IndexParams` overrides (nlist, nprobe, pq_m, hnsw_m, ef_search, ...).
        rebuild: recreate the FAISS index from the stored vectors (new type/params, retrained, vector file
            compacted) without re-embedding; new files, if a source is given, are added first.
        trained_from: an IVF index (dir or .faiss) whose training this index reuses (shards to merge).
        id_offset: first id minus one, for shards searched together without merging (disjoint ids).
        adapt: fit the unsupervised retrieval head on the gallery's vectors and search in its space
            (:mod:`indexer.adapt`): None = when the gallery has at least ``adapt.MIN_GALLERY`` images and the
            encoder has no head of its own; True = always (unless the encoder has a head); False = never
            (with ``rebuild``, an adapted index drops its head). The head is fitted once, when the build
            completes; later builds, adds and removes keep it, ``rebuild`` refits it.
        adapt_settings: :class:`indexer.adapt.AdaptSettings` (default: the recipe's head settings).
        precision: ``fp32``, ``int8`` or ``auto`` (:mod:`indexer.precision`), chosen when the index is created
            (default auto) and fixed after: an existing index keeps its own; asking another is refused.
    """
    t0 = time.time()
    out = Path(out_dir).expanduser().resolve()
    if source is not None:
        source.validate()
    exists = (out / HEADER_FILE).is_file()
    if not exists and source is None:
        raise IndexError_(f"{out}: no index there yet; give --images DIR or --dataset NAME --root DIR")
    if (not exists and source.images is not None
            and next((p for p in Path(source.images).rglob("*") if p.is_file()), None) is None):
        raise IndexError_(f"{source.images}: no files to index (the folder is empty)")  # not an empty index, silently
    enc = spec = fp = None
    if encoder is not None:
        enc, spec, fp = resolve_encoder(encoder)
    if exists:
        w = _open_writer(out, fp, index_type, params, rebuild)
        if enc is not None and w.header.adapt and fp == w.header.encoder.fingerprint:
            enc = without_head(enc)  # the adapted index's own query encoder: store what precedes its head
    else:
        if enc is None:
            raise IndexError_("an encoder is required to create an index (--checkpoint or --encoder)")
        w = _create_writer(out, enc, spec, fp, source, index_type=index_type, params=params,
                           trained_from=trained_from, id_offset=id_offset)
    report = BuildReport()
    try:
        if exists and source is None and not rebuild:  # resume: the recorded sources
            source = Source.recorded(w.header.source)
        if exists:
            _check_precision(w.header, precision)
        if source is not None:
            items = _source_items(w.header.root, source)
            embed_enc = enc if enc is not None else load_recorded_encoder(w.header)
            if not exists and w.header.precision is None:
                w.header.precision = _choose_precision(w, embed_enc, items, precision, embed, source.shard)
                write_header(w.dir, w.header)  # before any vector: a resumed build embeds at the same precision
            report.precision = {k: v for k, v in w.header.precision.items() if k != "calibration"}
            if "calibration" in w.header.precision:
                report.precision["calibration_count"] = w.header.precision["calibration"]["count"]
            ingest(w, embed_enc, items, report, embed=embed, mode="build",
                   precision=precisions.spec(w.dir, w.header))
        if rebuild:
            w.compact()
        report.adapt = _adapt_step(w, enc, adapt, adapt_settings, rebuild)
        retrain = not w.header.fixed_training
        w.rebuild_faiss(retrain=retrain)
        w.save(state="complete", persist_trained=retrain)
        report.seconds = time.time() - t0
        w.write_report(report)
    finally:
        w.close()
    return report


def _check_precision(header: IndexHeader, requested: str | None) -> None:
    """An existing index keeps the precision it was created with."""
    if requested not in (None, "auto") and requested != precisions.mode(header):
        raise IndexError_(f"this index was built at {precisions.mode(header)}; its precision is fixed when it is "
                          f"created (asked for {requested}): build a new index to change it")


def _choose_precision(w: IndexWriter, enc, items, requested, embed: EmbedOptions, shard) -> dict:
    """The precision of a new index (:func:`indexer.precision.choose`), fp32 where int8 cannot apply."""
    requested = requested or "auto"
    if embed.embedder is not None and requested != "fp32":
        if requested == "int8":
            raise IndexError_("--precision int8 is not available with --ray (its workers embed at fp32)")
        return {"mode": "fp32", "requested": requested, "reason": "embedding runs elsewhere (--ray), at fp32"}
    if shard and requested == "auto":  # an explicit int8 shard is its own space: merging it is refused
        return {"mode": "fp32", "requested": requested,
                "reason": "a shard stays fp32 by default so that shards can be merged (each int8 model is "
                          "calibrated on its own photos)"}
    return precisions.choose(w.dir, enc, items, requested, device=embed.device)


def _adapt_step(w: IndexWriter, enc, want, settings, rebuild: bool) -> dict | None:
    """Fit, keep, refit or drop the index's head (see ``adapt`` of :func:`build_index`); what was done."""
    from indexer import adapt as adapting

    adapted = w.header.adapt
    if want is False:
        if adapted and not rebuild:
            raise IndexError_(f"{w.dir} is adapted; pass --rebuild with --no-adapt to drop its head")
        if adapted:
            adapting.drop(w)
        w.header.adapt_skipped = None
        return None
    if adapted and not rebuild:
        return None  # fixed until a rebuild refits it
    base = enc if enc is not None else load_recorded_encoder(w.header)
    n = w.manifest.count()
    if adapting.has_head(base):
        reason = "the encoder already ends in a retrieval head (a recipe checkpoint): not adapted twice"
    elif w.header.fixed_training or (w.header.source or {}).get("shard"):
        reason = "a shard is kept in the encoder's space so that shards can be merged; adapt the merged index"
    elif want is None and n < adapting.MIN_GALLERY:
        reason = (f"{n} images: galleries under {adapting.MIN_GALLERY} are not adapted by default (the head lost "
                  "rank-1 on smaller validation galleries, benchmarks/results/adapt.md); --adapt forces it")
    elif n < 3:
        reason = f"{n} images: too few to fit a head"
    else:
        return adapting.adapt(w, base, settings)
    if adapted:
        adapting.drop(w)
    w.header.adapt_skipped = reason
    return {"skipped": reason}


def resume_index(index_dir, embed: EmbedOptions = EmbedOptions()) -> BuildReport:
    """Finish an interrupted build from the sources and encoder recorded in the index, embedding as ``embed``
    says (:class:`EmbedOptions`)."""
    return build_index(index_dir, embed=embed)


def rebuild_index(index_dir, index_type: str | None = None, params=None) -> BuildReport:
    """Recreate an index's FAISS structure from its stored vectors (new type or parameters, retrained,
    vector file compacted); nothing is re-embedded."""
    return build_index(index_dir, index_type=index_type, params=params, rebuild=True)


def _open_writer(out: Path, fp: str | None, index_type, params, rebuild: bool) -> IndexWriter:
    """The writer of an existing index, after checking the encoder and the requested parameters."""
    header = read_header(out)
    if fp is not None and fp not in (header.encoder.fingerprint, base_fingerprint(header)):
        raise EncoderMismatchError(header.encoder.fingerprint, fp, "extend this index")
    requested = _requested_params(index_type, params, header.requested)
    if requested.to_dict() != IndexParams.from_dict(header.requested or {}).to_dict() and not rebuild:
        raise IndexError_(f"{out} is a {header.index_type} index with parameters {header.requested}; "
                          "pass --rebuild to rebuild it with new ones from the stored vectors (no re-embedding)")
    w = IndexWriter(out)
    w.header.requested = requested.to_dict()
    return w


def _create_writer(out: Path, enc, spec, fp: str, source: Source, *, index_type, params, trained_from,
                   id_offset: int) -> IndexWriter:
    """Create the index directory and its header (sources, encoder, requested parameters); its writer."""
    requested = _requested_params(index_type, params)
    gallery_root = str(Path(source.images if source.images is not None else source.root).expanduser().resolve())
    recorded = ({"images": gallery_root} if source.images is not None else
                {"dataset": source.dataset, "root": gallery_root, "split": source.split})
    if source.shard:
        recorded["shard"] = list(source.shard)
    out.mkdir(parents=True, exist_ok=True)
    if trained_from is not None:
        requested = _install_trained(out, trained_from, requested, enc.feature_dim)
    header = _new_header(dim=enc.feature_dim, fingerprint=fp, weights_fp=fp.split("|")[0], spec=spec,
                         params=requested, root=gallery_root, source=recorded, fixed_training=trained_from is not None)
    return IndexWriter(out, header=header, id_offset=id_offset)


def _source_items(root_dir: str, source: Source) -> list[Item]:
    """The files of a folder or a dataset split (every n-th one for a shard), keyed under the gallery root."""
    if source.images is not None:
        items = scan_folder(source.images, root_dir)
    else:
        items = [Item(it.path, manifest_key(it.path, root_dir), it.label)
                 for it in dataset_items(source.dataset, source.root, source.split)]
    if source.shard:
        i, n = source.shard
        items = items[i::n]
    return items


@storage_errors
def add_to_index(index_dir, paths, *, encoder=None, labels=None, embed: EmbedOptions = EmbedOptions(),
                 precision=None) -> BuildReport:
    """Add files (or every file under folders) to an index without rebuilding it.

    Ids of existing items never change; a file already present with the same content is a no-op; a file
    whose content changed replaces its old record. Files must lie under the index's gallery root. Labels
    are the parent folder names unless ``labels`` (one per path, or one for all) is given. IVF indexes are
    not retrained (``build_index(..., rebuild=True)`` retrains). ``encoder``: as :func:`build_index`'s (None:
    the recorded one); ``embed``: how to embed (:class:`EmbedOptions`).
    """
    t0 = time.time()
    index_dir = Path(index_dir).expanduser().resolve()
    header = read_header(index_dir)
    _check_precision(header, precision)
    if encoder is None:
        enc = load_recorded_encoder(header)  # the building encoder: it fills the stored space
    else:
        enc, _spec, fp = resolve_encoder(encoder)
        if fp == header.encoder.fingerprint and header.adapt:
            enc = without_head(enc)  # the adapted index's own query encoder: store what precedes its head
        elif fp != base_fingerprint(header):
            raise EncoderMismatchError(header.encoder.fingerprint, fp, "add to this index")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    root = header.root
    rule = header.label_rule
    if isinstance(labels, str) or labels is None:
        labels = [labels] * len(paths)
    if len(labels) != len(paths):
        raise IndexError_(f"{len(labels)} labels for {len(paths)} paths")
    items: list[Item] = []
    outside = []
    for p, lab in zip(paths, labels):
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
    with IndexWriter(index_dir) as w:
        w.load_faiss()  # before any commit: new rows are added to it incrementally
        ingest(w, enc, items, report, embed=embed, mode="add", precision=precisions.spec(w.dir, w.header))
        w.save()
        report.seconds = time.time() - t0
        w.write_report(report)
    _sync_published(index_dir)
    return report


def _sync_published(index_dir) -> None:
    """Bring the vector-database copies of the index up to date after a manifest commit. A failure leaves the
    local index complete and is repaired when the collection is next opened (indexer.vectordb)."""
    import logging

    if not read_header(Path(index_dir)).published:
        return
    try:
        from indexer.vectordb import sync_published

        sync_published(index_dir)
    except Exception as exc:  # noqa: BLE001 - the manifest is the commit point; the copy catches up later
        logging.getLogger(__name__).warning("vector database not updated (%s); it is re-synced when next opened",
                                            exc)


@storage_errors
def remove_from_index(index_dir, ids=None, paths=None) -> int:
    """Remove records by id and/or path; returns how many were removed. Other ids are unchanged.

    Flat and IVF indexes remove in place; HNSW, which cannot remove, is rebuilt from the stored vectors
    (no re-embedding). Unknown ids and paths are ignored.
    """
    index_dir = Path(index_dir).expanduser().resolve()
    with IndexWriter(index_dir) as w:
        want = set(int(i) for i in (ids or []))
        if paths:
            known = w.manifest.by_path()
            root = w.header.root
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
            if w.faiss_dirty or (w.header.counts or {}).get("records") != w.manifest.count():
                w.save()
            return 0
        index = w.load_faiss()
        n = w.manifest.delete_ids(todo)  # commit point
        if w.header.index_type == "hnsw":
            w.rebuild_faiss(retrain=False)
        else:
            remove(index, todo)
            w.faiss_dirty = True
        w.save()
    _sync_published(index_dir)
    return n


@storage_errors
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
    with IndexWriter(out, header=header, id_offset=id_offset) as w:
        w.save(state="complete")


@storage_errors
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
    with IndexWriter(index_dir) as w:
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
        if retrain or (w.header.index_type in IVF_TYPES and not index.is_trained):
            w.rebuild_faiss(retrain=not w.header.fixed_training)
            w.save(state="complete", persist_trained=True)
        else:
            add(index, vectors[keep], np.asarray(new_ids, np.int64))
            w.faiss_dirty = True
            w.save(state="complete")
        return new_ids
