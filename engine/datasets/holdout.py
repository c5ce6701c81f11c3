"""A validation part carved out of a training split, for choosing hyper-parameters without the test split.

Two ways to name it: a file of image ids (CUB-style ``val_ids.txt``, one id per line, matched against
``image_ids``), or a fraction per class (the first ``ceil(f * n)`` images of each class in path order, at
least one, and never a class's only image; deterministic and independent of everything but the file list).
"""

from __future__ import annotations

import math
from pathlib import Path

from engine.datasets.base import DatasetError, ImageListDataset


def subset(ds: ImageListDataset, indices: list[int]) -> ImageListDataset:
    """The samples of ``ds`` at ``indices`` (in that order), same classes and transform."""
    pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
    return ImageListDataset([ds.samples[i] for i in indices], ds.classes, ds.transform, ds.root,
                            image_ids=pick(ds.image_ids), bounding_boxes=pick(ds.bounding_boxes),
                            captions=pick(ds.captions), decode_from=pick(getattr(ds, "decode_from", None)))


def holdout_indices(ds: ImageListDataset, spec: str) -> list[int]:
    """Indices of the held-out part of ``ds`` named by ``spec`` (an ids file or a fraction in (0, 1))."""
    try:
        frac = float(spec)
    except ValueError:
        frac = None
    if frac is not None:
        if not 0 < frac < 1:
            raise DatasetError(f"holdout fraction must be in (0, 1), got {spec}")
        by_class: dict[int, list[int]] = {}
        for i, (path, y) in enumerate(ds.samples):
            by_class.setdefault(y, []).append(i)
        out = []
        for members in by_class.values():
            members = sorted(members, key=lambda i: ds.samples[i][0])
            if len(members) > 1:
                out += members[:min(len(members) - 1, max(1, math.ceil(frac * len(members))))]
        return sorted(out)
    path = Path(spec)
    if not path.is_file():
        raise DatasetError(f"holdout {spec!r} is neither a fraction nor a file of image ids")
    if ds.image_ids is None:
        raise DatasetError(f"holdout file {spec}: this dataset has no image ids; use a fraction such as 0.2")
    wanted = {ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}
    out = [i for i, image_id in enumerate(ds.image_ids) if str(image_id) in wanted]
    if not out:
        raise DatasetError(f"holdout file {spec}: none of its {len(wanted)} ids is in this split")
    return out


def split_holdout(ds: ImageListDataset, spec: str) -> tuple[ImageListDataset, ImageListDataset]:
    """``(rest, held_out)`` of ``ds`` for the holdout ``spec`` (see :func:`holdout_indices`)."""
    held = holdout_indices(ds, spec)
    keep = sorted(set(range(len(ds))) - set(held))
    if not keep:
        raise DatasetError(f"holdout {spec!r} leaves no training images")
    return subset(ds, keep), subset(ds, held)
