"""Any folder of photos, for self-supervised training and evaluation: ``ppssl train --images DIR``.

Every image under ``root`` (recursively; hidden files and folders skipped) is one sample. Labels are not
needed: when every image sits inside a top-level sub-folder and there are at least two such folders, the
folder names are taken as classes (so retrieval can be measured on a held-out part); otherwise all images
share the single class ``UNLABELED``. There is no official test split: ``train``, ``test`` and ``all`` are
the whole tree (hold a part out with ``holdout``).
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.datasets.base import AnnotationError, Listing, register_dataset
from engine.imageio import is_image_file

UNLABELED = "(unlabeled)"


def list_images(root: Path) -> list[str]:
    """Sorted absolute paths of the regular image files under ``root`` (hidden entries skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [p for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)
                and os.path.isfile(p := os.path.join(dirpath, f))]
    return sorted(out)


def folder_labels(root: Path, paths: list[str]) -> list[str] | None:
    """Top-level folder of each image when they look like classes (all in one of >= 2 folders), else None."""
    tops = [Path(os.path.relpath(p, root)).parts for p in paths]
    if not tops or any(len(t) < 2 for t in tops):
        return None
    names = [t[0] for t in tops]
    return names if len(set(names)) >= 2 else None


@register_dataset("images")
def read_images(root: Path, split: str) -> Listing:
    """Every image under ``root``; classes from top-level folders when they look like classes (see module)."""
    paths = list_images(root)
    if not paths:
        raise AnnotationError(root, "no image files found (searched recursively)")
    labels = folder_labels(root, paths)
    if labels is None:
        return Listing([(p, 0) for p in paths], [UNLABELED], str(root))
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return Listing([(p, index[c]) for p, c in zip(paths, labels)], classes, str(root))
