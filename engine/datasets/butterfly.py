"""Butterfly-200 (Chen et al., ACM MM 2018, github.com/HCPLab-SYSU/HSE), official release lists.

Root layout (root = the ``Butterfly200`` folder, or a folder that contains it)::

    images/<NNN.Species_name>/<file>.jpg
    Butterfly200_train_release.txt   <path under images/> <species> <genus> <subfamily> <family>
    Butterfly200_val_release.txt     (same; optional)
    Butterfly200_test_release.txt    (same)

Labels are 1-based; only the species level (the first label, 200 classes) is used, and lines with just
``<path> <species>`` are accepted too. Class names come from the image folder of each species
(``species_NNN`` when a species' images do not sit in a folder of their own). train = train list (10,270), test =
test list (15,009), as in the PP-SSL paper; the val list (5,135) is only part of ``all``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from engine.datasets.annotations import parse_int, read_records, relative_image_path, require_dir, require_file
from engine.datasets.base import AnnotationError, Listing, register_dataset

_HINT = ("Butterfly-200 layout: images/, Butterfly200_train_release.txt, Butterfly200_test_release.txt "
         "(Butterfly200_val_release.txt optional)")
_LEVELS = ("species", "genus", "subfamily", "family")


def _base(root: Path) -> Path:
    if not (root / "Butterfly200_train_release.txt").exists() and (root / "Butterfly200").is_dir():
        return root / "Butterfly200"
    return root


@register_dataset("butterfly200")
def read_butterfly200(root: Path, split: str) -> Listing:
    """Butterfly-200 at species level."""
    base = _base(root)
    images = require_dir(base / "images", _HINT)
    parts = {name: base / f"Butterfly200_{name}_release.txt" for name in ("train", "val", "test")}
    require_file(parts["train"], _HINT)
    require_file(parts["test"], _HINT)
    if not parts["val"].exists():
        del parts["val"]

    rows: dict[str, list[tuple[str, int, str]]] = {}  # part -> (relative path, species id, "file:line")
    seen: dict[str, str] = {}
    folders: dict[int, set[str]] = {}
    for name, list_txt in parts.items():  # every list, so classes are the same for each split
        rows[name] = []
        for lineno, fields in _records(list_txt):
            rel = relative_image_path(list_txt, lineno, fields[0])
            ids = [parse_int(list_txt, lineno, tok, f"{level} label") for tok, level in zip(fields[1:], _LEVELS)]
            if any(v < 1 for v in ids):
                raise AnnotationError(list_txt, f"labels must be >= 1 (1-based), got {' '.join(fields[1:])}", lineno)
            where = f"{list_txt}:{lineno}"
            if rel in seen:
                raise AnnotationError(list_txt, f"image {rel!r} is listed twice (first at {seen[rel]})", lineno)
            seen[rel] = where
            rows[name].append((rel, ids[0], where))
            folders.setdefault(ids[0], set()).add(rel.split("/")[0] if "/" in rel else "")

    used = sorted(folders)
    label_of = {sid: i for i, sid in enumerate(used)}
    names = {s: next(iter(folders[s])) if len(folders[s]) == 1 else "" for s in used}
    shared = {n for n, k in Counter(names.values()).items() if k > 1}
    classes = [names[s] if names[s] and names[s] not in shared else f"species_{s:03d}" for s in used]
    keep = list(parts) if split == "all" else [split]
    samples = [(os.path.join(str(images), *rel.split("/")), label_of[sid]) for p in keep for rel, sid, _ in rows[p]]
    sources = [where for p in keep for _, _, where in rows[p]]
    return Listing(samples, classes, str(base), sources)


def _records(path: Path) -> list[tuple[int, list[str]]]:
    """Lines of ``<path> <species> [<genus> <subfamily> <family>]`` (2 or 5 fields)."""
    out = []
    for lineno, (line,) in read_records(path, 1, "<path> <species> <genus> <subfamily> <family>", rest=True):
        fields = line.split()
        if len(fields) not in (2, 5):
            raise AnnotationError(path, f"expected '<path> <species> <genus> <subfamily> <family>' "
                                        f"(or '<path> <species>'), got {len(fields)} fields", lineno)
        out.append((lineno, fields))
    return out
