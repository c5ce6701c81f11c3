"""Which encoder built an index: a rebuildable spec and the feature fingerprint that guards searches.

The feature fingerprint is ``<weights fingerprint>|pooling=<mode>|input=<size>``: the weights hash is
:func:`engine.checkpoint.fingerprint_state` of the tensors that shape the features (the whole state dict with
attention pooling, equal to a checkpoint's recorded fingerprint; the backbone only with GAP, whose head is
unused), and pooling and crop size are appended because they change the features as much as the weights do.
Two encoders give comparable features exactly when their feature fingerprints are equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from indexer.errors import EncoderMismatchError, IndexFormatError


@dataclass
class EncoderSpec:
    """How to rebuild an encoder: a checkpoint directory, or a backbone name with its weights."""

    checkpoint: str | None = None  # absolute path of a checkpoint directory (engine.checkpoint)
    backbone: str | None = None  # registered backbone name, when not a checkpoint
    weights: str | None = None  # backbone weights: None (random init), "imagenet", or a state-dict path
    pooling: str | None = None  # "attention" | "gap"; None = the checkpoint's / the factory default
    input_size: int | None = None  # centre-crop size; None = the encoder's default
    view: str | None = None  # center | full | pad (engine.preprocess.view_transform); None = the encoder's default

    def __post_init__(self):
        if (self.checkpoint is None) == (self.backbone is None):
            raise ValueError("EncoderSpec needs exactly one of checkpoint= or backbone=")

    @classmethod
    def parse(cls, name: str, weights: str | None = None, pooling: str | None = None,
              input_size: int | None = None, view: str | None = None) -> "EncoderSpec":
        """A checkpoint directory path or a backbone name (the same rule as ``create_encoder``)."""
        from engine.encoder import is_checkpoint_ref

        if is_checkpoint_ref(name):
            if weights is not None:
                raise ValueError("--weights applies to backbone names, not to checkpoints")
            return cls(checkpoint=str(Path(name).expanduser().resolve()), pooling=pooling, input_size=input_size,
                       view=view)
        if weights not in (None, "imagenet"):
            weights = str(Path(weights).expanduser().resolve())
        return cls(backbone=name, weights=weights, pooling=pooling, input_size=input_size, view=view)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        spec = cls(**{k: d.get(k) for k in ("checkpoint", "backbone", "weights", "pooling", "input_size", "view")})
        if "view" not in d and spec.backbone is not None:
            spec.view = "center"  # recorded before views existed: the centre crop was the only one
        return spec

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def rebuildable(self) -> bool:
        """False for a randomly initialised backbone: rebuilding it gives different weights. (A fresh
        encoder's attention head has a deterministic init; the fingerprint check on loading catches any
        drift.)"""
        return self.checkpoint is not None or self.weights is not None

    def describe(self) -> str:
        """One-line reference, e.g. ``efficientnet_lite0:imagenet:gap@224`` or the checkpoint path."""
        if self.checkpoint:
            return self.checkpoint
        view = "" if self.view in (None, "center") else f"/{self.view}"
        return (f"{self.backbone}:{self.weights or 'random'}:{self.pooling or 'gap'}@{self.input_size or 'default'}"
                + view)

    def create(self):
        """Build the encoder (imports torch)."""
        from engine.encoder import create_encoder

        if self.checkpoint:
            return create_encoder(self.checkpoint, pooling=self.pooling, input_size=self.input_size, view=self.view)
        return create_encoder(self.backbone, self.weights, pooling=self.pooling, input_size=self.input_size,
                              view=self.view)


def weights_fingerprint(encoder) -> str:
    """Hash of the tensors that shape the features (:func:`engine.checkpoint.fingerprint_state`).

    With attention pooling that is the whole state dict, so it equals a checkpoint's recorded fingerprint.
    With GAP the attention head is unused, so its tensors are left out: features that do not depend on the head
    get a fingerprint that does not either (a fresh backbone's untrained head, or its init, cannot make
    ``efficientnet_lite0 + imagenet + gap`` look like another encoder).
    """
    from engine.checkpoint import fingerprint_state

    if encoder.config.pooling == "attention":
        fp = encoder.fingerprint
        return fp or fingerprint_state(encoder.state_dict())
    return fingerprint_state({k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")})


def feature_fingerprint(encoder) -> str:
    """Weights hash plus the settings that change features: ``sha256:...|pooling=gap|input=224``, and
    ``|view=full`` for a view of the photo other than the centre crop (older indexes keep their fingerprint)."""
    cfg = encoder.config
    view = getattr(cfg, "view", "center")
    return (f"{weights_fingerprint(encoder)}|pooling={cfg.pooling}|input={cfg.input_size}"
            + ("" if view == "center" else f"|view={view}"))


def spec_of(encoder) -> EncoderSpec:
    """A best-effort spec for an already-built encoder object (its source path is not known)."""
    cfg = encoder.config
    ckpt = encoder.checkpoint_path
    if ckpt:
        return EncoderSpec(checkpoint=str(ckpt), pooling=cfg.pooling, input_size=cfg.input_size, view=cfg.view)
    if encoder.checkpoint_config is not None:
        # Loaded from a checkpoint whose path we were not told: record the architecture; load_encoder
        # will refuse to guess and ask for the encoder.
        return EncoderSpec(backbone=cfg.backbone, weights=None, pooling=cfg.pooling, input_size=cfg.input_size,
                           view=cfg.view)
    weights = cfg.init_weights if cfg.init_weights in (None, "imagenet") else str(cfg.init_weights)
    return EncoderSpec(backbone=cfg.backbone, weights=weights, pooling=cfg.pooling, input_size=cfg.input_size,
                       view=cfg.view)


def resolve_encoder(encoder):
    """``Encoder | EncoderSpec | str`` -> ``(encoder, spec, feature fingerprint)``; a string is a checkpoint
    directory or a backbone name with its defaults (``EncoderSpec.parse(name, weights, ...)`` for options)."""
    if isinstance(encoder, str):
        encoder = EncoderSpec.parse(encoder)
    if isinstance(encoder, EncoderSpec):
        enc = encoder.create()
    else:
        enc = encoder
    spec = replace(encoder if isinstance(encoder, EncoderSpec) else spec_of(enc),
                   pooling=enc.config.pooling, input_size=enc.config.input_size,
                   view=enc.config.view)  # the caller's spec untouched
    return enc, spec, feature_fingerprint(enc)


def load_recorded_encoder(header):
    """Rebuild the encoder recorded in an index header and verify its fingerprint: the building encoder, which
    fills the stored space (an adapted index's query encoder adds its head: ``Index.load_encoder``)."""
    try:
        spec = EncoderSpec.from_dict(header.encoder.spec or {})
    except (TypeError, ValueError):
        raise IndexFormatError("header.json records no rebuildable encoder; pass an encoder explicitly") from None
    if not spec.rebuildable:
        raise IndexFormatError(
            f"the index was built with a randomly initialised or unrecorded encoder ({spec.describe()}), which "
            "cannot be rebuilt; pass the encoder (or --checkpoint) explicitly"
        )
    enc = spec.create()
    fp = feature_fingerprint(enc)
    want = (header.adapt or {}).get("base_fingerprint") or header.encoder.fingerprint
    if fp != want:
        raise EncoderMismatchError(want or "?", fp, "load the recorded encoder")
    return enc
