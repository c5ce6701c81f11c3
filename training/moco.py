"""The PP-SSL model: a learnable student (query encoder + heads) and a momentum copy updated by EMA.

Learnable (SGD): ``student`` = engine :class:`~engine.encoder.Encoder` (backbone + attention head),
the MoCo projection head and, with AIS, the student projection to the teacher's width.
Momentum (EMA only, ``requires_grad=False``): ``momentum`` = copies of the backbone and projection head.
Neither the teacher nor the text embeddings are parameters of this model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import attention_pool
from engine.encoder import Encoder


class ProjectionHead(nn.Module):
    """MoCo projection head as the paper describes it: two FC layers with ReLU, then a linear layer with BN.

    ``Linear(C, H) - ReLU - Linear(H, H) - ReLU - Linear(H, D) - BatchNorm1d(D)``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Student(nn.Module):
    """Everything trained by SGD. ``forward(x)`` returns the tensors every loss needs.

    Outputs (dict): ``fmap`` F (B, C, h, w); ``attn`` A (B, 1, h, w); ``q`` the L2-normalised MoCo query
    (projection of GAP(F)); ``ais`` the L2-normalised student embedding ``W avgpool(F ⊙ A)`` (AIS only);
    ``stages`` the hooked intermediate maps (``--cam-layer layer1..layer4`` only).

    ``aux_to_backbone=False`` feeds the attention head and the AIS branch a detached F: L_AIS and L_IADM then
    train only those heads (where to look), and the backbone learns from the contrastive loss alone (what).
    """

    def __init__(self, encoder: Encoder, proj_hidden: int, proj_dim: int, ais_dim: int | None = None,
                 hook_stage: str | None = None, aux_to_backbone: bool = True):
        super().__init__()
        self.aux_to_backbone = aux_to_backbone
        self.encoder = encoder
        self.projector = ProjectionHead(encoder.backbone.out_channels, proj_hidden, proj_dim)
        self.ais_proj = nn.Linear(encoder.backbone.out_channels, ais_dim, bias=False) if ais_dim else None
        self.hook_stage = hook_stage
        if hook_stage is not None and hook_stage not in encoder.backbone.stages:
            raise ValueError(f"backbone {encoder.config.backbone} has no stage {hook_stage!r}")

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """F and the requested stage map. The hook lives only for this forward pass, so no copy of the
        backbone (the momentum encoder, DDP replicas) ever carries it."""
        if self.hook_stage is None:
            return self.encoder.forward_features(x), {}
        captured: dict[str, torch.Tensor] = {}
        stage = self.encoder.backbone.stages[self.hook_stage]
        handle = stage.register_forward_hook(lambda _m, _i, out: captured.__setitem__(self.hook_stage, out))
        try:
            return self.encoder.forward_features(x), captured
        finally:
            handle.remove()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap, stages = self._features(x)
        f_aux = fmap if self.aux_to_backbone else fmap.detach()
        attn = self.encoder.attention(f_aux)
        q = F.normalize(self.projector(attention_pool(fmap, None)), dim=1)
        out = {"fmap": fmap, "attn": attn, "q": q, "stages": stages}
        if self.ais_proj is not None:
            pooled = attention_pool(f_aux, attn)  # Eq. 2: avgpool(F ⊙ A)
            out["ais"] = F.normalize(self.ais_proj(pooled), dim=1)  # Eq. 3: learnable W, then L2
        return out


class MomentumEncoder(nn.Module):
    """EMA copy of the student's backbone and projection head; produces the MoCo keys."""

    def __init__(self, student: Student):
        super().__init__()
        self.backbone = copy.deepcopy(student.encoder.backbone)
        self.projector = copy.deepcopy(student.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(attention_pool(self.backbone(x), None)), dim=1)

    @torch.no_grad()
    def update(self, student: Student, m: float) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` for parameters (BN statistics stay the key encoder's own)."""
        pairs = [(self.backbone, student.encoder.backbone), (self.projector, student.projector)]
        for mine, theirs in pairs:
            for pk, pq in zip(mine.parameters(), theirs.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)
