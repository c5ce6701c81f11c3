"""Adapted indexes: the unsupervised retrieval head fitted on the gallery's own vectors, searched in its space.

An index keeps the encoder's own features in ``vectors.f32`` (the *stored* space) and, once adapted, searches
``L2norm((f - mean) @ proj)`` of them (the *search* space): the retrieval head of the real-photo recipe
(:func:`engine.whitening.fit_neighbour_head`: PCA whitening refined with each photo's nearest neighbours as
positives), fitted on the gallery without labels. Nothing is re-embedded to adapt, refit or drop the head.

On disk: ``adapter/`` is an engine checkpoint of the building encoder with the head attached (queries pass
through it, so every query path — CLI, app, GradCAM, ONNX Runtime — searches the adapted space), and
``header.json`` records ``adapt`` (head hash, sizes, fit settings) and the adapted encoder's feature
fingerprint, which guards searches as any fingerprint does. ``index add``/``remove`` keep the head fixed;
``index build --rebuild`` refits it on the live vectors (``--no-adapt`` drops it). The header is the commit
point: the adapter directory is written before it, the FAISS files are removed before it and rebuilt after
(readers rebuild a missing FAISS file from the stored vectors), so a kill anywhere leaves a consistent index.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.errors import EncoderMismatchError, IndexFormatError
from indexer.header import IndexHeader

ADAPTER_DIR = "adapter"
#: vectors per PCA dimension of the head's whitening (None pca_dim): a whitening estimated from about as many
#: vectors as dimensions amplifies noise axes; chosen on the validation galleries of benchmarks/results/adapt.md
PCA_PER = 8
#: galleries smaller than this are not adapted by default (``--adapt`` forces it): chosen on the validation
#: galleries of benchmarks/results/adapt.md (``python -m benchmarks.adapt``), where every gallery from 705 photos up
#: gained mAP at a rank-1 cost of at most 1 point, and several smaller ones (583 and less) lost rank-1 to the head
MIN_GALLERY = 700


@dataclass
class AdaptSettings:
    """How the head is fitted (the recipe's head settings: configs/finetune_lite0.yaml)."""

    dim: int = 128  # search-space width (at most pca_dim)
    k: int = 10  # nearest neighbours taken as each photo's positives
    pca_dim: int | None = None  # PCA dims the head starts from; None = min(512, n // PCA_PER) for n vectors
    sample: int = 20_000  # the fit sees at most this many vectors (seeded sample); all are projected
    seed: int = 0  # seeds the sample and the fit

    def to_dict(self) -> dict:
        return asdict(self)


def fit_head(stored: np.ndarray, settings: AdaptSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mean (C,), proj (C, dim), info)``: the retrieval head fitted on ``stored`` vectors (or a sample)."""
    from engine.whitening import fit_neighbour_head

    n = len(stored)
    if n < 3:
        raise ValueError(f"adapting needs at least 3 vectors, the index holds {n}")
    rows = np.arange(n)
    if n > settings.sample:
        rows = np.sort(np.random.default_rng(settings.seed).choice(n, settings.sample, replace=False))
    x = np.ascontiguousarray(stored[rows], np.float32)
    t = time.perf_counter()
    pca_dim = settings.pca_dim or max(2, min(512, len(x) // PCA_PER))
    pca_dim = min(pca_dim, len(x) - 1, x.shape[1])
    dim = min(settings.dim, pca_dim)
    mean, proj = fit_neighbour_head(x, dim, min(settings.k, len(x) - 1), pca_dim=pca_dim, seed=settings.seed)
    info = {"fitted_on": int(len(x)), "of": int(n), "pca_dim": int(pca_dim),
            "seconds": round(time.perf_counter() - t, 2)}
    return mean.numpy(), proj.numpy(), info


def head_hash(mean: np.ndarray, proj: np.ndarray) -> str:
    from engine.checkpoint import fingerprint_state
    import torch

    return fingerprint_state({"mean": torch.as_tensor(np.asarray(mean, np.float32)),
                              "proj": torch.as_tensor(np.asarray(proj, np.float32))})


class Projector:
    """The head as a function on stored vectors: float32 (n, C) -> L2-normalised float32 (n, dim).

    Computed as the adapter encoder's :class:`engine.whitening.Whitening` computes it, in torch float32, so
    stored and query vectors go through the same arithmetic."""

    def __init__(self, mean: np.ndarray, proj: np.ndarray):
        import torch

        self.mean = torch.as_tensor(np.asarray(mean, np.float32))
        self.proj = torch.as_tensor(np.asarray(proj, np.float32))

    @property
    def dim(self) -> int:
        return int(self.proj.shape[1])

    def __call__(self, x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = np.asarray(x, np.float32)
        out = np.empty((len(x), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(x), chunk):
                f = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk]))
                out[s:s + chunk] = F.normalize((f - self.mean) @ self.proj, dim=1).numpy()
        return out


def projector(index_dir: str | Path, header: IndexHeader) -> Projector | None:
    """The head of an adapted index (read from its adapter checkpoint and checked against the header's hash),
    or None for a plain index."""
    info = header.adapt
    if not info:
        return None
    from safetensors import SafetensorError, safe_open

    path = Path(index_dir) / ADAPTER_DIR / "model.safetensors"
    try:
        with safe_open(str(path), framework="np") as fh:
            mean, proj = fh.get_tensor("whiten.mean"), fh.get_tensor("whiten.proj")
    except (OSError, SafetensorError, KeyError) as exc:
        raise IndexFormatError(f"{path}: the adapted index's head cannot be read ({exc})") from None
    if head_hash(mean, proj) != info.get("head_sha256"):
        raise IndexFormatError(f"{path}: the head does not hash to the one header.json records; the adapter was "
                               "modified or belongs to another index (rebuild with --rebuild)")
    return Projector(mean, proj)


def adapter_encoder(index_dir: str | Path, header: IndexHeader):
    """The query encoder of an adapted index: its adapter checkpoint, fingerprint checked against the header."""
    from engine.checkpoint import CheckpointError, load_checkpoint
    from indexer.encoders import feature_fingerprint

    try:
        enc = load_checkpoint(Path(index_dir) / ADAPTER_DIR)
    except CheckpointError as exc:
        raise IndexFormatError(f"the adapted index's encoder cannot be loaded: {exc}") from None
    fp = feature_fingerprint(enc)
    if fp != header.encoder.fingerprint:
        raise EncoderMismatchError(header.encoder.fingerprint, fp, "load the adapted index's encoder")
    return enc


def base_fingerprint(header: IndexHeader) -> str:
    """The feature fingerprint of the encoder that fills the stored space (the adapter without its head)."""
    return (header.adapt or {}).get("base_fingerprint") or header.encoder.fingerprint


def without_head(encoder):
    """A shallow copy of ``encoder`` that stops before its retrieval head (it shares the weights)."""
    if encoder.whiten is None:
        return encoder
    enc = copy.copy(encoder)
    enc._modules = dict(encoder._modules)
    enc._modules["whiten"] = None
    enc.config = copy.deepcopy(encoder.config)
    enc.config.whiten_dim = 0
    enc.config.feature_dim = encoder.backbone.out_channels
    enc.fingerprint = None
    return enc


def has_head(encoder) -> bool:
    """True for an encoder that already ends in a retrieval head (a recipe checkpoint): never adapted twice."""
    return encoder.whiten is not None


def adapt(w, base_encoder, settings: AdaptSettings | None = None) -> dict:
    """Fit the head on every live stored vector of the open writer ``w`` and switch the index to its space.

    Writes ``adapter/`` (``base_encoder`` + the head), drops the FAISS files and commits the new header; the
    caller rebuilds FAISS and saves. Returns the ``adapt`` header entry.
    """
    from engine.checkpoint import save_checkpoint
    from indexer.encoders import feature_fingerprint
    from indexer.header import write_header
    from indexer.store import FAISS_FILE, TRAINED_FILE

    settings = settings or AdaptSettings()
    ids, rows = w.live()
    stored = w.stored_vectors(rows)
    mean, proj, info = fit_head(stored, settings)
    enc = copy.deepcopy(without_head(base_encoder)).cpu()
    base_fp = base_fingerprint(w.header)
    if feature_fingerprint(enc) != base_fp:
        raise EncoderMismatchError(base_fp, feature_fingerprint(enc), "adapt this index")
    import torch

    enc.set_whitening(torch.as_tensor(mean), torch.as_tensor(proj))
    save_checkpoint(enc, w.dir / ADAPTER_DIR, extra={"adapted_index": str(w.dir), **info})
    entry = {"head_sha256": head_hash(mean, proj), "base_fingerprint": base_fp, "stored_dim": int(stored.shape[1]),
             "dim": int(proj.shape[1]), "settings": settings.to_dict(), **info, "fitted_at": _now()}
    for name in (FAISS_FILE, TRAINED_FILE):
        (w.dir / name).unlink(missing_ok=True)
    w.header.adapt = entry
    w.header.encoder.fingerprint = feature_fingerprint(enc)
    w.header.dim = entry["dim"]
    w.header.adapt_skipped = None
    write_header(w.dir, w.header)  # the commit point
    w.reload_space()
    return entry


def drop(w) -> None:
    """Return an adapted index to its stored space (``--rebuild --no-adapt``); the caller rebuilds FAISS."""
    from indexer.header import write_header
    from indexer.store import FAISS_FILE, TRAINED_FILE

    info = w.header.adapt
    if not info:
        return
    for name in (FAISS_FILE, TRAINED_FILE):
        (w.dir / name).unlink(missing_ok=True)
    w.header.encoder.fingerprint = info["base_fingerprint"]
    w.header.dim = int(info["stored_dim"])
    w.header.adapt = None
    write_header(w.dir, w.header)  # the commit point
    shutil.rmtree(w.dir / ADAPTER_DIR, ignore_errors=True)
    w.reload_space()


def _now() -> str:
    from indexer.manifest import now

    return now()
