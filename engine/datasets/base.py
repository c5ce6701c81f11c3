"""The one dataset type every reader returns, the reader registry, and the annotation error.

Readers only parse and validate annotation files into a :class:`Listing`; :func:`build_dataset`
checks that the listed image files exist and wraps the listing in an :class:`ImageListDataset`, so
file checks and error wording are the same for every format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch.utils.data import Dataset

from engine.errors import PPSSLError
from engine.imageio import open_image

#: The splits every reader understands ("all" = every labelled image, official val sets included).
SPLITS = ("train", "test", "all")


class DatasetError(PPSSLError, ValueError):
    """A dataset request the readers cannot serve (unknown reader name, unknown split)."""


class AnnotationError(DatasetError):
    """A missing or malformed annotation file (or image) of a dataset; the message names file and line.

    The message reads ``"<file>:<line>: <what is wrong>"`` or ``"<file>: <what is wrong>"``.
    """

    def __init__(self, file: str | os.PathLike, reason: str = "missing", line: int | None = None):
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {reason}")


class ImageListDataset(Dataset):
    """A labelled list of image files; items are ``(image, label, path)``.

    Labels are 0-based contiguous indices into :attr:`classes`. Holds only plain lists, so it pickles
    cheaply into DataLoader workers.

    Args:
        samples: ``(absolute image path, label)`` pairs.
        classes: class names; ``classes[label]`` names a sample's class.
        transform: applied to the opened PIL RGB image; ``None`` returns the PIL image.
        root: the dataset's directory (informational).
        image_ids: per-sample ids of the annotation files (CUB/NABirds), aligned with ``samples``.
        bounding_boxes: per-sample ``(x, y, width, height)`` in pixels, or ``None`` when the dataset has none.
        captions: per-sample caption text (``None`` entries where an image has none).
        decode_from: per-sample file decoded in place of the listed one (a resized copy, ``engine.resized``);
            the listed path is still what items report and what splits are made by.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Optional[Callable[[Any], Any]] = None,
        root: str | os.PathLike | None = None,
        *,
        image_ids: list[str] | None = None,
        bounding_boxes: list[tuple[float, float, float, float]] | None = None,
        captions: list[str | None] | None = None,
        decode_from: list[str] | None = None,
    ):
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.classes = list(classes)
        self.targets = [y for _, y in self.samples]
        self.transform = transform
        self.root = None if root is None else str(root)
        bad = [y for y in self.targets if not 0 <= y < len(self.classes)]
        if bad:
            raise ValueError(f"label {bad[0]} out of range for {len(self.classes)} classes")
        for name, extra in (("image_ids", image_ids), ("bounding_boxes", bounding_boxes), ("captions", captions),
                            ("decode_from", decode_from)):
            if extra is not None and len(extra) != len(self.samples):
                raise ValueError(f"{name} has {len(extra)} entries for {len(self.samples)} samples")
        self.image_ids = image_ids
        self.bounding_boxes = bounding_boxes
        self.captions = captions
        self.decode_from = decode_from  # per sample, a file to decode instead (a resized copy: engine.resized)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = open_image(path if self.decode_from is None else self.decode_from[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, label, path

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.samples)} images, {len(self.classes)} classes, "
                f"root={self.root!r})")


@dataclass
class Listing:
    """What a reader found: the samples of one split plus where each was listed (for error messages)."""

    samples: list[tuple[str, int]]  # (absolute image path, 0-based label)
    classes: list[str]  # class names, indexed by label; identical for every split of a dataset
    root: str  # the directory the dataset was read from
    sources: list[str] | None = None  # per sample, "<file>:<line>" or "<file>: <entry>" that listed it
    extras: dict[str, Any] = field(default_factory=dict)  # image_ids / bounding_boxes / captions


Reader = Callable[[Path, str], Listing]
_READERS: dict[str, Reader] = {}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator: register ``reader(root: Path, split: str) -> Listing`` under ``name``."""

    def deco(fn: Reader) -> Reader:
        if name in _READERS and _READERS[name] is not fn:
            raise ValueError(f"dataset reader {name!r} is already registered")
        _READERS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return sorted(_READERS)


def verify_image_files(listing: Listing) -> None:
    """Raise an :class:`AnnotationError` naming the first listed image that is not a file (a stat per image)."""
    missing = [i for i, (p, _) in enumerate(listing.samples) if not os.path.isfile(p)]
    if not missing:
        return
    i = missing[0]
    path = listing.samples[i][0]
    more = f" ({len(missing)} of {len(listing.samples)} listed images are missing)" if len(missing) > 1 else ""
    what = "does not exist" if not os.path.exists(path) else "is not a regular file"
    if listing.sources is not None:
        where = listing.sources[i]
        file, _, line = where.rpartition(":")
        if file and line.isdigit():  # "<file>:<line>"
            raise AnnotationError(file, f"image file {path} {what}{more}", int(line))
        file, _, entry = where.partition(": ")  # "<file>: <entry>" (MATLAB lists)
        raise AnnotationError(file, f"{entry + ': ' if entry else ''}image file {path} {what}{more}")
    raise AnnotationError(path, f"{what}{more}")


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str = "train",
    transform: Optional[Callable[[Any], Any]] = None,
    *,
    check_files: bool = True,
) -> ImageListDataset:
    """Read one split of a dataset laid out in its official format (nothing is downloaded).

    Args:
        name: a reader name from :func:`list_datasets` (``cub200``, ``cars``, ``aircraft``, ``flowers102``,
            ``nabirds``, ``dogs``, ``butterfly200``, ``folder``).
        root: the dataset directory (see each reader for the layout it expects).
        split: ``"train"``, ``"test"`` or ``"all"``.
        transform: applied to each opened image.
        check_files: stat every listed image and fail on the first missing one (cheap: ~0.1 s per 50k).

    Raises:
        DatasetError: unknown name or split.
        AnnotationError: missing or malformed annotation file (the message names file and line), or a
            listed image file that does not exist.
    """
    if name not in _READERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for dataset {name!r}; use one of {', '.join(SPLITS)}")
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not path.exists():
        raise AnnotationError(path, f"missing (dataset root directory for {name!r})")
    if not path.is_dir():
        raise AnnotationError(path, f"not a directory (dataset root for {name!r})")
    listing = _READERS[name](path, split)
    if check_files:
        verify_image_files(listing)
    return ImageListDataset(listing.samples, listing.classes, transform, listing.root, **listing.extras)
