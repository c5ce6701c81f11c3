"""Learned PCA whitening of the retrieval feature, fitted on unlabeled photos of the target collection.

The classic unsupervised step of instance retrieval (Jégou & Chum 2012; Radenović et al. 2018): centre the
L2-normalised pooled features on the collection's mean, rotate onto its principal axes, divide each axis by
``sigma ** power`` (``power`` 0.5 = "square-root" whitening, which equalises less than full whitening and
is more robust with few images) and keep the ``dim`` leading axes, then L2-normalise again. Directions that
every photo of the collection shares (the background of a domain, the camera) stop dominating the cosine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Whitening(nn.Module):
    """``L2norm((f - mean) @ proj)``: (B, C) L2-normalised features -> (B, dim).

    Args:
        in_dim: C, the pooled feature width.
        dim: output width (the retrieval feature's length).
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("proj", torch.eye(in_dim, dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize((f.float() - self.mean) @ self.proj, dim=1)


def fit_whitening(features: np.ndarray | torch.Tensor, dim: int, power: float = 0.5,
                  eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (C,), proj (C, dim))`` from L2-normalised features (N, C) of unlabeled training photos.

    Computed in float64 (an SVD of the centred features). ``dim`` must be at most ``min(N - 1, C)``: beyond
    the data's rank the axes are noise.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    n, c = x.shape
    if not 1 <= dim <= min(n - 1, c):
        raise ValueError(f"whitening dim must be in [1, {min(n - 1, c)}] for {n} features of width {c}, got {dim}")
    mean = x.mean(dim=0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    sigma = s[:dim] / (n - 1) ** 0.5
    proj = vt[:dim].T / (sigma + eps) ** power
    return mean.float(), proj.float()
