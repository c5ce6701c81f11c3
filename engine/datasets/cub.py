"""CUB-200-2011 (and the project's synthetic world, which writes the same layout).

Layout (root = the ``CUB_200_2011`` folder, or a folder that contains it)::

    images/<relative path>
    images.txt              <image_id> <relative path under images/>
    image_class_labels.txt  <image_id> <class_id>
    train_test_split.txt    <image_id> <1 = train, 0 = test>
    classes.txt             <class_id> <class name>
    bounding_boxes.txt      <image_id> <x> <y> <width> <height>     (optional)
    captions.txt            <image_id> <caption>                    (optional; the synthetic world)

``parts/`` and ``attributes/`` are not read. NABirds uses the same id-table layout (see ``nabirds.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.datasets.annotations import parse_float, parse_int, read_records, relative_image_path
from engine.datasets.base import AnnotationError, Listing, register_dataset

_REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_layout_root(root: Path, subdir: str) -> Path:
    """``root/subdir`` when only that holds ``images.txt``, else ``root`` (whose missing files are then reported)."""
    if (root / "images.txt").exists() or not (root / subdir / "images.txt").exists():
        return root
    return root / subdir


def read_id_layout(base: Path, split: str, hint: str) -> Listing:
    """Read the image-id tables shared by CUB-200-2011 and NABirds.

    Image ids are opaque tokens (CUB uses integers, NABirds UUIDs) that must agree across the files;
    class ids are integers. Classes are those with at least one image, ordered by class id, so labels
    are contiguous even when class ids are sparse (NABirds) and identical for every split.
    """
    images_txt = base / "images.txt"
    id_line: dict[str, int] = {}
    rel_paths: dict[str, str] = {}
    for lineno, (image_id, rel) in read_records(images_txt, 2, "<image_id> <image path>", rest=True, hint=hint):
        _no_duplicate(images_txt, lineno, image_id, id_line, "image id")
        id_line[image_id] = lineno
        rel_paths[image_id] = relative_image_path(images_txt, lineno, rel)

    classes_txt = base / "classes.txt"
    class_names: dict[int, str] = {}
    class_line: dict[int, int] = {}
    for lineno, (cid_tok, name) in read_records(classes_txt, 2, "<class_id> <class name>", rest=True, hint=hint):
        cid = parse_int(classes_txt, lineno, cid_tok, "class id")
        _no_duplicate(classes_txt, lineno, cid, class_line, "class id")
        class_line[cid] = lineno
        class_names[cid] = name

    labels_txt = base / "image_class_labels.txt"
    labels = _per_image(labels_txt, id_line, "<image_id> <class_id>", hint)
    class_of: dict[str, int] = {}
    for image_id, (lineno, tok) in labels.items():
        cid = parse_int(labels_txt, lineno, tok, "class id")
        if cid not in class_names:
            raise AnnotationError(labels_txt, f"class id {cid} is not listed in {classes_txt.name}", lineno)
        class_of[image_id] = cid

    split_txt = base / "train_test_split.txt"
    splits = _per_image(split_txt, id_line, "<image_id> <is_training_image (1 or 0)>", hint)
    is_train: dict[str, bool] = {}
    for image_id, (lineno, tok) in splits.items():
        if tok not in ("0", "1"):
            raise AnnotationError(split_txt, f"split flag {tok!r} must be 1 (train) or 0 (test)", lineno)
        is_train[image_id] = tok == "1"

    for table, file in ((labels, labels_txt), (splits, split_txt)):
        for image_id, lineno in id_line.items():
            if image_id not in table:
                raise AnnotationError(file, f"no entry for image id {image_id!r} "
                                            f"(listed at {images_txt.name}:{lineno})")

    used = sorted(set(class_of.values()))
    label_of_class = {cid: i for i, cid in enumerate(used)}
    classes = [class_names[cid] for cid in used]

    keep = [i for i in id_line if split == "all" or is_train[i] == (split == "train")]
    images_dir = os.path.join(str(base), "images")
    extras: dict[str, list] = {"image_ids": keep}
    boxes = _optional_boxes(base / "bounding_boxes.txt", id_line)
    if boxes is not None:
        extras["bounding_boxes"] = [boxes[i] for i in keep]
    captions = _optional_captions(base / "captions.txt", id_line)
    if captions is not None:
        extras["captions"] = [captions.get(i) for i in keep]
    return Listing(
        samples=[(os.path.join(images_dir, *rel_paths[i].split("/")), label_of_class[class_of[i]]) for i in keep],
        classes=classes,
        root=str(base),
        sources=[f"{images_txt}:{id_line[i]}" for i in keep],
        extras=extras,
    )


def _no_duplicate(path: Path, lineno: int, key, seen: dict, what: str) -> None:
    if key in seen:
        raise AnnotationError(path, f"duplicate {what} {key!r} (first at line {seen[key]})", lineno)


def _per_image(path: Path, id_line: dict[str, int], fmt: str, hint: str = "") -> dict[str, tuple[int, str]]:
    """``image_id -> (line, value)`` of a two-column file keyed by image id; ids must be known and unique."""
    out: dict[str, tuple[int, str]] = {}
    for lineno, (image_id, value) in read_records(path, 2, fmt, hint=hint):
        if image_id not in id_line:
            raise AnnotationError(path, f"unknown image id {image_id!r} (not in images.txt)", lineno)
        if image_id in out:
            raise AnnotationError(path, f"duplicate image id {image_id!r} (first at line {out[image_id][0]})", lineno)
        out[image_id] = (lineno, value)
    return out


def _optional_boxes(path: Path, id_line: dict[str, int]) -> dict[str, tuple[float, float, float, float]] | None:
    """Parse ``bounding_boxes.txt`` when present; every image needs exactly one box of positive size."""
    if not path.exists():
        return None
    boxes: dict[str, tuple[float, float, float, float]] = {}
    seen: dict[str, int] = {}
    for lineno, (image_id, *vals) in read_records(path, 5, "<image_id> <x> <y> <width> <height>"):
        if image_id not in id_line:
            raise AnnotationError(path, f"unknown image id {image_id!r} (not in images.txt)", lineno)
        _no_duplicate(path, lineno, image_id, seen, "image id")
        seen[image_id] = lineno
        x, y, w, h = (parse_float(path, lineno, v, name) for v, name in zip(vals, ("x", "y", "width", "height")))
        if w <= 0 or h <= 0:
            raise AnnotationError(path, f"box of image id {image_id!r} has non-positive size {w}x{h}", lineno)
        boxes[image_id] = (x, y, w, h)
    for image_id, lineno in id_line.items():
        if image_id not in boxes:
            raise AnnotationError(path, f"no box for image id {image_id!r} (listed at images.txt:{lineno})")
    return boxes


def _optional_captions(path: Path, id_line: dict[str, int]) -> dict[str, str] | None:
    """Parse ``captions.txt`` (``<image_id> <caption>``) when present; images without a line get ``None``."""
    if not path.exists():
        return None
    captions: dict[str, str] = {}
    seen: dict[str, int] = {}
    for lineno, (image_id, text) in read_records(path, 2, "<image_id> <caption>", rest=True):
        if image_id not in id_line:
            raise AnnotationError(path, f"unknown image id {image_id!r} (not in images.txt)", lineno)
        _no_duplicate(path, lineno, image_id, seen, "image id")
        seen[image_id] = lineno
        captions[image_id] = text
    return captions


@register_dataset("cub200")
def read_cub200(root: Path, split: str) -> Listing:
    """CUB-200-2011 official layout; train/test from ``train_test_split.txt`` (all = both)."""
    base = find_layout_root(root, "CUB_200_2011")
    return read_id_layout(base, split, hint="expected the CUB_200_2011 layout: " + ", ".join(_REQUIRED) + ", images/")
