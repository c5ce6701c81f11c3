"""Fixtures of the reliability suite: the hostile corpus, a tiny seeded encoder checkpoint, a clean gallery
and an index built from it. Everything is generated locally in a few seconds (tinycnn at input 64); the
generators live in ``benchmarks.reliability``, which the reliability benchmarks share."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.gallery import make_clean_gallery
from benchmarks.reliability.hostile import make_hostile_corpus

REPO = Path(__file__).resolve().parents[2]
INPUT_SIZE = 64  # tinycnn crop size used by every index in this suite (fast on 2 CPU cores)


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
    from indexer import EmbedOptions, Source, build_index

    base = tmp_path_factory.mktemp("clean")
    make_clean_gallery(base / "gallery")
    build_index(base / "index", Source(images=base / "gallery"), str(encoder_ckpt),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    return {"base": base, "gallery": base / "gallery", "index": base / "index", "ckpt": encoder_ckpt}
