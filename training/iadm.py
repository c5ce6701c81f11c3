"""IADM targets (Eq. 5-6): a GradCAM taken from the contrastive loss, on the input image or a stage map.

``cam = ReLU(sum_c(S ⊙ dL_moco/dS))`` where S is the source tensor: the (normalised) query view itself
for ``--cam-layer input`` (the paper's "layer0": the gradient-weighted original image summed over
RGB), or a backbone stage output for ``layer1..layer4`` (LCR's CAM on layer4). The map is then
average-pooled to the attention map's h x w and detached: it is a target, not a path for gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gradient_cam(source: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_c(source * d loss / d source))`` -> (B, 1, H, W), detached.

    ``source`` must be part of ``loss``'s graph (an input with ``requires_grad`` or an intermediate
    activation). The graph is retained so the training loss can still be back-propagated.
    """
    (grad,) = torch.autograd.grad(loss, source, retain_graph=True)
    cam = F.relu((source.detach().float() * grad.float()).sum(dim=1, keepdim=True))
    # an fp16 gradient overflow (AMP, before GradScaler backs off) must not poison the target: zero mass there
    return torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)


def cam_target(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool a CAM (B, 1, H, W) to the attention map's ``size`` (h, w); detached."""
    if tuple(cam.shape[-2:]) != tuple(size):
        cam = F.adaptive_avg_pool2d(cam, size)
    return cam.detach()
