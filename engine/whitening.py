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


#: settings of :func:`fit_neighbour_head`, first chosen on cub100's validation part of the train split
#: (docs/history.md), checked one at a time on both validation parts (cub100 val_ids.txt,
#: cars98 held-out) by ``python -m benchmarks.head_settings`` (benchmarks/results/head_settings.md)
PCA_DIM = 512
REFINE_STEPS = 300
REFINE_LR = 1e-3
REFINE_TEMPERATURE = 0.1
REFINE_BATCH = 2048


def _whitened(x: torch.Tensor, pca_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, pca, z)``: square-root PCA whitening to ``pca_dim`` dims and the L2-normalised whitened features."""
    mean, pca = fit_whitening(x, pca_dim, power=0.5)
    return mean, pca, F.normalize((x - mean) @ pca, dim=1)


def _nearest(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each row's k most similar other rows (exact, chunked cosine scan)."""
    n = len(z)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    out = torch.empty(n, k, dtype=torch.long)
    for s in range(0, n, REFINE_BATCH):
        sim = z[s:s + REFINE_BATCH] @ z.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0  # never oneself
        out[s:s + REFINE_BATCH] = sim.topk(k, dim=1).indices
    return out


def neighbour_indices(features: np.ndarray | torch.Tensor, k: int, pca_dim: int = PCA_DIM,
                      head: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(N, k) nearest neighbours of each feature among the others, in the same whitened space the retrieval
    head starts from (the neighbours that :func:`fit_neighbour_head` and neighbour positives use), or, given a
    fitted ``head`` ``(mean, proj)``, in that head's space (where retrieval is better, so are the neighbours)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if head is not None:
        mean, proj = head
        return _nearest(F.normalize((x - mean) @ proj, dim=1), k)
    return _nearest(_whitened(x, min(pca_dim, len(x) - 1, x.shape[1]))[2], k)


def fit_neighbour_head(features: np.ndarray | torch.Tensor, dim: int, k: int = 10, *, steps: int = REFINE_STEPS,
                       pca_dim: int = PCA_DIM, seed: int = 0, progress: bool = False, lr: float = REFINE_LR,
                       temperature: float = REFINE_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, proj)`` like :func:`fit_whitening`, with the projection refined by each photo's neighbours.

    Unsupervised: each training photo's ``k`` nearest neighbours in the (PCA-whitened) feature space of the
    start encoder are taken as its positives, the rest of the collection as negatives, and a linear map from
    ``pca_dim`` to ``dim`` dims (initialised to the leading whitened axes) is trained with InfoNCE
    (temperature 0.1). Photos of one species sit close but not always first; pulling each photo's neighbourhood
    together and pushing the rest apart sharpens exactly the structure retrieval ranks by. The result composes
    into one ``(mean, proj)`` pair, so the encoder's :class:`Whitening` applies it at no extra cost.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    n, c = x.shape
    pca_dim = min(pca_dim, n - 1, c)
    if not 1 <= dim <= pca_dim:
        raise ValueError(f"head dim must be in [1, {pca_dim}] for {n} features of width {c}, got {dim}")
    mean, pca, z = _whitened(x, pca_dim)
    knn = _nearest(z, k)
    gen = torch.Generator().manual_seed(seed)
    w = torch.eye(pca_dim, dim).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="retrieval head", disable=not progress, leave=False):
        rows = torch.randperm(n, generator=gen)[:REFINE_BATCH] if n > REFINE_BATCH else torch.arange(n)
        e = F.normalize(z @ w, dim=1)
        logits = e[rows] @ e.T / temperature
        logits[torch.arange(len(rows)), rows] = float("-inf")
        loss = -logits.log_softmax(dim=1).gather(1, knn[rows]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mean, (pca @ w.detach()).contiguous()
