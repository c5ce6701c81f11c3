"""Stanford Cars, FGVC-Aircraft and Oxford Flowers-102 in torchvision's folder layouts.

The readers parse the official annotation files themselves (torchvision keeps its sample lists in private
attributes, ``_samples`` / ``_image_files``, and checks md5 sums in a private ``_check_integrity``), producing
the very lists torchvision's ``StanfordCars`` / ``FGVCAircraft`` / ``Flowers102`` build (tests/test_datasets.py
compares them). Every file is checked so a missing one is named, the contents are validated (labels in range,
no duplicates), and any failure is an :class:`AnnotationError` naming the annotation file and entry. ``root`` is
the folder torchvision expects as its ``root`` or the dataset folder inside it (``stanford_cars``,
``fgvc-aircraft-2013b``, ``flowers-102``).

Splits:
    cars:       train = devkit/cars_train_annos.mat (8,144), test = cars_test_annos_withlabels.mat (8,041).
    aircraft:   variant level (100 classes); train = ``trainval`` (6,667), test = ``test`` (3,333).
    flowers102: train = ``trnid`` (1,020, as in the PP-SSL paper), test = ``tstid`` (6,149); the official
                ``valid`` set (1,020) is only in ``all``. setid.mat/imagelabels.mat md5 sums are not
                enforced (torchvision's check would reject re-saved copies); their contents are validated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from engine.datasets.annotations import (load_mat, mat_ints, mat_strings, read_records, require_dir,
                                         require_file)
from engine.datasets.base import AnnotationError, Listing, register_dataset


def _tv_parent(root: Path, folder: str) -> Path:
    """The ``root`` torchvision wants: the parent of ``folder`` when the user pointed at ``folder`` itself."""
    if root.name == folder and not (root / folder).exists():
        return root.parent
    return root


def _check_labels(samples: list[tuple[str, int]], nclasses: int, blame: Path, where: Callable[[int], str]) -> None:
    for i, (_, y) in enumerate(samples):
        if not 0 <= y < nclasses:
            raise AnnotationError(blame, f"{where(i)}: class {y + 1} outside 1..{nclasses}")


# --------------------------------------------------------------------------------------------- Stanford Cars

_CARS_HINT = ("torchvision StanfordCars layout: stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
              "cars_train/, cars_test_annos_withlabels.mat, cars_test/}")


@register_dataset("cars")
def read_cars(root: Path, split: str) -> Listing:
    """Stanford Cars (196 classes), the layout of ``torchvision.datasets.StanfordCars``."""
    parent = _tv_parent(root, "stanford_cars")
    base = require_dir(parent / "stanford_cars", _CARS_HINT)
    devkit = require_dir(base / "devkit", _CARS_HINT)
    meta_path = devkit / "cars_meta.mat"
    classes = mat_strings(meta_path, "class_names", load_mat(meta_path, ("class_names",), _CARS_HINT)["class_names"])
    samples: list[tuple[str, int]] = []
    sources: list[str] = []
    for part in ("train", "test") if split == "all" else (split,):
        if part == "train":
            mat_path, image_dir = devkit / "cars_train_annos.mat", base / "cars_train"
        else:
            mat_path, image_dir = base / "cars_test_annos_withlabels.mat", base / "cars_test"
        require_file(mat_path, _CARS_HINT)
        require_dir(image_dir, _CARS_HINT)
        part_samples = _cars_annotations(mat_path, image_dir)
        _check_labels(part_samples, len(classes), mat_path, lambda i: f"annotations[{i}]")
        samples += part_samples
        sources += [f"{mat_path}: annotations[{i}]" for i in range(len(part_samples))]
    _no_duplicate_paths(samples, sources)
    return Listing(samples, classes, str(base), sources)


def _cars_annotations(mat_path: Path, image_dir: Path) -> list[tuple[str, int]]:
    """``(image_dir/fname, class - 1)`` for each entry of an annotations struct array (as torchvision)."""
    anns = np.atleast_1d(load_mat(mat_path, ("annotations",), _CARS_HINT)["annotations"]).ravel()
    if not anns.dtype.names or not {"fname", "class"} <= set(anns.dtype.names):
        raise AnnotationError(mat_path, f"annotations has no fname/class fields (fields: {anns.dtype.names})")
    names = mat_strings(mat_path, "annotations.fname", anns["fname"])
    labels = mat_ints(mat_path, "annotations.class", anns["class"])
    return [(os.path.join(image_dir, name), y - 1) for name, y in zip(names, labels)]


# --------------------------------------------------------------------------------------------- FGVC-Aircraft

_AIRCRAFT_HINT = ("torchvision FGVCAircraft layout: fgvc-aircraft-2013b/data/{variants.txt, "
                  "images_variant_trainval.txt, images_variant_test.txt, images/}")


@register_dataset("aircraft")
def read_aircraft(root: Path, split: str) -> Listing:
    """FGVC-Aircraft at variant level, the layout of ``torchvision.datasets.FGVCAircraft``."""
    parent = _tv_parent(root, "fgvc-aircraft-2013b")
    data = require_dir(parent / "fgvc-aircraft-2013b", _AIRCRAFT_HINT) / "data"
    require_dir(data / "images", _AIRCRAFT_HINT)
    variants_txt = data / "variants.txt"
    variant_line: dict[str, int] = {}
    # torchvision reads every line as a class name, so blank lines are errors here.
    for lineno, (name,) in read_records(variants_txt, 1, "<variant name>", rest=True, allow_blank=False,
                                        hint=_AIRCRAFT_HINT):
        if name in variant_line:
            raise AnnotationError(variants_txt, f"duplicate variant {name!r} (first at line {variant_line[name]})",
                                  lineno)
        variant_line[name] = lineno
    samples: list[tuple[str, int]] = []
    sources: list[str] = []
    classes = list(variant_line)  # variants.txt order, as torchvision
    label_of = {name: i for i, name in enumerate(classes)}
    seen: dict[str, str] = {}
    for part in ("trainval", "test") if split == "all" else ("trainval" if split == "train" else "test",):
        list_txt = data / f"images_variant_{part}.txt"
        records = read_records(list_txt, 2, "<image name> <variant name>", rest=True, allow_blank=False,
                               hint=_AIRCRAFT_HINT)
        for lineno, (image, variant) in records:
            if variant not in variant_line:
                raise AnnotationError(list_txt, f"variant {variant!r} is not listed in variants.txt", lineno)
            where = f"{list_txt}:{lineno}"
            if image in seen:
                raise AnnotationError(list_txt, f"duplicate image {image!r} (first at {seen[image]})", lineno)
            seen[image] = where
        samples += [(os.path.join(data, "images", f"{image}.jpg"), label_of[variant]) for _, (image, variant) in records]
        sources += [f"{list_txt}:{lineno}" for lineno, _ in records]
    return Listing(samples, classes, str(data.parent), sources)


# --------------------------------------------------------------------------------------------- Flowers-102

_FLOWERS_HINT = "torchvision Flowers102 layout: flowers-102/{jpg/, imagelabels.mat, setid.mat}"
_FLOWERS_KEYS = {"train": ("trnid",), "test": ("tstid",), "all": ("trnid", "valid", "tstid")}
@register_dataset("flowers102")
def read_flowers102(root: Path, split: str) -> Listing:
    """Oxford Flowers-102, the layout of ``torchvision.datasets.Flowers102`` (class names from its public
    ``classes`` list)."""
    from torchvision.datasets import Flowers102

    parent = _tv_parent(root, "flowers-102")
    base = require_dir(parent / "flowers-102", _FLOWERS_HINT)
    require_dir(base / "jpg", _FLOWERS_HINT)
    labels_mat = base / "imagelabels.mat"
    labels = mat_ints(labels_mat, "labels", load_mat(labels_mat, ("labels",), _FLOWERS_HINT)["labels"])
    class_names = list(Flowers102.classes)
    nclasses = len(class_names)
    for i, y in enumerate(labels):
        if not 1 <= y <= nclasses:
            raise AnnotationError(labels_mat, f"labels[{i}] = {y} outside 1..{nclasses}")
    setid_mat = base / "setid.mat"
    setid = load_mat(setid_mat, ("trnid", "valid", "tstid"), _FLOWERS_HINT)
    seen: dict[int, str] = {}
    for key in ("trnid", "valid", "tstid"):  # all three, so an image in two splits is caught for any split
        for i, image_id in enumerate(mat_ints(setid_mat, key, setid[key])):
            if not 1 <= image_id <= len(labels):
                raise AnnotationError(setid_mat, f"{key}[{i}] = image id {image_id} has no label in "
                                                 f"imagelabels.mat ({len(labels)} labels)")
            if image_id in seen:
                raise AnnotationError(setid_mat, f"{key}[{i}] = image id {image_id} is already in {seen[image_id]}")
            seen[image_id] = f"{key}[{i}]"
    samples: list[tuple[str, int]] = []
    sources: list[str] = []
    for key in _FLOWERS_KEYS[split]:
        ids = mat_ints(setid_mat, key, setid[key])
        samples += [(os.path.join(base, "jpg", f"image_{i:05d}.jpg"), labels[i - 1] - 1) for i in ids]
        sources += [f"{setid_mat}: {key}[{i}]" for i in range(len(ids))]
    return Listing(samples, class_names, str(base), sources)


def _no_duplicate_paths(samples: list[tuple[str, int]], sources: list[str]) -> None:
    first: dict[str, str] = {}
    for (path, _), where in zip(samples, sources):
        if path in first:
            file, _, entry = where.partition(": ")
            raise AnnotationError(file, f"{entry}: image {os.path.basename(path)} is listed twice "
                                        f"(first at {first[path]})")
        first[path] = where
