"""The precision an index embeds at: fp32, or int8 (engine.int8: ONNX Runtime, calibrated on the gallery's photos).

Chosen once, when the index is created (``index build --precision fp32|int8|auto``), recorded in ``header.json``
(``precision``: the mode, the int8 model's SHA-256, the calibration photos' content hashes, the agreement and
speed measured) and part of the index's fingerprint (:func:`space_fingerprint`): an int8 index keeps its model in
``int8/model.onnx``, every later embedding of it (``index add``, a resumed build, queries from the CLI, the app
and the API) goes through that same model, and a query asking for another precision is refused, never mixed.

``auto`` picks int8 only where it was measured to pay: a backbone whose int8 retrieval stayed within 0.5 mAP of
fp32 on validation (:data:`AUTO_BACKBONES`), a gallery big enough for calibration to pay back
(:data:`AUTO_MIN_IMAGES`), a CPU forward, and on this machine an int8 forward at least :data:`AUTO_MIN_SPEEDUP`
times the fp32 one, timed side by side on the agreement check's photos. Anything else stays fp32 and says why.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from indexer.errors import IndexError_
from indexer.header import IndexHeader

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8")
INT8_DIR = "int8"
MODEL_FILE = "model.onnx"
#: backbones whose int8 features kept leave-one-out mAP within 0.5 of fp32 on cub100's validation part, plain,
#: adapted and trained (benchmarks/results/int8.md)
AUTO_BACKBONES = frozenset({"efficientnet_lite0"})
#: galleries from which making the int8 model (~6 s on 2 cores: calibration photos, quantisation, check) is repaid
#: by the faster build: a first (cold) int8 build broke even with fp32 at 2,950 images in the committed run of
#: benchmarks/results/embed_throughput.md (int8 rows; 2,856, 3,133 and 3,213 in three earlier runs), rounded up
AUTO_MIN_IMAGES = 4000
AUTO_MIN_SPEEDUP = 1.2  # int8 forward / fp32 forward on this machine, below which auto keeps fp32


def model_path(index_dir) -> Path:
    return Path(index_dir) / INT8_DIR / MODEL_FILE


def mode(header: IndexHeader) -> str:
    """``fp32`` or ``int8`` (indexes older than this field are fp32)."""
    return (header.precision or {}).get("mode", "fp32")


def spec(index_dir, header: IndexHeader):
    """The ``engine.ort.Int8Spec`` of an int8 index (its file is hashed when first used), else None."""
    info = header.precision or {}
    if info.get("mode") != "int8":
        return None
    from engine.ort import Int8Spec

    return Int8Spec(model_path(index_dir), info["sha256"])


def space_fingerprint(header: IndexHeader) -> str:
    """The fingerprint of the index's vector space: the encoder's, plus the int8 model for an int8 index."""
    fp = header.encoder.fingerprint
    info = header.precision or {}
    return f"{fp}|int8={info['sha256'][:16]}" if info.get("mode") == "int8" else fp


def encoder_part(fingerprint: str | None) -> str | None:
    """The encoder's fingerprint inside a space fingerprint."""
    return fingerprint.split("|int8=")[0] if fingerprint else fingerprint


def check_query(header: IndexHeader, requested: str | None) -> None:
    """Refuse a query precision other than the index's (``auto``/None: the index's own)."""
    if requested in (None, "auto") or requested == mode(header):
        return
    if requested not in PRECISIONS:
        raise IndexError_(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    raise IndexError_(f"this index was built at {mode(header)}; queries are embedded at the same precision "
                      f"(asked for {requested}: features of two precisions are never mixed; build another index)")


def _load(items, encoder, positions):
    """Decoded, transformed photos at ``positions`` of ``items`` as the build reads them (``ItemFiles``; unreadable
    ones left out: the build reports them), float32 (n, 3, S, S), or None when none opens."""
    import torch

    from engine.embed import decode_side
    from indexer.sources import ItemFiles

    files = ItemFiles([items[i] for i in positions], encoder.transform(), decode_side(encoder))
    xs = [x for x, *_ in (files[k] for k in range(len(files))) if x is not None]
    return torch.stack(xs) if xs else None


def _hashes(items, positions) -> tuple[list[str], list[int]]:
    """Content hashes of the files at ``positions`` that can be read, and those positions."""
    from indexer.sources import sha256_file

    shas, ok = [], []
    for i in positions:
        try:
            shas.append(sha256_file(items[i].path))
            ok.append(int(i))
        except OSError:
            continue
    return shas, ok


def _forward_seconds(fn, reps: int = 2) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def choose(index_dir: Path, encoder, items: list, requested: str, *, device=None, settings=None) -> dict:
    """Decide the precision of a new index over ``items`` (``indexer.sources.Item``) and make its int8 model.

    Returns the header entry: ``{"mode": "fp32", "requested", "reason"}`` or ``{"mode": "int8", "sha256",
    "settings", "calibration", "agreement", "speed", ...}`` (then ``int8/model.onnx`` is written). ``int8`` that
    fails (no ONNX Runtime, features that disagree with fp32) falls back to fp32 with the reason logged.
    """
    import torch

    from engine import int8
    from engine.embed import embed_batch
    from engine.ort import INT8_CHECK_IMAGES, Int8Spec, check_int8
    from indexer.adapt import without_head

    if requested not in PRECISIONS:
        raise IndexError_(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return {"mode": "fp32", "requested": "fp32"}

    def fp32(reason: str) -> dict:
        (log.warning if requested == "int8" else log.info)("index embedded at fp32: %s", reason)
        return {"mode": "fp32", "requested": requested, "reason": reason}

    if requested == "auto":
        on = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if on.type != "cpu":
            return fp32("the forward runs on a GPU (int8 is an ONNX Runtime CPU path)")
        if encoder.config.backbone not in AUTO_BACKBONES:
            return fp32(f"{encoder.config.backbone} is not validated at int8 (benchmarks/results/int8.md); "
                        "--precision int8 forces it")
        if len(items) < AUTO_MIN_IMAGES:
            return fp32(f"{len(items)} images: calibration pays back from {AUTO_MIN_IMAGES} "
                        "(benchmarks/results/embed_throughput.md); --precision int8 forces it")
    settings = settings or int8.QuantSettings()
    t0 = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401 - int8 needs it; fp32 does not
    except ImportError:
        return fp32("onnxruntime is not installed")
    calib_at = int8.sample_indices(len(items), settings.calibration_images, settings.seed)
    shas, calib_ok = _hashes(items, calib_at)  # the cache key; the photos are decoded only to make a new model
    x_chk = _load(items, encoder, int8.check_indices(len(items), calib_at, INT8_CHECK_IMAGES, settings.seed))
    if not shas or x_chk is None:
        return fp32("no calibration photo could be opened")
    base = without_head(encoder).cpu().eval()

    def calibration():
        x = _load(items, encoder, calib_ok)
        if x is None:
            raise ValueError("no calibration photo could be decoded")
        return x.numpy()

    try:
        cached = int8.load_or_quantize(base, calibration, shas, settings)
    except Exception as exc:  # noqa: BLE001 - int8 is an option: fp32 always works
        return fp32(f"quantisation failed: {type(exc).__name__}: {exc}")
    quantise_s = time.perf_counter() - t0
    dst = model_path(index_dir)
    from engine.atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(cached, tmp)
    spec_ = Int8Spec.of(dst)
    with torch.inference_mode():  # fp32 reference: the ONNX Runtime export the int8 model was made from
        ref = embed_batch(base, x_chk, precision="fp32")
    runner, agree, reason = check_int8(encoder, x_chk, spec_, ref=ref)
    if runner is None:
        dst.unlink(missing_ok=True)
        return fp32(reason)
    speed = {}
    if next(encoder.parameters()).device.type == "cpu":  # both forwards without head, side by side
        with torch.inference_mode():
            t32 = _forward_seconds(lambda: embed_batch(base, x_chk, precision="fp32"))
            t8 = _forward_seconds(lambda: runner.run_base(x_chk))
        speed = {"fp32_s": t32, "int8_s": t8, "speedup": t32 / max(t8, 1e-9), "images": int(len(x_chk))}
        if requested == "auto" and speed["speedup"] < AUTO_MIN_SPEEDUP:
            dst.unlink(missing_ok=True)
            return fp32(f"int8 forward only {speed['speedup']:.2f}x fp32's on this machine (auto needs "
                        f"{AUTO_MIN_SPEEDUP}x)")
    keys = [items[i].key for i in calib_ok]
    return {"mode": "int8", "requested": requested, "sha256": spec_.sha256, "settings": settings.to_dict(),
            "calibration": {"count": len(shas), "digest": int8.calibration_digest(shas),
                            "files": [[k, s] for k, s in zip(keys, shas)]},
            "agreement": {k: v for k, v in agree.items() if k != "ok"}, "speed": speed,
            "seconds": time.perf_counter() - t0, "quantise_seconds": quantise_s}


def bind(index_dir, header: IndexHeader, encoder) -> None:
    """Make ``encoder`` (an index's query encoder) embed at the index's precision wherever it is used."""
    from engine.ort import bind_precision

    bind_precision(encoder, spec(index_dir, header))
