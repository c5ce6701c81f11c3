"""ONNX Runtime inference of the retrieval feature on CPU: the encoder's whole ``forward`` (backbone, attention
pooling, L2 normalisation, retrieval head) exported once per weights + input size, run by onnxruntime.

Measured 1.5-2.5x faster than PyTorch's channels_last forward on 2 CPU cores (benchmarks/results/
embed_throughput.md). The export is cached (``<checkpoint>/onnx/`` when writable, else ``$PPSSL_HOME/onnx``)
under a key made of the weights' fingerprint, the pooling and the input size, with a JSON record of what it
was made from and the file's SHA-256: a stale, foreign or altered file is refused and exported again. Before
first use in a process, its output is compared with PyTorch's on the first real batch (cosine >= 0.9999 for
every image); on any failure :func:`runner_for` returns None, the reason is logged once, and the caller stays
on PyTorch. ``PPSSL_INFERENCE=torch`` turns the backend off, ``=onnxruntime`` makes a failure an error.

int8 (engine/int8.py makes the model): :class:`Int8Spec` names a quantised file by its SHA-256. An encoder is
embedded at int8 when the caller passes the spec or when it was bound to one (:func:`bind_precision`: an int8
index binds its query encoder, so the CLI, the app and the API all query at the index's precision). The int8
path never falls back silently: its features are compared with PyTorch's fp32 ones at first use
(:func:`int8_agreement`), and a failure raises :class:`OrtError` (a build, which may still choose fp32, calls
:func:`check_int8` instead).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import PPSSLError

log = logging.getLogger(__name__)

ENV = "PPSSL_INFERENCE"  # auto (default) | onnxruntime | torch
MIN_COSINE = 0.9999  # export accepted when every checked image's ORT and PyTorch features agree this well
CHECK_IMAGES = 8  # images of the first real batch compared at first use
OPSET = 17
_LOCK = threading.Lock()
#: encoder -> (weights version, runner or None, reason): kept outside the module so that copying an encoder
#: (GradCAM's private copy) never tries to copy an onnxruntime session
_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: encoder -> (weights version, spec sha256, Int8Runner): prepared int8 sessions
_INT8: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: encoder -> Int8Spec it embeds with when the caller names no precision (an int8 index's query encoder)
_BOUND: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: A build accepts its int8 model when, over 32 held-out photos, the mean cosine of int8 to fp32 features reaches
#: the first bound and the smallest the second. On validation (benchmarks/results/int8.md) every setting that kept
#: mAP within 0.5 had mean >= 0.975 per gallery, per-tensor scales that lost 10 mAP had 0.78-0.81; no accepted
#: photo fell below 0.87. The same model at query time (one photo, maybe an odd one) is only refused below
#: INT8_QUERY_COSINE: features unrelated to fp32 mean a broken runtime, never a valid photo.
INT8_MEAN_COSINE = 0.95
INT8_MIN_COSINE = 0.5
INT8_QUERY_COSINE = 0.5
INT8_CHECK_IMAGES = 32


class OrtError(PPSSLError, RuntimeError):
    """The ONNX Runtime path could not be prepared (raised only when it was required)."""


_SCOPED: contextvars.ContextVar[str | None] = contextvars.ContextVar("ppssl_inference_backend", default=None)


@contextlib.contextmanager
def inference_backend(choice: str | None):
    """Embed with ``choice`` (``auto`` | ``onnxruntime`` | ``torch``; None = unchanged) inside the block, in this
    thread, wherever a call does not name its own backend: how a command's ``--backend`` reaches the embedding
    deep inside a build or a search without a process-wide environment variable."""
    if choice is not None:
        backend_choice(choice)  # refuse a bad name here, not at the first batch
    token = _SCOPED.set(choice) if choice is not None else None
    try:
        yield
    finally:
        if token is not None:
            _SCOPED.reset(token)


def backend_choice(requested: str | None = None) -> str:
    """``auto`` | ``onnxruntime`` | ``torch``: the caller's request, else the enclosing
    :func:`inference_backend`, else ``$PPSSL_INFERENCE``, else auto."""
    choice = (requested or _SCOPED.get() or os.environ.get(ENV) or "auto").lower()
    if choice not in ("auto", "onnxruntime", "torch"):
        raise OrtError(f"{ENV}/backend must be auto, onnxruntime or torch, got {choice!r}")
    return choice


def cache_dir(encoder) -> Path:
    """Where exports of ``encoder`` are kept: beside its checkpoint when writable, else the user cache."""
    ckpt = encoder.checkpoint_path
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

    fp = encoder.fingerprint or fingerprint_state(encoder.state_dict())
    cfg = encoder.config
    return {"fingerprint": fp, "pooling": cfg.pooling, "input_size": int(cfg.input_size),
            "feature_dim": int(encoder.feature_dim), "opset": OPSET}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(encoder, path: Path, input_size: int) -> None:
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


@dataclass(frozen=True)
class Int8Spec:
    """A quantised model (engine.int8) of an encoder's features without head, named by its file's SHA-256."""

    path: Path
    sha256: str

    @classmethod
    def of(cls, path) -> "Int8Spec":
        """The spec of the file at ``path`` as it is now."""
        return cls(Path(path), _file_sha256(Path(path)))

    def verify(self) -> None:
        """Raise :class:`OrtError` unless the file is there and hashes to :attr:`sha256` (an altered model)."""
        try:
            got = _file_sha256(Path(self.path))
        except OSError as exc:
            raise OrtError(f"int8 model {self.path} cannot be read: {exc}") from None
        if got != self.sha256:
            raise OrtError(f"int8 model {self.path} does not hash to the recorded {self.sha256[:12]} (altered or "
                           "foreign: build the index again into a new directory)")


class Int8Runner(OrtRunner):
    """The int8 session of the features without head, then the encoder's retrieval head (fp32, torch) if any."""

    def __init__(self, spec: Int8Spec, threads: int, head=None):
        spec.verify()
        super().__init__(Path(spec.path), threads)
        self.spec = spec
        import copy

        self.head = copy.deepcopy(head).cpu().float().eval() if head is not None else None

    def run_base(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """The features before the retrieval head (what the int8 model computes)."""
        return super().run(x)

    def run(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        f = self.run_base(x)
        if self.head is None:
            return f
        with torch.inference_mode():
            return self.head(torch.from_numpy(f)).numpy()


def bind_precision(encoder, spec: "Int8Spec | None") -> None:
    """Make ``spec`` the precision ``encoder`` embeds with when a caller names none (None: fp32 again)."""
    if spec is None:
        _BOUND.pop(encoder, None)
    else:
        _BOUND[encoder] = spec


def bound_precision(encoder) -> "Int8Spec | None":
    """The int8 model ``encoder`` is bound to, or None (fp32)."""
    return _BOUND.get(encoder)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def int8_agreement(runner: Int8Runner, encoder, x: torch.Tensor, strict: bool = True,
                   ref: np.ndarray | None = None) -> dict:
    """``{"mean_cosine", "min_cosine", "ok"}`` of int8 vs fp32 features on the images of batch ``x``.

    Compared before any retrieval head (the part that is quantised): a whitening head stretches low-variance
    directions, so the same int8 model would pass at build time (no head yet) and fail at query time. ``ref``: the
    fp32 features of ``x`` without head when the caller has them (ONNX Runtime fp32, itself checked against
    PyTorch), else computed here with PyTorch."""
    import torch.nn.functional as F

    x = x[:INT8_CHECK_IMAGES].detach().cpu().float().contiguous()
    if ref is None:
        with torch.inference_mode():
            fmap = encoder.forward_features(x.to(next(encoder.parameters()).device))
            ref = F.normalize(encoder.pool(fmap).float(), dim=1).cpu().numpy()
    ref = np.asarray(ref)[:len(x)]
    got = runner.run_base(x)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return {"mean_cosine": float("-inf"), "min_cosine": float("-inf"), "ok": False}
    cos = _cosines(got, ref)
    mean, low = float(cos.mean()), float(cos.min())
    ok = mean >= INT8_MEAN_COSINE and low >= INT8_MIN_COSINE if strict else mean >= INT8_QUERY_COSINE
    return {"mean_cosine": mean, "min_cosine": low, "ok": ok}


def _int8_runner(encoder, x: torch.Tensor, spec: Int8Spec, strict: bool,
                 ref=None) -> tuple["Int8Runner | None", dict, str]:
    """Prepare and check an int8 runner: ``(runner or None, agreement, reason)``."""
    try:
        runner = Int8Runner(spec, torch.get_num_threads(), encoder.whiten)
        agree = int8_agreement(runner, encoder, x, strict, ref)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who decides
        return None, {}, f"{type(exc).__name__}: {exc}"
    if not agree["ok"]:
        bounds = f"{INT8_MEAN_COSINE}, {INT8_MIN_COSINE}" if strict else f"{INT8_QUERY_COSINE}"
        return None, agree, (f"int8 features differ from fp32 (mean cosine {agree['mean_cosine']:.4f}, min "
                             f"{agree['min_cosine']:.4f}; bounds {bounds})")
    return runner, agree, ""


def check_int8(encoder, x: torch.Tensor, spec: Int8Spec, strict: bool = True,
               ref: np.ndarray | None = None) -> tuple["Int8Runner | None", dict, str]:
    """Prepare the int8 runner of ``encoder`` and check it on batch ``x`` (``ref``: see :func:`int8_agreement`):
    ``(runner or None, agreement, why not)``; ``strict``: the build's bounds, else the query-time one. A passing
    runner is kept for later :func:`runner_for` calls with the same spec."""
    runner, agree, reason = _int8_runner(encoder, x, spec, strict, ref)
    if runner is not None:
        _INT8[encoder] = (_weights_version(encoder), spec.sha256, runner)
    return runner, agree, reason


def cached_file(d: Path, prefix: str, key: dict, make) -> Path:
    """``d/<prefix><hash of key>.onnx``, reused when its JSON record names ``key`` and the file's SHA-256; else
    ``make(path)`` writes it (atomically) and the record is written after: a stale, foreign or altered file is
    made again."""
    from engine.atomic import atomic_write_json

    name = prefix + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path, meta_path = d / f"{name}.onnx", d / f"{name}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and path.is_file() and meta.get("sha256") == _file_sha256(path):
            return path
        log.info("%s is stale or altered: making it again", path)
    except (OSError, ValueError):
        pass
    d.mkdir(parents=True, exist_ok=True)
    make(path)
    atomic_write_json(meta_path, {"key": key, "sha256": _file_sha256(path), "torch": torch.__version__})
    return path


def load_or_export(encoder) -> Path:
    """The cached export for ``encoder`` (exported now if missing, stale, foreign or altered)."""
    key = export_key(encoder)
    return cached_file(cache_dir(encoder), "", key, lambda path: export_onnx(encoder, path, key["input_size"]))


def _check(runner: OrtRunner, encoder, x: torch.Tensor) -> float:
    """Smallest cosine between ORT and PyTorch features over the first images of a real batch."""
    x = x[:CHECK_IMAGES].detach().cpu().float().contiguous()
    with torch.inference_mode():
        ref = encoder(x).float().numpy()
    got = runner.run(x)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("-inf")
    return float(_cosines(got, ref).min())


def runner_for(encoder, x: torch.Tensor, backend: str | None = None,
               precision: "Int8Spec | str | None" = None) -> OrtRunner | None:
    """The ORT runner for ``encoder`` (prepared and checked against PyTorch on batch ``x`` the first time),
    or None when the PyTorch path must be used (GPU, backend ``torch``, or a failure, logged once).

    ``precision``: an :class:`Int8Spec` (int8, on the CPU whatever the encoder's device; a failure raises),
    ``"fp32"``, or None (the encoder's bound precision, else fp32)."""
    if precision is None:
        precision = _BOUND.get(encoder)
    if isinstance(precision, Int8Spec):
        version = _weights_version(encoder)
        state = _INT8.get(encoder)
        if state is not None and state[0] == version and state[1] == precision.sha256:
            return state[2]
        with _LOCK:
            runner, _agree, reason = check_int8(encoder, x, precision, strict=False)
        if runner is None:
            raise OrtError(f"cannot embed at int8 (the precision this index was built with): {reason}")
        return runner
    if precision not in (None, "fp32"):
        raise OrtError(f"precision must be fp32 or an int8 model, got {precision!r}")
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
