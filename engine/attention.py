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

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init (PyTorch's default bounds, own generator), so that two encoders built from the
        same backbone weights are identical and an index can rebuild its encoder from a name."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / self.conv.in_channels ** 0.5
        self.conv.weight.uniform_(-bound, bound, generator=gen)
        self.conv.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(fmap)).amax(dim=1, keepdim=True)


def attention_pool(fmap: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
    """``avgpool(F ⊙ A)`` -> (B, C); with ``attn=None`` it is plain global average pooling."""
    weighted = fmap if attn is None else fmap * attn
    return weighted.mean(dim=(2, 3))
