"""Retrieval evaluation during training: leave-one-out rank-k / mAP with both poolings from one pass."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from engine.embed import autocast_for
from engine.metrics import retrieval_metrics

POOLINGS = ("attention", "gap")


@torch.no_grad()
def embed_both(encoder, dataset, device, batch_size: int = 128, amp: bool = True, workers: int = 0,
               progress: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One forward pass per batch -> L2-normalised features for each pooling, and the labels."""
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats: dict[str, list] = {p: [] for p in POOLINGS}
    labels = []
    for images, ys, _paths in tqdm(loader, desc="eval", disable=not progress, leave=False, unit="batch"):
        images = images.to(device, non_blocking=True)
        with autocast_for(device, amp):
            fmap = encoder.forward_features(images)
        fmap = fmap.float()
        for p in POOLINGS:
            feats[p].append(encoder.forward_head(fmap, p).cpu().numpy())
        labels.append(np.asarray(ys, dtype=np.int64))
    encoder.train(was_training)
    return {p: np.concatenate(v) for p, v in feats.items()}, np.concatenate(labels)


def retrieval_eval(encoder, dataset, device, **kw) -> dict[str, dict[str, float]]:
    """``{"attention": {"rank-1": .., "rank-5": .., "mAP": .., ...}, "gap": {...}}`` as fractions."""
    feats, labels = embed_both(encoder, dataset, device, **kw)
    return {p: {k: float(v) for k, v in retrieval_metrics(f, labels).summary.items()} for p, f in feats.items()}
