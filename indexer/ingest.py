"""Embedding files into an open index: skip what is already there, commit chunk by chunk, keep FAISS in step."""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

from indexer.errors import EncoderMismatchError, IndexError_
from indexer.faiss_index import IVF_TYPES, add, remove
from indexer.options import EmbedOptions
from indexer.sources import Item, embed_items, sha256_file
from indexer.store import FAISS_FILE
from indexer.writer import BuildReport, IndexWriter


def _partition(w: IndexWriter, items: list[Item], report: BuildReport):
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


#: What :func:`ingest` does with the index's FAISS structure as it commits chunks:
#: "build" (``build_index``, new or resumed) adds nothing incrementally: it rebuilds FAISS from the stored vectors,
#: retrained, and writes it at doubling counts (the first chunk, then whenever the count has doubled: all these
#: checkpoints cost at most two final writes), so a killed build leaves a searchable index; the caller builds the
#: final one. Too few images yet to train the index type: no checkpoint, the manifest holds the work.
#: "add" (``add_to_index``) adds each chunk's vectors to the loaded ``w.faiss`` in place, after removing the rows
#: they replace; an HNSW index with replacements is rebuilt from the stored vectors, an untrained IVF one trained,
#: a trained IVF one never retrained.
IngestMode = Literal["build", "add"]


def ingest(w: IndexWriter, encoder, items: list[Item], report: BuildReport, *, embed: EmbedOptions,
           mode: IngestMode, precision=None) -> None:
    """Embed ``items`` and commit them ``embed.chunk_size`` at a time, keeping FAISS in step as ``mode``
    (:data:`IngestMode`) says.

    ``precision``: the index's int8 model (``engine.ort.Int8Spec``), or None for fp32.
    ``embed.embedder``: ``items -> Iterator[Embedded]`` in item order instead of the local DataLoader (e.g.
    :func:`indexer.ray_embed.ray_embedder`); everything after the embedding is the same."""
    if mode not in ("build", "add"):
        raise ValueError(f"mode must be 'build' or 'add', got {mode!r}")
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
    written_at = [w.manifest.count() if (w.dir / FAISS_FILE).is_file() else 0]
    pend_vecs, pend_items, pend_fail = [], [], []

    def flush():
        if not pend_items and not pend_fail:
            return
        vecs = np.concatenate(pend_vecs) if pend_vecs else np.zeros((0, w.stored_dim), np.float32)
        rows = [(it.key, it.label, sha, size, mtime) for it, sha, size, mtime in pend_items]
        replaced = [replaces[it.key] for it, *_ in pend_items if it.key in replaces]
        if pend_fail:
            w.manifest.record_skipped([(it.key, reason) for it, reason in pend_fail])
        new_ids = w.commit(vecs, rows, replaced, [it.key for it, *_ in pend_items])
        report.added += len(new_ids)
        report.replaced += len(replaced)
        report.skipped.extend((it.key, reason) for it, reason in pend_fail)
        if mode == "add":
            _apply_incremental(w, vecs, np.asarray(new_ids, np.int64), replaced)
        else:
            n = w.manifest.count()
            if written_at[0] == 0 or n >= 2 * written_at[0]:  # doubling: all checkpoints cost <= 2 final writes
                try:
                    w.rebuild_faiss(retrain=True)
                    w.save(state="building")
                    written_at[0] = n
                except IndexError_:
                    pass  # too few images yet to train this index type; the manifest holds the work
        pend_vecs.clear(), pend_items.clear(), pend_fail.clear()

    if embed.embedder is not None and precision is not None:
        raise IndexError_("this index embeds at int8 (its own ONNX Runtime model); --ray embeds at fp32")
    stream = (embed.embedder(todo) if embed.embedder is not None else
              embed_items(encoder, todo, batch_size=embed.batch_size, num_workers=embed.num_workers,
                          device=embed.device, amp=embed.amp, progress=embed.progress, precision=precision or "fp32"))
    for batch in stream:
        if batch.vectors.shape[1] != w.stored_dim:
            raise EncoderMismatchError(f"dim {w.stored_dim}", f"dim {batch.vectors.shape[1]}", "add to this index")
        pend_vecs.append(batch.vectors)
        pend_items.extend((todo[i], sha, size, mtime) for i, sha, size, mtime in batch.done)
        pend_fail.extend((todo[i], reason) for i, reason in batch.failed)
        if len(pend_items) + len(pend_fail) >= embed.chunk_size:
            flush()
    flush()


def _apply_incremental(w: IndexWriter, vecs: np.ndarray, ids: np.ndarray, replaced: list[int]) -> None:
    index = w.load_faiss()
    kind = w.header.index_type
    if kind == "hnsw" and replaced:
        w.rebuild_faiss(retrain=False)  # HNSW cannot remove: rebuild from the stored vectors
        return
    if replaced:
        remove(index, replaced)
    if kind in IVF_TYPES and not index.is_trained:
        w.rebuild_faiss(retrain=True)
        return
    add(index, w.searched(vecs), ids)  # stored space -> the searched one (an adapted index's head)
    w.faiss_dirty = True
