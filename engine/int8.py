"""int8 inference of the retrieval feature: ONNX Runtime static quantisation, calibrated on the collection's photos.

The fp32 export of the encoder *without its retrieval head* (:func:`engine.ort.load_or_export`) is quantised with
ONNX Runtime's own tools (``quant_pre_process`` then ``quantize_static``, QDQ format: int8 weights, uint8
activations whose ranges come from calibration photos). A retrieval head (a recipe checkpoint's or an adapted
index's whitening) stays fp32 and is applied after, in torch, so an adapted index's gallery (int8 base features
projected by the head) and its queries go through the same arithmetic, and one int8 model serves the plain and the
adapted view of an index.

The quantised file is made once per (fp32 export, calibration photos, settings) and cached beside the fp32 export
(``<cache>/int8-<key>.onnx`` + a JSON record of the key and the file's SHA-256): a stale, foreign or altered file
is refused and made again. Settings were chosen on cub100's validation part (benchmarks/results/int8.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantSettings:
    """How the int8 model is made. The defaults were chosen on cub100's validation part and the demo's validation
    worlds (benchmarks/results/int8.md): per-tensor weight scales lost 10 mAP; per-channel with every conv in int8
    lost up to 0.56; keeping the first and last convs in fp32 lost at most 0.26 at 2.0x the fp32 forward; ONNX
    Runtime's histogram calibrations (entropy, percentile) hold every activation of every calibration photo in
    memory (~0.13 GB each at 288 px) and did no better at 64 photos."""

    method: str = "minmax"  # activation range calibration: minmax | entropy | percentile (99.999th)
    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    fp32_ops: tuple[str, ...] = ("stem", "last")  # convs left in fp32: "stem" (the first), "last" (the last)
    calibration_images: int = 256  # photos of the collection the activation ranges are measured on
    seed: int = 0  # which photos: a seeded sample, recorded by content hash

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"int8 calibration method must be one of {METHODS}, got {self.method!r}")
        bad = set(self.fp32_ops) - {"stem", "last"}
        if bad:
            raise ValueError(f"fp32_ops may name 'stem' and 'last', got {sorted(bad)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fp32_ops"] = list(self.fp32_ops)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSettings":
        d = dict(d)
        d["fp32_ops"] = tuple(d.get("fp32_ops", ()))
        return cls(**d)


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (x86 ``avx512_vnni`` / ``avx_vnni``; other
    architectures are assumed to). On x86 without them ONNX Runtime's u8 x s8 kernels sum pairs in saturating
    16-bit registers, and the chosen quantisation of Lite0 agrees less with fp32 (mean cosine 0.945 on an AVX2-only
    EPYC, under the 0.95 the build checks): there an int8 build falls back to fp32 with that reason."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        return "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


def calibration_digest(shas: Sequence[str]) -> str:
    """One hash for the calibration photos (their content hashes, in the order they were fed)."""
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def sample_indices(n: int, count: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of ``min(n, count)`` positions out of ``n`` (sorted: files are read in order)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, count), replace=False))


def check_indices(n: int, calibration: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` seeded positions outside ``calibration`` (the agreement check's photos: not the ones the ranges
    were measured on); drawn from the calibration photos only when no others exist."""
    rest = np.setdiff1d(np.arange(n), calibration)
    pool = rest if len(rest) else np.asarray(calibration)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(pool, size=min(len(pool), count), replace=False))


def _fp32_nodes(model_path: Path, fp32_ops: Sequence[str]) -> list[str]:
    """Names of the nodes ``fp32_ops`` asks to keep in float."""
    if not fp32_ops:
        return []
    import onnx

    convs = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Conv"]
    out = []
    if "stem" in fp32_ops and convs:
        out.append(convs[0])
    if "last" in fp32_ops and convs:
        out.append(convs[-1])
    return out


def quantize(fp32_path: Path, out_path: Path, calibration: np.ndarray, settings: QuantSettings,
             batch_size: int = 16) -> None:
    """Write the int8 model of ``fp32_path`` to ``out_path`` (atomically), calibrated on ``calibration``
    (float32 (N, 3, S, S), the encoder's preprocessed inputs)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from engine.atomic import atomic_path

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.at = 0

        def get_next(self):
            if self.at >= len(calibration):
                return None
            batch = np.ascontiguousarray(calibration[self.at:self.at + batch_size], dtype=np.float32)
            self.at += batch_size
            return {"images": batch}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    with tempfile.TemporaryDirectory(prefix="ppssl-int8-") as tmp, atomic_path(out_path) as dst:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))  # shape inference + graph folding, as ORT's docs advise
        quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=settings.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=_fp32_nodes(pre, settings.fp32_ops),
                        extra_options={"CalibTensorRangeSymmetric": False})


def int8_key(fp32_key: dict, calib_digest: str, settings: QuantSettings) -> dict:
    """What the int8 file computes: the fp32 export it came from, the calibration photos and the settings."""
    import onnxruntime

    return {"fp32": fp32_key, "calibration": calib_digest, "settings": settings.to_dict(),
            "onnxruntime": onnxruntime.__version__}


def load_or_quantize(base_encoder, calibration, calib_shas: Sequence[str], settings: QuantSettings) -> Path:
    """The cached int8 model of ``base_encoder`` (an encoder without retrieval head), made now when missing, stale,
    foreign or altered. ``calibration``: the preprocessed photos whose content hashes are ``calib_shas`` (float32
    (N, 3, S, S)), or a callable returning them, called only when the model has to be made (a cached model needs
    the hashes alone)."""
    from engine.ort import cache_dir, cached_file, export_key, load_or_export

    if getattr(base_encoder, "whiten", None) is not None:
        raise ValueError("quantise the encoder without its retrieval head (indexer.adapt.without_head)")
    key = int8_key(export_key(base_encoder), calibration_digest(calib_shas), settings)

    def make(path: Path) -> None:
        quantize(load_or_export(base_encoder), path, calibration() if callable(calibration) else calibration,
                 settings)

    return cached_file(cache_dir(base_encoder), "int8-", key, make)
