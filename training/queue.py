"""The MoCo queue of negative keys: a ring buffer, gathered across ranks before each update."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MoCoQueue(nn.Module):
    """Ring buffer of ``size`` L2-normalised keys of width ``dim``.

    Buffers (saved with the resume state): ``keys`` (size, dim) and ``ptr`` (the next slot). In a
    multi-process run every rank enqueues the same globally gathered keys in the same rank order, so
    the queues stay identical everywhere without any broadcast.
    """

    def __init__(self, dim: int, size: int, generator: torch.Generator | None = None):
        super().__init__()
        if size <= 0:
            raise ValueError("queue size must be positive")
        self.size = int(size)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, gather: bool = True) -> None:
        """Replace the oldest entries by ``keys`` (B, dim), wrapping around the end of the buffer."""
        if gather:
            from training.ddp import all_gather_cat

            keys = all_gather_cat(keys)
        keys = keys.detach().to(self.keys.dtype)
        n = keys.shape[0]
        if n >= self.size:  # a batch at least as large as the queue: keep its newest `size` keys
            self.keys.copy_(keys[-self.size:])
            self.ptr.zero_()
            return
        p = int(self.ptr)
        first = min(n, self.size - p)
        self.keys[p:p + first] = keys[:first]
        if first < n:
            self.keys[: n - first] = keys[first:]
        self.ptr.fill_((p + n) % self.size)
