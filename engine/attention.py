"""The PP-SSL attention head and the attention-weighted pooling of the inference feature.

Paper Eq. 2/10 (see docs/method.md): ``A = maxout_k(ReLU(Conv1x1_{C->K}(F)))`` and the feature is
``L2norm(avgpool(F ⊙ A))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionHead(nn.Module):
    """1x1 conv C->K, ReLU, max-out over the K channels -> attention map A of shape (B, 1, h, w).

    Args:
        in_channels: C, channels of the backbone's last feature map.
        k: K, number of 1x1 filters whose pointwise maximum forms the map.
    """

    def __init__(self, in_channels: int, k: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, k, kernel_size=1)
        self.k = k

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(fmap)).amax(dim=1, keepdim=True)


def attention_pool(fmap: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
    """``avgpool(F ⊙ A)`` -> (B, C); with ``attn=None`` it is plain global average pooling."""
    weighted = fmap if attn is None else fmap * attn
    return weighted.mean(dim=(2, 3))
