"""NABirds (Van Horn et al. 2015), official distribution layout.

Root = the ``nabirds`` folder (or a folder that contains it)::

    images/<class_id>/<file>.jpg
    images.txt              <image_uuid> <relative path under images/>
    image_class_labels.txt  <image_uuid> <class_id>
    train_test_split.txt    <image_uuid> <1 = train, 0 = test>
    classes.txt             <class_id> <class name>      (all 1,011 hierarchy nodes)
    bounding_boxes.txt      <image_uuid> <x> <y> <w> <h> (optional)

Class ids are sparse (``classes.txt`` also names the inner nodes of ``hierarchy.txt``); only classes
that have images are kept and renumbered 0..554 by class id. ``hierarchy.txt``, ``photographers.txt``
and ``sizes.txt`` are not read.
"""

from __future__ import annotations

from pathlib import Path

from engine.datasets.base import Listing, register_dataset
from engine.datasets.cub import find_layout_root, read_id_layout


@register_dataset("nabirds")
def read_nabirds(root: Path, split: str) -> Listing:
    """NABirds; train/test from ``train_test_split.txt`` (all = both)."""
    base = find_layout_root(root, "nabirds")
    return read_id_layout(base, split, hint="expected the NABirds layout: images.txt, image_class_labels.txt, "
                                            "train_test_split.txt, classes.txt, images/")
