"""A small clean gallery and the record count of an index built from it: shared by the reliability tests
(``tests/reliability``) and the reliability benchmarks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np


def make_clean_gallery(folder: Path, classes: int = 3, per_class: int = 4, seed: int = 0,
                       size: tuple[int, int] = (48, 40)) -> list[Path]:
    """Small valid PNG/JPEG images in class sub-folders, a different colour cast per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        d = folder / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size[1], size[0], 3)) * 160).astype(np.uint8)
            arr[..., c % 3] += 90
            p = d / f"img{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(arr).save(p)
            paths.append(p)
    return paths


def manifest_rows(index_dir: Path) -> int:
    """Committed records of an index, read straight from SQLite (0 while it does not exist yet)."""
    path = Path(index_dir) / "manifest.sqlite"
    if not path.is_file():
        return 0
    for mode in ("mode=ro", "immutable=1"):  # immutable: a read-only directory where no -shm can be made
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=5)
            try:
                return con.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            continue
    return 0
