"""What the HTTP API does, without HTTP: search with photos or stored items, look items up, add and remove.

One :class:`SearchService` per server. It holds the current snapshot of the index (``indexer.Index``: a
consistent view of one manifest state) and swaps in a new one after its own writes or when another writer
(``ppssl index add``) changed the index files, so every search sees one whole commit. Query photos are decoded
and preprocessed in the request's thread, then embedded and searched in batches (:class:`api.batcher.DynamicBatcher`).
Writes go through the indexer's transactional ``add_to_index`` / ``remove_from_index``, as the CLI's do.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import PPSSLError
from indexer.controls import ResultControls, apply_controls
from indexer.refine import Refine

MAX_K = 1000  # the largest k a request may ask for
PAGES_KEPT = 256  # recent result lists kept for paging (least recently used dropped first)


class NotFound(PPSSLError, LookupError):
    """An unknown item id or page token (HTTP 404)."""


class Forbidden(PPSSLError, PermissionError):
    """A path outside the allowed roots, or a write without a valid token (HTTP 403)."""


@dataclass
class Query:
    """One search request's item for the batcher."""

    x: object | None  # preprocessed image tensor (3, S, S), or None with ``feature``
    feature: np.ndarray | None = None  # a stored vector ("more like this")
    k: int = 10
    refine: Refine = field(default_factory=Refine)
    controls: ResultControls = field(default_factory=ResultControls)
    exclude: tuple[int, ...] = ()
    sha256: str | None = None  # of the uploaded bytes: an identical gallery item is left out


def _stamp(index_dir: Path) -> tuple:
    from indexer.store import CONTENT_FILES

    out = []
    for name in CONTENT_FILES:
        try:
            st = (index_dir / name).stat()
            out.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((name, 0, 0))
    return tuple(out)


class SearchService:
    """The index, its query encoder and the batcher behind the API.

    Args:
        index_dir: the index served.
        qdrant: search the index's Qdrant copy at this folder or URL instead (``ppssl index publish``).
        batching, max_batch, max_wait_ms: dynamic batching (:class:`api.batcher.DynamicBatcher`).
        allow_roots: folders whose files ``item_image`` may return (none: image files are not served).
        features_only: answer feature and by-id queries only and load no encoder (an index of precomputed
            vectors, whose encoder cannot be rebuilt; the benchmarks' random galleries).
    """

    def __init__(self, index_dir, *, qdrant: str | None = None, batching: bool = True, max_batch: int = 32,
                 max_wait_ms: float = 5.0, allow_roots=(), features_only: bool = False):
        from api.batcher import DynamicBatcher

        self.index_dir = Path(index_dir).expanduser().resolve()
        self.qdrant = qdrant
        self.allow_roots = tuple(Path(r).expanduser().resolve() for r in allow_roots)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._index = None
        self._by_sha: tuple | None = None
        self._stamp = None
        self._checked = 0.0
        self._encoder = None
        self.features_only = features_only
        self._pages: OrderedDict[str, dict] = OrderedDict()
        self.reload()
        self.batcher = DynamicBatcher(self._run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                      enabled=batching)

    # --- the snapshot ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Open the current state of the index (after a write, or when its files changed)."""
        from indexer import Index

        with self._lock:
            stamp = _stamp(self.index_dir)
            if self.qdrant:
                from indexer.vectordb import VectorDBIndex

                new = VectorDBIndex(self.qdrant, self.index_dir.name, index_dir=self.index_dir)
            else:
                new = Index.open(self.index_dir)
            old, self._index, self._stamp = self._index, new, stamp
            self._by_sha = None  # sha256 -> id of this snapshot, built on first use
            if not self.features_only and (self._encoder is None or
                                           (old is not None and old.fingerprint != new.fingerprint)):
                self._encoder = new.load_encoder().eval()
            if old is not None and hasattr(old, "close") and self.qdrant:
                old.close()

    def index(self):
        """The current snapshot (reopened at most every 0.5 s when another writer changed the files)."""
        now = time.monotonic()
        if now - self._checked > 0.5:
            self._checked = now
            if _stamp(self.index_dir) != self._stamp:
                self.reload()
        return self._index

    def _sha_map(self, index) -> dict:
        """``sha256 -> id`` of a snapshot, built once per snapshot (a dict over every record costs milliseconds
        at 10k items: too much for each request)."""
        cached = self._by_sha
        if cached is None or cached[0] is not index:
            cached = self._by_sha = (index, {r["sha256"]: r["id"] for r in index.records()})
        return cached[1]

    @property
    def encoder(self):
        return self._encoder

    # --- queries ----------------------------------------------------------------------------------
    def preprocess(self, data: bytes, max_pixels: int) -> tuple[object, str]:
        """Upload bytes -> (the encoder's input tensor, sha256); raises ``engine.imageio.ImageLoadError``."""
        from engine.embed import decode_side
        from engine.imageio import open_image

        if self._encoder is None:
            raise PPSSLError("this service answers feature and by-id queries only (features_only: no encoder)")
        image = open_image(data, max_pixels=max_pixels, min_side=decode_side(self._encoder))
        return self._encoder.transform()(image), hashlib.sha256(data).hexdigest()

    def search(self, query: Query) -> dict:
        """Run one query through the batcher: ``{"hits": [...], "dropped": {...}, "index": {...}}``."""
        return self.batcher.submit(query)

    def _run_batch(self, items: list[Query]) -> list:
        """Embed the batch's photos in one forward pass, then search each group of like queries in one scan."""
        import torch

        from engine.embed import embed_batch

        index, encoder = self.index(), self._encoder
        photos = [i for i, q in enumerate(items) if q.feature is None]
        feats: list[np.ndarray | None] = [q.feature for q in items]
        if photos:
            x = torch.stack([items[i].x for i in photos])
            for i, f in zip(photos, embed_batch(encoder, x)):
                feats[i] = f
        out: list = [None] * len(items)
        groups: dict = {}
        for i, q in enumerate(items):
            groups.setdefault(q.refine, []).append(i)
        by_sha = None
        for refine, members in groups.items():
            excludes = []
            for i in members:
                ex = set(items[i].exclude)
                if items[i].sha256:
                    by_sha = by_sha if by_sha is not None else self._sha_map(index)
                    if items[i].sha256 in by_sha:
                        ex.add(by_sha[items[i].sha256])  # the query photo itself, if it is in the gallery
                excludes.append(sorted(ex))
            kmax = max(self._fetch(index, items[i]) for i in members)
            try:
                hits = index.search(np.stack([feats[i] for i in members]).astype(np.float32), k=kmax,
                                    refine=refine if refine.active else None,
                                    exclude=excludes if any(excludes) else None)
            except PPSSLError as exc:
                for i in members:
                    out[i] = exc
                continue
            for i, h, ex in zip(members, hits, excludes):
                kept, dropped = apply_controls(index, h, items[i].controls)
                out[i] = {"hits": kept[:items[i].k], "dropped": dropped, "excluded": ex,
                          "index": self.describe(index)}
        return out

    @staticmethod
    def _fetch(index, q: Query) -> int:
        """How many hits to ask of this batch's snapshot (not the service's newest one, which a write may have
        replaced meanwhile): k, or more when collapse may drop some."""
        n = max(1, index.count)
        return min(n, q.k * 2 + 10 if q.controls.collapse else q.k)

    def feature_of(self, item_id: int) -> np.ndarray:
        index = self.index()
        try:
            return index.vectors([int(item_id)])[0]
        except PPSSLError:
            raise NotFound(f"no item with id {item_id}") from None

    # --- paging -----------------------------------------------------------------------------------
    def keep_page(self, result: dict) -> str:
        token = os.urandom(12).hex()
        with self._lock:
            self._pages[token] = result
            while len(self._pages) > PAGES_KEPT:
                self._pages.popitem(last=False)
        return token

    def page(self, token: str) -> dict:
        with self._lock:
            if token not in self._pages:
                raise NotFound(f"no result list {token!r} (expired or unknown); search again")
            self._pages.move_to_end(token)
            return self._pages[token]

    # --- items ------------------------------------------------------------------------------------
    def item(self, item_id: int) -> dict:
        try:
            return self.index().record(int(item_id))
        except PPSSLError:
            raise NotFound(f"no item with id {item_id}") from None

    def item_file(self, item_id: int) -> Path:
        """The item's file, only when it lies under an allowed root (else :class:`Forbidden`)."""
        rec = self.item(item_id)
        if not self.allow_roots:
            raise Forbidden("image files are not served: the API was started without --allow-root")
        try:
            path = self.index().resolve(rec["path"])
        except PPSSLError as exc:
            raise Forbidden(str(exc)) from None
        if not any(path == r or r in path.parents for r in self.allow_roots):
            raise Forbidden(f"{rec['path']} lies outside the allowed roots")
        if not path.is_file():
            raise NotFound(f"the file of item {item_id} is gone")
        return path

    def describe(self, index=None) -> dict:
        index = index or self.index()
        return {"fingerprint": index.fingerprint, "count": index.count}

    def info(self) -> dict:
        """Type, size, encoder, adaptation, and the last evaluation if one was written (``INDEX/eval``)."""
        import json

        index = self.index()
        header = index.header
        metrics = None
        try:
            metrics = json.loads((self.index_dir / "eval" / "eval.json").read_text()).get("summary")
        except (OSError, ValueError):
            pass
        adapted = header.adapt
        return {"index_dir": str(self.index_dir), "index_type": index.index_type, "count": index.count,
                "dim": index.dim, "fingerprint": index.fingerprint, "encoder": index.encoder_ref,
                "adapted": ({k: adapted[k] for k in ("stored_dim", "dim", "fitted_on", "of", "fitted_at")}
                            if adapted else False), "precision": (header.precision or {}).get("mode", "fp32"),
                "metrics": metrics, "served_from": "qdrant" if self.qdrant
                else "faiss", "max_k": MAX_K,
                "batching": {"enabled": self.batcher.enabled, "max_batch": self.batcher.max_batch,
                             "max_wait_ms": self.batcher.max_wait * 1000, "batches": self.batcher.batches,
                             "items": self.batcher.items}}

    def add(self, data: bytes, name: str | None, label: str | None) -> dict:
        """Store an uploaded photo under the gallery root and add it with ``indexer.add_to_index``."""
        from engine.imageio import open_image
        from indexer import EmbedOptions, add_to_index

        open_image(data)  # refuse a bad file before anything is written
        index = self.index()
        root = Path(index.root) if index.root else None
        if root is None or not root.is_dir():
            raise Forbidden("this index records no gallery folder to store new photos in")
        folder = root / _safe_part(label or "uploads", "label")
        sha = hashlib.sha256(data).hexdigest()
        stem = _safe_part(Path(name or "").stem or sha[:16], "name")
        suffix = Path(name or "").suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".jpg"
        with self._write_lock:
            path = folder / f"{stem}{suffix}"
            if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                path = folder / f"{stem}-{sha[:8]}{suffix}"
            if not path.exists():
                from engine.atomic import atomic_write_bytes

                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            report = add_to_index(self.index_dir, [path], labels=label,
                                  embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
            self.reload()
        key = path.relative_to(root).as_posix()
        rec = next((r for r in self._index.records() if r["path"] == key), None)
        return {"id": rec["id"] if rec else None, "path": key, "label": rec["label"] if rec else label,
                "added": report.added, "already_present": report.already_present,
                "skipped": [{"path": p, "reason": r} for p, r in report.skipped], "index": self.describe()}

    def remove(self, item_id: int) -> dict:
        from indexer import remove_from_index

        self.item(item_id)  # 404 for an unknown id
        with self._write_lock:
            n = remove_from_index(self.index_dir, ids=[int(item_id)])
            self.reload()
        return {"removed": n, "index": self.describe()}

    def close(self) -> None:
        self.batcher.close()


def _safe_part(text: str, what: str) -> str:
    """One path component made of letters, digits, ``._-`` and spaces (no separators, not ``.``/``..``)."""
    text = text.strip()
    if not text or text in (".", "..") or not re.fullmatch(r"[\w.\- ]{1,128}", text) or text.startswith("."):
        raise PPSSLError(f"{what} {text!r} is not allowed: use letters, digits, '.', '_', '-' and spaces")
    return text
