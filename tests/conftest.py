"""Shared test fixtures: paths to the shared real-photo set, deterministic torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUB100 = Path(os.environ.get("PPSSL_CUB100", REPO.parent / "shared" / "data" / "cub100"))


@pytest.fixture(scope="session")
def cub100_root() -> Path:
    if not (CUB100 / "images.txt").is_file():
        pytest.skip(f"real-photo set not found at {CUB100}")
    return CUB100


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one torch / FAISS thread avoids OpenMP spin-waiting on a shared 2-core CPU."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """Caches the code writes under $PPSSL_HOME (ONNX exports, the demo) go to a temporary home, not ~/.cache."""
    old = os.environ.get("PPSSL_HOME")
    os.environ["PPSSL_HOME"] = str(tmp_path_factory.mktemp("ppssl_home"))
    yield
    if old is None:
        os.environ.pop("PPSSL_HOME", None)
    else:
        os.environ["PPSSL_HOME"] = old
