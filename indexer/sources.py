"""Where gallery images come from, and their robust, batched embedding.

A failed image (corrupt, truncated, not an image, unreadable) becomes a sentinel in the Dataset and is
dropped by the collate function with its reason, so one bad file never costs a batch.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


@dataclass
class Item:
    """One file to index."""

    path: str  # absolute path of the file
    key: str  # path as recorded in the manifest (relative to the gallery root, POSIX separators)
    label: str | None  # class name, or None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_key(path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """``path`` relative to ``root`` in POSIX form, or None when it lies outside ``root`` (symlinks resolved,
    so a link pointing out of the gallery counts as outside)."""
    ap, ar = os.path.realpath(path), os.path.realpath(root)
    try:
        if os.path.commonpath([ap, ar]) != ar:
            return None
    except ValueError:
        return None
    return Path(os.path.relpath(ap, ar)).as_posix()


def folder_label(key: str, rule: str = "top") -> str | None:
    """The label of a gallery file from its path relative to the root; None directly in the root.

    ``rule="top"``: the first sub-folder under the root (as the engine's ``folder`` reader: ``cls/a/x.jpg``
    is ``cls``); ``rule="parent"``: the folder holding the file (dataset layouts such as CUB's
    ``images/<class>/x.jpg``).
    """
    parts = Path(key).parts
    if len(parts) < 2:
        return None
    return parts[0] if rule == "top" else parts[-2]


def scan_folder(folder: str | os.PathLike, root: str | os.PathLike, label: str | None = None,
                rule: str = "top") -> list[Item]:
    """Every file under ``folder`` (recursively, sorted, hidden entries ignored), keyed relative to ``root``.

    All regular files are returned, not only image suffixes, so misnamed images are tried and non-images
    are reported as skipped instead of silently ignored.
    """
    folder = Path(folder).resolve()
    items = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = os.path.join(dirpath, name)
            key = manifest_key(p, root)
            items.append(Item(p, key, label if label is not None else (folder_label(key, rule) if key else None)))
    return items


def dataset_items(name: str, root: str | os.PathLike, split: str) -> list[Item]:
    """The samples of an engine dataset split, labelled with class names."""
    from engine.datasets import build_dataset

    ds = build_dataset(name, root, split=split, transform=None)
    root = os.path.abspath(root)
    out = []
    for path, y in ds.samples:
        key = manifest_key(path, root) or os.path.abspath(path)
        out.append(Item(os.path.abspath(path), key, ds.classes[y]))
    return out


class ItemFiles:
    """torch Dataset over items: ``(tensor, position, sha256, size, mtime_ns)`` or ``(None, position, reason)``."""

    def __init__(self, items: list[Item], transform, min_side: int | None = None):
        self.items = items
        self.transform = transform
        self.min_side = min_side  # JPEGs decoded at a reduced scale down to this short side (open_image)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from engine.imageio import ImageLoadError, open_image

        item = self.items[i]
        try:
            st = os.stat(item.path)
            if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block the build forever
                return None, i, "not a regular file"
            with open(item.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return None, i, f"unreadable ({exc.strerror or exc})"
        try:
            image = open_image(data, min_side=self.min_side)
            x = self.transform(image)
        except ImageLoadError as exc:
            return None, i, exc.reason
        except Exception as exc:  # noqa: BLE001 - a transform failure skips this file only
            return None, i, f"preprocessing failed ({type(exc).__name__}: {exc})"
        return x, i, hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns


def collate_items(batch):
    """Batch :class:`ItemFiles` samples: ``(stacked tensors or None, [(position, sha256, size, mtime_ns)],
    [(position, reason)])``."""
    import torch

    ok = [b for b in batch if b[0] is not None]
    failed = [(b[1], b[2]) for b in batch if b[0] is None]
    xs = torch.stack([b[0] for b in ok]) if ok else None
    return xs, [b[1:] for b in ok], failed


@dataclass
class Embedded:
    """A batch's outcome: vectors for the readable items, reasons for the others."""

    vectors: np.ndarray  # float32 (n, D)
    done: list[tuple[int, str, int, int]]  # (position in items, sha256, size, mtime_ns), aligned with vectors
    failed: list[tuple[int, str]]  # (position in items, reason)


def cpu_batches(dataset: ItemFiles, batch_size: int, threads: int):
    """Collated batches decoded by ``threads`` threads of this process, each *between* forward passes
    (``engine.batches.thread_batches``: on a CPU, worker processes beside the forward preempt its threads;
    ``benchmarks/embed_throughput`` measures both side by side, docs/performance.md §1)."""
    from engine.batches import thread_batches

    return thread_batches(dataset.__getitem__, range(len(dataset)), batch_size, threads, collate_items,
                          name="ppssl-decode")


def embed_items(encoder, items: list[Item], *, batch_size: int = 64, num_workers: int = 2, device=None,
                amp: bool = True, progress: Callable[[int, int], None] | None = None,
                desc: str = "embedding", decode: str = "auto", precision=None) -> Iterator[Embedded]:
    """Yield embedded batches of ``items`` in order (``precision``: see ``engine.embed.embed_batch``).

    ``num_workers`` decoders. ``decode="processes"``: DataLoader worker processes that overlap decoding with
    the forward pass (pinned memory and AMP on a GPU); ``"threads"``: threads of this process that decode each
    batch between forward passes (:func:`cpu_batches`); ``"auto"``: threads on a CPU, where both would share
    the same cores, processes on a GPU.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from engine.embed import channels_last, decode_side, default_device, embed_batch

    device = torch.device(device) if device is not None else default_device()
    encoder = encoder.to(device).eval()
    dataset = ItemFiles(items, encoder.transform(), decode_side(encoder))
    if decode not in ("auto", "threads", "processes"):
        raise ValueError(f"decode must be auto, threads or processes, got {decode!r}")
    if decode == "threads" or (decode == "auto" and device.type == "cpu"):
        loader = cpu_batches(dataset, batch_size, num_workers)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda", collate_fn=collate_items, persistent_workers=False)
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=progress is not None or not items,
               dynamic_ncols=True)
    done = 0
    try:
        with channels_last(encoder):
            for xs, oks, failed in loader:
                vecs = (embed_batch(encoder, xs, amp=amp, precision=precision) if xs is not None
                        else np.zeros((0, encoder.feature_dim), np.float32))
                n = len(oks) + len(failed)
                done += n
                bar.update(n)
                if progress is not None:
                    progress(done, len(items))
                yield Embedded(vecs, [tuple(o) for o in oks], failed)
    finally:
        bar.close()
        if hasattr(loader, "close"):
            loader.close()  # a generator: shuts its thread pool down when the caller stops early


def embed_images(encoder, images, *, batch_size: int = 32, device=None, amp: bool = True,
                 precision=None) -> np.ndarray:
    """Embed a list of PIL images or paths (query side: a bad file raises ImageLoadError naming it)."""
    import torch

    from engine.embed import decode_side, default_device, embed_pil
    from engine.imageio import open_image

    device = torch.device(device) if device is not None else default_device()
    encoder = encoder.to(device).eval()
    side = decode_side(encoder)
    pil = [im if hasattr(im, "convert") and hasattr(im, "size") else open_image(im, min_side=side) for im in images]
    return embed_pil(encoder, pil, batch_size=batch_size, amp=amp, precision=precision)
