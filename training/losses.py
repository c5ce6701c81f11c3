"""PP-SSL losses as pure functions (no state, no parameters): Eq. 1, Eq. 4 and Eq. 8 of the paper.

See docs/method.md for how each equation was read from the prose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE (Eq. 1): ``-log exp(q·k/T) / (exp(q·k/T) + sum_j exp(q·n_j/T))``, mean over the batch.

    Args:
        q: (B, D) L2-normalised queries (gradient flows here).
        k: (B, D) L2-normalised positive keys (treated as constants).
        queue: (K, D) L2-normalised negatives (constants).
        temperature: T.
    """
    k = k.detach()
    queue = queue.detach()
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.t().to(q.dtype)
    logits = torch.cat([l_pos, l_neg], dim=1).float() / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def ais_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """AIS distillation (Eq. 4): ``KL(softmax(z_t/tau) || softmax(z_s/tau))``, summed over the corpus, mean
    over the batch.

    Args:
        student_logits: (B, M) student image-text logits (cosine similarities to the M descriptions).
        teacher_logits: (B, M) teacher logits (constants).
        tau: distillation temperature.
    """
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def map_to_distribution(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sum-normalise a non-negative map (B, 1, h, w) or (B, h, w) into (B, h*w) probabilities.

    Scale-invariant, which a CAM target needs (gradient magnitudes drift over training). A map
    with no positive mass becomes uniform.
    """
    flat = m.reshape(m.shape[0], -1).float().clamp_min(0)
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > eps, flat / total.clamp_min(eps), uniform)


ATTN_NORMS = ("sum", "softmax")


def attention_kl_loss(attn_map: torch.Tensor, cam: torch.Tensor, norm: str = "sum",
                      eps: float = 1e-3) -> torch.Tensor:
    """IADM (Eq. 8): ``KL(p_cam || p_attn)`` over the h*w positions, mean over the batch.

    ``p_cam`` = the CAM sum-normalised (:func:`map_to_distribution`; the CAM is a constant target).
    ``p_attn`` from the attention map A (B, 1, h, w):

    * ``"sum"`` (default): ``(A + eps·mean(A)) / sum(...)`` - the very weights with which the inference
      feature ``avgpool(F ⊙ A)`` averages F (it is L2-normalised, so A's scale drops out), so the loss
      controls how the feature pools; the small floor keeps it finite where the ReLU map is zero.
    * ``"softmax"``: softmax over h*w of A (the first reading): shift-invariant, so it leaves the pooling
      weights A themselves undetermined.

    Both maps must have the same h, w.
    """
    if attn_map.shape[-2:] != cam.shape[-2:]:
        raise ValueError(f"attention map {tuple(attn_map.shape)} and CAM {tuple(cam.shape)} differ in size")
    if norm not in ATTN_NORMS:
        raise ValueError(f"norm must be one of {ATTN_NORMS}, got {norm!r}")
    p_cam = map_to_distribution(cam.detach())
    a = attn_map.reshape(attn_map.shape[0], -1).float()
    if norm == "softmax":
        log_p_attn = F.log_softmax(a, dim=1)
    else:
        a = a.clamp_min(0)
        a = a + eps * a.mean(dim=1, keepdim=True).detach() + 1e-12
        log_p_attn = a.log() - a.sum(dim=1, keepdim=True).log()
    return F.kl_div(log_p_attn, p_cam, reduction="batchmean")
