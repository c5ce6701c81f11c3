"""Encoder checkpoints: a directory with ``model.safetensors`` and ``config.json``.

Loading never unpickles. The config records a fingerprint (SHA-256 over tensor names, dtypes, shapes
and bytes); a weights file that does not hash to it is refused, so a tampered or mismatched file
cannot pass silently. Indexes record the same fingerprint to refuse foreign encoders.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.atomic import atomic_dir
from engine.errors import PPSSLError
from engine.formats import read_format_json

FORMAT = "ppssl-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(PPSSLError, RuntimeError):
    """A checkpoint is missing, malformed, or its weights do not match its fingerprint."""


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict, independent of file layout and metadata."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def save_checkpoint(encoder, path: str | Path, training: dict | None = None, extra: dict | None = None) -> str:
    """Write ``encoder`` atomically to directory ``path``; returns its fingerprint.

    Args:
        encoder: an :class:`engine.encoder.Encoder`.
        path: target directory (replaced atomically if it exists).
        training: the training configuration to record (JSON-serialisable).
        extra: any other JSON-serialisable metadata (metrics, provenance).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    fp = fingerprint_state(state)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": encoder.config.to_dict(),
        "fingerprint": fp,
        "training": training or {},
        "extra": extra or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "fingerprint": fp})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    encoder.fingerprint = fp
    return fp


def read_checkpoint_config(path: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory (validated, weights untouched)."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory (no {CONFIG_FILE})")
    config = read_format_json(cfg_path, FORMAT, FORMAT_VERSION, ("encoder", "fingerprint"), CheckpointError,
                              kind="config")
    return config


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load an :class:`engine.encoder.Encoder`, verifying the weights against the fingerprint."""
    from engine.encoder import Encoder, EncoderConfig

    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    config = read_checkpoint_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from None
    fp = fingerprint_state(state)
    if fp != config["fingerprint"]:
        raise CheckpointError(
            f"{weights}: weights hash to {fp} but {CONFIG_FILE} records {config['fingerprint']}; "
            "the file was modified or belongs to another checkpoint"
        )
    try:
        enc_cfg = EncoderConfig.from_dict(config["encoder"])
        encoder = Encoder(enc_cfg, weights=None)
        encoder.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({exc})") from None
    encoder.fingerprint = fp
    encoder.checkpoint_config = config
    encoder.checkpoint_path = str(path.resolve())  # where derived files (ONNX exports) may be cached
    return encoder.to(map_location).eval()
