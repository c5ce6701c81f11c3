"""Fixtures of the reliability suite: the hostile corpus, a tiny seeded encoder checkpoint, a clean gallery
and an index built from it. Everything is generated locally in a few seconds (tinycnn at input 64)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reliability.hostile import make_hostile_corpus

REPO = Path(__file__).resolve().parents[2]
INPUT_SIZE = 64  # tinycnn crop size used by every index in this suite (fast on 2 CPU cores)


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


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """The hostile corpus (read-only for tests: copy it before changing anything)."""
    return make_hostile_corpus(tmp_path_factory.mktemp("hostile") / "corpus")


@pytest.fixture(scope="session")
def encoder_ckpt(tmp_path_factory) -> Path:
    """A seeded tinycnn checkpoint directory at input 64 (rebuildable, so indexes record it)."""
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tinycnn64"
    save_checkpoint(create_encoder("tinycnn", input_size=INPUT_SIZE), path)
    return path


@pytest.fixture(scope="session")
def clean_index(tmp_path_factory, encoder_ckpt) -> dict:
    """A flat index of a clean 12-image gallery (read-only for tests: copy it before writing)."""
    from indexer import build_index

    base = tmp_path_factory.mktemp("clean")
    make_clean_gallery(base / "gallery")
    build_index(str(encoder_ckpt), base / "index", images=base / "gallery", num_workers=0,
                progress=lambda *_: None)
    return {"base": base, "gallery": base / "gallery", "index": base / "index", "ckpt": encoder_ckpt}
