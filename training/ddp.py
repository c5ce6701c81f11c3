"""Multi-process helpers for torchrun + DistributedDataParallel (single process: all no-ops).

Launch: ``torchrun --nproc_per_node=N -m ppssl train ...``. The process group is read from the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str | None = None) -> torch.device:
    """Join the torchrun process group if WORLD_SIZE > 1; return this rank's device."""
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        from engine.errors import PPSSLError

        raise PPSSLError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    want_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws > 1 and not is_dist():
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if want_cuda:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if ws > 1 else torch.cuda.current_device())
    return torch.device(device or "cpu")


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 in rank order (no gradient); identity alone."""
    if not is_dist() or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None):
    """MoCo's shuffle-BN: gather the key batch, permute it globally, hand each rank a slice.

    Each rank's momentum-encoder BatchNorm then sees a different sub-batch than its query encoder,
    so BN statistics cannot leak which key is the positive. Returns ``(x_shuffled, idx_unshuffle)``.
    """
    if not is_dist() or world_size() == 1:
        return x, None
    gathered = all_gather_cat(x)
    n = gathered.shape[0]
    idx = torch.randperm(n, generator=generator).to(x.device)
    dist.broadcast(idx, src=0)
    unshuffle = torch.argsort(idx)
    return gathered[idx.view(world_size(), -1)[rank()]], unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor | None) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on the momentum encoder's outputs."""
    if idx_unshuffle is None:
        return x
    gathered = all_gather_cat(x)
    return gathered[idx_unshuffle.view(world_size(), -1)[rank()]]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks (for logging)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def barrier() -> None:
    if is_dist():
        dist.barrier()
