"""Encoders: a backbone plus the PP-SSL attention head, and the inference feature.

``create_encoder`` is the single factory: a registered backbone name (with ``weights``) or a path to
a saved checkpoint directory.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionHead, attention_pool
from engine.backbones import backbone_spec, create_backbone
from engine.preprocess import view_transform
from engine.whitening import Whitening

Pooling = Literal["attention", "gap"]

#: the view of a fresh encoder (``create_encoder`` with a backbone name): the whole photo resized to the square
#: input. Chosen on the validation parts of cars98 and cub100, without training: +7 / +7 rank-1 and +4 / +5 mAP
#: over the centre crop of ImageNet EfficientNet-Lite0 (benchmarks/results/weak_start.md). A checkpoint keeps the
#: view it records (older ones: ``center``); ``view="center"`` is the paper's evaluation protocol.
DEFAULT_VIEW = "full"


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder and preprocess its inputs."""

    backbone: str  # registered backbone name (engine.backbones)
    attn_k: int = 64  # K, filters of the attention head's 1x1 conv before the max-out
    pooling: Pooling = "gap"  # "attention": avgpool(F ⊙ A) (PP-SSL); "gap": plain global average pooling
    input_size: int = 224  # side of the square fed to the network
    view: str = "center"  # how a photo becomes that square (engine.preprocess.view_transform): center | full | pad
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation mean (RGB)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # input normalisation std (RGB)
    feature_dim: int = 0  # length of the retrieval feature: C, or whiten_dim (filled in by the factory)
    whiten_dim: int = 0  # >0: the pooled feature is PCA-whitened to this many dims (engine.whitening); 0: none
    init_weights: str | None = None  # provenance of the backbone's initial weights ("imagenet", a path, None)
    extra: dict = field(default_factory=dict)  # free-form notes carried along with the checkpoint

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder config fields: {sorted(unknown)}")
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std))
        return cls(**d)


class Encoder(nn.Module):
    """Backbone + attention head with a timm-like surface.

    ``forward_features(x)`` -> last feature map F (B, C, h, w); ``attention(F)`` -> A (B, 1, h, w);
    ``forward_head(F)`` -> the L2-normalised retrieval feature; ``forward(x)`` chains them.
    """

    def __init__(self, config: EncoderConfig, weights: str | None = None):
        super().__init__()
        self.backbone = create_backbone(config.backbone, weights)
        self.head = AttentionHead(self.backbone.out_channels, config.attn_k)
        self.head.reset_parameters(seed=0)
        self.whiten = Whitening(self.backbone.out_channels, config.whiten_dim) if config.whiten_dim else None
        self.config = replace(config, feature_dim=config.whiten_dim or self.backbone.out_channels)  # caller's untouched
        # set by engine.checkpoint when saved or loaded; None for an encoder built in memory
        self.fingerprint: str | None = None  # sha256 of the weights (checkpoint identity)
        self.checkpoint_config: dict | None = None  # the training config stored with the checkpoint
        self.checkpoint_path: str | None = None  # where derived files (ONNX exports) may be cached

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)

    def pool(self, fmap: torch.Tensor, pooling: Pooling | None = None) -> torch.Tensor:
        """Un-normalised pooled feature (B, C)."""
        pooling = pooling or self.config.pooling
        if pooling not in ("attention", "gap"):
            raise ValueError(f"pooling must be 'attention' or 'gap', got {pooling!r}")
        return attention_pool(fmap, self.head(fmap) if pooling == "attention" else None)

    def forward_head(self, fmap: torch.Tensor, pooling: Pooling | None = None) -> torch.Tensor:
        """The retrieval feature: L2-normalised pooling, then the learned whitening when the encoder has one."""
        f = F.normalize(self.pool(fmap, pooling).float(), dim=1)
        return f if self.whiten is None else self.whiten(f)

    def set_whitening(self, mean: torch.Tensor | None, proj: torch.Tensor | None = None) -> None:
        """Attach a fitted whitening (``engine.whitening.fit_whitening``), or remove it with ``None``."""
        if mean is None:
            self.whiten, self.config.whiten_dim = None, 0
        else:
            self.whiten = Whitening(proj.shape[0], proj.shape[1]).to(self.backbone_device())
            self.whiten.mean.copy_(mean)
            self.whiten.proj.copy_(proj)
            self.config.whiten_dim = proj.shape[1]
        self.config.feature_dim = self.config.whiten_dim or self.backbone.out_channels
        self.fingerprint = None  # the weights changed: a new checkpoint gets a new fingerprint

    def backbone_device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def transform(self):
        """The evaluation transform matching this encoder's input size and normalisation."""
        return view_transform(self.config.view, self.config.input_size, self.config.mean, self.config.std)


def is_checkpoint_ref(name: str) -> bool:
    """The one rule for what ``name`` refers to: True for a checkpoint, False for a registered backbone.

    A registered backbone name is a backbone, unless a file or directory of that name exists too: that is
    ambiguous and refused (write ``./NAME`` for the path). Any other existing path, or a name that looks
    like a path (a separator, a ``.json``/``.safetensors`` suffix), is a checkpoint.
    """
    from engine.backbones import list_backbones

    exists = Path(name).expanduser().exists()
    if name in list_backbones():
        if exists:
            raise ValueError(f"{name!r} is both a backbone name and an existing path; write ./{name} for the path")
        return False
    return exists or "/" in name or os.sep in name or name.endswith((".json", ".safetensors"))


def create_encoder(name: str, weights: str | None = None, *, pooling: Pooling | None = None,
                   attn_k: int = 64, input_size: int | None = None, view: str | None = None) -> Encoder:
    """Build an encoder from a registered backbone name, or load one from a checkpoint directory.

    Args:
        name: a backbone name (``resnet18``, ``resnet50``, ``efficientnet_lite0``, ``tinycnn``) or a path
            to a checkpoint saved by :func:`engine.checkpoint.save_checkpoint`.
        weights: backbone weights for a name: ``None``, ``"imagenet"`` or a local state-dict path.
        pooling: ``"attention"`` or ``"gap"``; defaults to the checkpoint's, or ``"gap"`` for a fresh
            encoder (its attention head is untrained).
        attn_k: K of the attention head (fresh encoders only).
        input_size: the square input's side; defaults to the checkpoint's, or the backbone's ``test_input_size``
            (the size it retrieves best at: 288 for efficientnet_lite0), else its ``input_size``.
        view: how a photo is fitted into the square input (``center`` crop, ``full`` photo, ``pad``ded);
            defaults to the checkpoint's, or :data:`DEFAULT_VIEW` for a backbone name.
    """
    from engine.errors import SettingError

    if view is not None:
        from engine.preprocess import VIEWS

        if view not in VIEWS:
            raise SettingError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    if input_size is not None and not 16 <= input_size <= 4096:
        raise SettingError(f"input size must be between 16 and 4096 pixels, got {input_size}")
    if is_checkpoint_ref(name):
        from engine.checkpoint import load_checkpoint

        if weights is not None:
            raise ValueError("weights= applies to backbone names, not to checkpoints")
        enc = load_checkpoint(name)
        if pooling:
            enc.config.pooling = pooling
        if input_size:
            enc.config.input_size = input_size
        if view:
            enc.config.view = view
        return enc
    spec = backbone_spec(name)
    cfg = EncoderConfig(backbone=name, attn_k=attn_k, pooling=pooling or "gap",
                        input_size=input_size or spec.test_input_size or spec.input_size, view=view or DEFAULT_VIEW,
                        init_weights=weights)
    enc = Encoder(cfg, weights)
    enc.config.mean, enc.config.std = enc.backbone.mean, enc.backbone.std
    return enc
