"""ONNX Runtime inference of the retrieval feature on CPU: the encoder's whole ``forward`` (backbone, attention
pooling, L2 normalisation, retrieval head) exported once per weights + input size, run by onnxruntime.

Measured 1.5-2.5x faster than PyTorch's channels_last forward on 2 CPU cores (benchmarks/results/
embed_throughput.md). The export is cached (``<checkpoint>/onnx/`` when writable, else ``$PPSSL_HOME/onnx``)
under a key made of the weights' fingerprint, the pooling and the input size, with a JSON record of what it
was made from and the file's SHA-256: a stale, foreign or altered file is refused and exported again. Before
first use in a process, its output is compared with PyTorch's on the first real batch (cosine >= 0.9999 for
every image); on any failure :func:`runner_for` returns None, the reason is logged once, and the caller stays
on PyTorch. ``PPSSL_INFERENCE=torch`` turns the backend off, ``=onnxruntime`` makes a failure an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

ENV = "PPSSL_INFERENCE"  # auto (default) | onnxruntime | torch
MIN_COSINE = 0.9999  # export accepted when every checked image's ORT and PyTorch features agree this well
CHECK_IMAGES = 8  # images of the first real batch compared at first use
OPSET = 17
_LOCK = threading.Lock()
#: encoder -> (weights version, runner or None, reason): kept outside the module so that copying an encoder
#: (GradCAM's private copy) never tries to copy an onnxruntime session
_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class OrtError(RuntimeError):
    """The ONNX Runtime path could not be prepared (raised only when it was required)."""


def backend_choice(requested: str | None = None) -> str:
    """``auto`` | ``onnxruntime`` | ``torch``: the caller's request, else ``$PPSSL_INFERENCE``, else auto."""
    choice = (requested or os.environ.get(ENV) or "auto").lower()
    if choice not in ("auto", "onnxruntime", "torch"):
        raise OrtError(f"{ENV}/backend must be auto, onnxruntime or torch, got {choice!r}")
    return choice


def cache_dir(encoder) -> Path:
    """Where exports of ``encoder`` are kept: beside its checkpoint when writable, else the user cache."""
    ckpt = getattr(encoder, "checkpoint_path", None)
    if ckpt and os.access(ckpt, os.W_OK):
        return Path(ckpt) / "onnx"
    base = os.environ.get("PPSSL_HOME") or Path.home() / ".cache" / "ppssl"
    return Path(base) / "onnx"


def _weights_version(encoder) -> int:
    """Changes whenever a parameter or buffer is modified in place or replaced (a cheap staleness check)."""
    return sum(t._version + id(t) for t in list(encoder.parameters()) + list(encoder.buffers()))


def export_key(encoder) -> dict:
    """What the exported graph computes: weights (with the retrieval head), pooling and input size."""
    from engine.checkpoint import fingerprint_state

    fp = getattr(encoder, "fingerprint", None) or fingerprint_state(encoder.state_dict())
    cfg = encoder.config
    return {"fingerprint": fp, "pooling": cfg.pooling, "input_size": int(cfg.input_size),
            "feature_dim": int(encoder.feature_dim), "opset": OPSET}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _export(encoder, path: Path, input_size: int) -> None:
    """``torch.onnx.export`` of ``encoder.forward`` with a dynamic batch axis, written atomically."""
    from engine.atomic import atomic_path

    model = encoder.eval()
    x = torch.zeros(2, 3, input_size, input_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: fast and needs no extra package
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["images"],
                              output_names=["features"], dynamic_axes={"images": {0: "batch"},
                                                                       "features": {0: "batch"}},
                              opset_version=OPSET)
        except Exception:  # noqa: BLE001 - gone in a future torch: its successor (needs onnxscript)
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["images"],
                              output_names=["features"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))


class OrtRunner:
    """An onnxruntime session computing ``encoder(x)``; ``run`` takes and returns float32 numpy arrays."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between runs: a build's DataLoader workers (and the UI's other sessions) need those cores
        # (docs/performance.md §1: it helped a loaded machine in an ad-hoc A/B, changed nothing on a quiet one)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        arr = x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
        return self.session.run(None, {"images": arr.astype(np.float32, copy=False)})[0]


def load_or_export(encoder) -> Path:
    """The cached export for ``encoder`` (exported now if missing, stale, foreign or altered)."""
    key = export_key(encoder)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    d = cache_dir(encoder)
    path, meta_path = d / f"{name}.onnx", d / f"{name}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and path.is_file() and meta.get("sha256") == _file_sha256(path):
            return path
        log.info("onnx export %s is stale or altered: exporting again", path)
    except (OSError, ValueError):
        pass
    from engine.atomic import atomic_write_json

    d.mkdir(parents=True, exist_ok=True)
    _export(encoder, path, key["input_size"])
    atomic_write_json(meta_path, {"key": key, "sha256": _file_sha256(path), "torch": torch.__version__})
    return path


def _check(runner: OrtRunner, encoder, x: torch.Tensor) -> float:
    """Smallest cosine between ORT and PyTorch features over the first images of a real batch."""
    x = x[:CHECK_IMAGES].detach().cpu().float().contiguous()
    with torch.inference_mode():
        ref = encoder(x).float().numpy()
    got = runner.run(x)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("-inf")
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return float(cos.min())


def runner_for(encoder, x: torch.Tensor, backend: str | None = None) -> OrtRunner | None:
    """The ORT runner for ``encoder`` (prepared and checked against PyTorch on batch ``x`` the first time),
    or None when the PyTorch path must be used (GPU, backend ``torch``, or a failure, logged once)."""
    choice = backend_choice(backend)
    if choice == "torch" or next(encoder.parameters()).device.type != "cpu":
        return None
    version = _weights_version(encoder)
    state = _STATES.get(encoder)
    if state is not None and state[0] == version:
        if state[1] is None and choice == "onnxruntime":
            raise OrtError(f"ONNX Runtime unavailable for this encoder: {state[2]}")
        return state[1]
    with _LOCK:
        state = _STATES.get(encoder)
        if state is not None and state[0] == version:
            return state[1]
        runner, reason = None, ""
        try:
            runner = OrtRunner(load_or_export(encoder), torch.get_num_threads())
            cos = _check(runner, encoder, x)
            if not cos >= MIN_COSINE:
                reason = f"ONNX Runtime features differ from PyTorch's (min cosine {cos:.6f} < {MIN_COSINE})"
                runner = None
        except Exception as exc:  # noqa: BLE001 - any failure means: stay on PyTorch
            reason = f"{type(exc).__name__}: {exc}"
            runner = None
        if runner is None:
            log.warning("embedding with PyTorch instead of ONNX Runtime: %s", reason)
        _STATES[encoder] = (version, runner, reason)
    if runner is None and choice == "onnxruntime":
        raise OrtError(f"ONNX Runtime unavailable for this encoder: {reason}")
    return runner


def fallback_reason(encoder) -> str | None:
    """Why ``encoder`` embeds with PyTorch (None: it uses ONNX Runtime, or was not prepared yet)."""
    state = _STATES.get(encoder)
    return state[2] if state is not None and state[1] is None else None
