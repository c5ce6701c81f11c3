"""Linear probe with label proportions (the paper's classification protocol, Tab. 1).

Frozen encoder features (L2-normalised, the checkpoint's pooling) of the train split; for each
proportion p, a class-stratified subset with ceil(p% of each class) images (at least one); a linear
layer trained by full-batch L-BFGS on cross-entropy with a fixed L2 penalty; top-1 on the test split.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import PPSSLError

L2 = 1e-4  # weight penalty of the probe (fixed: no tuning on the test split)
MAX_ITER = 200  # L-BFGS iterations


class ProbeError(PPSSLError, ValueError):
    """Bad probe arguments (proportions out of range, empty splits)."""


def parse_proportions(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ProbeError(f"--proportions expects comma-separated percentages, got {text!r}") from None
    if not values or any(not 0 < v <= 100 for v in values):
        raise ProbeError(f"proportions must be in (0, 100], got {text!r}")
    return values


def stratified_subset(labels: np.ndarray, percent: float, seed: int = 0) -> np.ndarray:
    """Indices of ceil(percent% of each class) samples (at least 1 per class), seeded, sorted."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, math.ceil(len(idx) * percent / 100.0))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep))


def fit_linear(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = L2, max_iter: int = MAX_ITER,
               seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic for a given seed)."""
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    layer = torch.nn.Linear(xt.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(xt), yt) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer


def probe_features(train_x, train_y, test_x, test_y, proportions, num_classes: int, seed: int = 0) -> list[dict]:
    rows = []
    for p in proportions:
        idx = stratified_subset(train_y, p, seed)
        layer = fit_linear(train_x[idx], train_y[idx], num_classes, seed=seed)
        with torch.no_grad():
            pred = layer(torch.as_tensor(test_x, dtype=torch.float32)).argmax(1).numpy()
        rows.append({"proportion": p, "train_images": int(len(idx)), "top1": float((pred == test_y).mean())})
    return rows


def run_probe(checkpoint: str, dataset: str, root: str, proportions: list[float], *, weights=None, pooling=None,
              input_size=None, view=None, batch_size: int = 64, workers: int = 2, device=None,
              seed: int = 0) -> dict:
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.encoder import create_encoder

    enc = create_encoder(checkpoint, weights, pooling=pooling, input_size=input_size, view=view)
    tf = enc.transform()
    train = build_dataset(dataset, root, split="train", transform=tf)
    test = build_dataset(dataset, root, split="test", transform=tf)
    if len(train) == 0 or len(test) == 0:
        raise ProbeError(f"{root}: empty train or test split")
    kw = dict(batch_size=batch_size, num_workers=workers, device=device)
    tr_x, tr_y = extract_features(enc, train, desc="embedding train", **kw)
    te_x, te_y = extract_features(enc, test, desc="embedding test", **kw)
    rows = probe_features(tr_x, tr_y, te_x, te_y, proportions, len(train.classes), seed)
    return {"encoder": checkpoint, "pooling": enc.config.pooling, "dataset": dataset, "root": str(root),
            "test_images": int(len(te_y)), "l2": L2, "seed": seed, "rows": rows}
