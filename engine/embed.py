"""Batched feature extraction shared by evaluation, training and indexing."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16/fp16 autocast on CUDA, nothing on CPU (CPU autocast changes features for no speed gain)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def extract_pooled(encoder, dataset: Dataset, poolings=("attention", "gap"), *, batch_size: int = 64,
                   num_workers: int = 0, device: torch.device | str | None = None, amp: bool = True,
                   progress: bool = True, desc: str = "embedding") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Embed a dataset yielding ``(image_tensor, label, path)`` with one forward pass per batch.

    Returns:
        ``({pooling: features float32 (N, D) L2-normalised}, labels int64 (N,))`` in dataset order. The
        encoder's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else default_device()
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    feats: dict[str, list] = {p: [] for p in poolings}
    labels = []
    for images, ys, _paths in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        images = images.to(device, non_blocking=True)
        with autocast_for(device, amp):
            fmap = encoder.forward_features(images)
        fmap = fmap.float()
        for p in poolings:
            feats[p].append(encoder.forward_head(fmap, p).cpu().numpy())
        labels.append(np.asarray(ys, dtype=np.int64))
    encoder.train(was_training)
    if not labels:
        return {p: np.zeros((0, encoder.feature_dim), np.float32) for p in poolings}, np.zeros((0,), np.int64)
    return {p: np.concatenate(v) for p, v in feats.items()}, np.concatenate(labels)


def extract_features(encoder, dataset: Dataset, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Features with the encoder's own pooling: ``(float32 (N, D) L2-normalised, labels int64 (N,))``.

    Keyword arguments are those of :func:`extract_pooled`.
    """
    pooling = encoder.config.pooling
    feats, labels = extract_pooled(encoder, dataset, (pooling,), **kw)
    return feats[pooling], labels
