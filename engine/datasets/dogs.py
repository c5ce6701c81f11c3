"""Stanford Dogs (Khosla et al. 2011), official distribution (images.tar + lists.tar).

Root layout::

    Images/<wnid>-<breed>/<file>.jpg        (``images/`` also accepted)
    train_list.mat, test_list.mat           (also accepted under ``lists/``)

Each list file holds ``file_list`` (paths relative to ``Images/``) and ``labels`` (1..120). Classes are
named after the image folders (e.g. ``n02085620-Chihuahua``), ordered by label; train = train_list.mat
(12,000), test = test_list.mat (8,580), all = both. ``file_list.mat`` and ``Annotation/`` are not read.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.datasets.annotations import load_mat, mat_ints, mat_strings, relative_image_path, require_dir
from engine.datasets.base import AnnotationError, Listing, register_dataset

_HINT = "Stanford Dogs layout: Images/, train_list.mat, test_list.mat (from lists.tar)"


def _list_dir(root: Path) -> Path:
    return root / "lists" if not (root / "train_list.mat").exists() and (root / "lists").is_dir() else root


@register_dataset("dogs")
def read_dogs(root: Path, split: str) -> Listing:
    """Stanford Dogs from ``train_list.mat`` / ``test_list.mat``."""
    images = root / "Images" if (root / "Images").is_dir() or not (root / "images").is_dir() else root / "images"
    require_dir(images, _HINT)
    lists = _list_dir(root)
    parsed = {}
    for part in ("train", "test"):  # both, so the class names and a leak between them are checked for any split
        mat_path = lists / f"{part}_list.mat"
        mat = load_mat(mat_path, ("file_list", "labels"), _HINT)
        files = mat_strings(mat_path, "file_list", mat["file_list"])
        labels = mat_ints(mat_path, "labels", mat["labels"])
        if len(files) != len(labels):
            raise AnnotationError(mat_path, f"file_list has {len(files)} entries but labels has {len(labels)}")
        parsed[part] = (mat_path, [relative_image_path(mat_path, None, f) for f in files], labels)

    folder_of: dict[int, tuple[str, str]] = {}
    label_of_folder: dict[str, int] = {}
    seen: dict[str, str] = {}
    for mat_path, files, labels in parsed.values():
        for i, (rel, y) in enumerate(zip(files, labels)):
            where = f"{mat_path.name}: file_list[{i}]"
            if y < 1:
                raise AnnotationError(mat_path, f"labels[{i}] = {y} must be >= 1")
            if rel in seen:
                raise AnnotationError(mat_path, f"file_list[{i}] = {rel!r} is listed twice (first at {seen[rel]})")
            seen[rel] = where
            folder = rel.split("/")[0] if "/" in rel else f"class_{y:03d}"
            if label_of_folder.setdefault(folder, y) != y:
                raise AnnotationError(mat_path, f"file_list[{i}] = {rel!r} has label {y}, but folder {folder!r} "
                                                f"has label {label_of_folder[folder]} elsewhere")
            if y not in folder_of:
                folder_of[y] = (folder, where)
            elif folder_of[y][0] != folder:
                raise AnnotationError(mat_path, f"file_list[{i}] = {rel!r} has label {y}, but label {y} is folder "
                                                f"{folder_of[y][0]!r} at {folder_of[y][1]}")
    used = sorted(folder_of)
    label_of = {y: i for i, y in enumerate(used)}
    classes = [folder_of[y][0] for y in used]

    samples: list[tuple[str, int]] = []
    sources: list[str] = []
    for part in ("train", "test") if split == "all" else (split,):
        mat_path, files, labels = parsed[part]
        samples += [(os.path.join(str(images), *rel.split("/")), label_of[y]) for rel, y in zip(files, labels)]
        sources += [f"{mat_path}: file_list[{i}]" for i in range(len(files))]
    return Listing(samples, classes, str(root), sources)
