"""A plain class-per-folder tree: ``root/<class>/**/<image>``.

Splits:
    * If ``root`` has both ``train/`` and ``test/`` folders, each is a class-per-folder tree and is that
      split; classes are the union of both, so labels agree between splits.
    * Otherwise ``all`` is every image, and ``train``/``test`` are a deterministic 50/50 split by a hash of
      each image's path relative to ``root`` (an image keeps its split when others are added or removed).

Class names are the folder names, sorted; labels follow that order. Files without an image suffix,
entries that are not regular files (FIFOs, devices, broken or looping symlinks), hidden files and folders,
images lying directly in ``root``, and empty class folders are ignored.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.datasets.base import AnnotationError, Listing, register_dataset
from engine.imageio import is_image_file


def _scan(top: Path) -> dict[str, list[str]]:
    """``class name -> sorted absolute image paths`` for each non-empty class folder under ``top``."""
    out: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [p for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)
                      and os.path.isfile(p := os.path.join(dirpath, f))]  # no FIFOs, broken or looping links
        if files:
            out[entry.name] = files
    return out


def in_train_half(relative_path: str) -> bool:
    """The hash split of a class-per-folder tree without train/ and test/: True for the training half."""
    digest = hashlib.sha1(relative_path.replace(os.sep, "/").encode("utf-8")).digest()
    return digest[0] < 128


@register_dataset("folder")
def read_folder(root: Path, split: str) -> Listing:
    """Class-per-folder images; splits from ``train/``+``test/`` folders or a path hash (see module doc)."""
    has = {part: (root / part).is_dir() for part in ("train", "test")}
    if has["train"] and has["test"]:
        trees = {part: _scan(root / part) for part in ("train", "test")}
        for part, tree in trees.items():
            if not tree:
                raise AnnotationError(root / part, "no class folders with images (expected <class>/<image>)")
        classes = sorted(set(trees["train"]) | set(trees["test"]))
        label = {c: i for i, c in enumerate(classes)}
        parts = ("train", "test") if split == "all" else (split,)
        samples = [(p, label[c]) for part in parts for c, paths in trees[part].items() for p in paths]
        return Listing(samples, classes, str(root))
    if has["train"] != has["test"]:
        present, absent = ("train", "test") if has["train"] else ("test", "train")
        raise AnnotationError(root / absent, f"missing: {root} has {present}/ so it needs {absent}/ too "
                                             f"(or neither, for a plain class-per-folder tree)")
    tree = _scan(root)
    if not tree:
        raise AnnotationError(root, "no class folders with images (expected <class>/<image>)")
    classes = sorted(tree)
    samples = []
    for i, c in enumerate(classes):
        for p in tree[c]:
            if split == "all" or in_train_half(os.path.relpath(p, root)) == (split == "train"):
                samples.append((p, i))
    return Listing(samples, classes, str(root))
