"""Dataset readers for the official layouts of the fine-grained benchmarks (nothing is downloaded).

``build_dataset(name, root, split)`` returns an :class:`ImageListDataset` whose items are
``(image, label, path)``. Names: ``cub200`` (also the synthetic world), ``nabirds``, ``cars``,
``aircraft``, ``flowers102``, ``dogs``, ``butterfly200``, ``folder``, ``images`` (any folder of photos); each reader's module documents its
layout and which official lists make up ``train`` and ``test``. A missing or malformed annotation file
raises :class:`AnnotationError` naming the file (and line).
"""

from engine.datasets.base import (
    SPLITS,
    AnnotationError,
    DatasetError,
    ImageListDataset,
    Listing,
    build_dataset,
    list_datasets,
    register_dataset,
)

# Importing the reader modules registers them.
from engine.datasets import butterfly, cub, dogs, folder, images, nabirds, torchvision_sets  # noqa: E402,F401  isort: skip

__all__ = [
    "SPLITS",
    "AnnotationError",
    "DatasetError",
    "ImageListDataset",
    "Listing",
    "build_dataset",
    "list_datasets",
    "register_dataset",
]
