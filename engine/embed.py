"""The one way to turn images into retrieval features: evaluation, training reports, indexing, the UI and GradCAM
all call :func:`embed_batch` (one forward pass, AMP on CUDA only, channels_last input, float32 out)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from tqdm.auto import tqdm


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16/fp16 autocast on CUDA, nothing on CPU (CPU autocast changes features for no speed gain)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def encoder_device(encoder) -> torch.device:
    """Where ``encoder``'s weights live (inputs go there)."""
    return next(encoder.parameters()).device


def images_to_batch(encoder, images: Sequence, device: torch.device | None = None) -> torch.Tensor:
    """PIL images (any mode) -> the encoder's evaluation transform, stacked (B, 3, S, S) on ``device``."""
    tf = encoder.transform()
    x = torch.stack([tf(im.convert("RGB")) for im in images])
    return x.to(device if device is not None else encoder_device(encoder))


@contextlib.contextmanager
def channels_last(encoder):
    """Run ``encoder`` with channels_last weights inside the block (1.3-3x faster convolutions on CPU/oneDNN
    and on tensor cores: benchmarks/results/embed_throughput.md, allocator_speed.md); the encoder's own
    layout is restored after (a training student that is channels_last already stays so)."""
    convs = [p for p in encoder.parameters() if p.dim() == 4 and min(p.shape[2:]) > 1]
    was_cl = bool(convs) and convs[0].is_contiguous(memory_format=torch.channels_last) and not convs[0].is_contiguous()
    encoder.to(memory_format=torch.channels_last)
    try:
        yield encoder
    finally:
        if not was_cl:
            encoder.to(memory_format=torch.contiguous_format)


def decode_side(encoder) -> int:
    """The short side below which nothing is needed to embed with ``encoder`` (its eval transform's resize):
    gallery and query JPEGs are both decoded down to it (``open_image(min_side=...)``), so both sides of a
    search see the same pixels."""
    from engine.preprocess import resize_size

    return resize_size(encoder.config.input_size)


@torch.inference_mode()
def embed_batch(encoder, x: torch.Tensor, poolings: Sequence[str] | None = None, *, amp: bool = True,
                backend: str | None = None, precision=None):
    """Retrieval features of a preprocessed batch ``x`` (B, 3, S, S): one forward pass.

    Args:
        encoder: an ``Encoder`` in eval mode (the caller sets the mode once, not per batch).
        x: the batch, moved to the encoder's device here (channels_last).
        poolings: ``None`` -> the encoder's own pooling, returned as float32 (B, D); a sequence -> a dict
            ``{pooling: float32 (B, D)}`` from the same feature map (always PyTorch).
        amp: fp16 autocast on CUDA (ignored on CPU).
        backend: ``auto`` (ONNX Runtime on CPU when it prepares and matches PyTorch, see engine.ort),
            ``onnxruntime`` or ``torch``; default ``$PPSSL_INFERENCE`` or auto.
        precision: ``"fp32"``, an ``engine.ort.Int8Spec`` (int8 ONNX Runtime, whatever ``backend`` says), or
            None: the precision the encoder is bound to (``engine.ort.bind_precision``), else fp32.
    """
    if poolings is None:
        from engine.ort import runner_for

        runner = runner_for(encoder, x, backend, precision)
        if runner is not None:
            return runner.run(x)
    device = encoder_device(encoder)
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast_for(device, amp):
        fmap = encoder.forward_features(x)
    fmap = fmap.float()
    if poolings is None:
        return encoder.forward_head(fmap).float().cpu().numpy()
    return {p: encoder.forward_head(fmap, p).float().cpu().numpy() for p in poolings}


def embed_pil(encoder, images: Sequence, *, batch_size: int = 32, amp: bool = True,
              backend: str | None = None, precision=None) -> np.ndarray:
    """PIL images -> float32 (N, D) features with the encoder's own pooling (query side, GradCAM, UI)."""
    out = [embed_batch(encoder, images_to_batch(encoder, images[s:s + batch_size]), amp=amp, backend=backend,
                       precision=precision)
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)


@torch.inference_mode()
def extract_pooled(encoder, dataset: Dataset, poolings=("attention", "gap"), *, batch_size: int = 64,
                   num_workers: int = 0, device: torch.device | str | None = None, amp: bool = True,
                   progress: bool = True, desc: str = "embedding") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Embed a dataset yielding ``(image_tensor, label, path)`` with one forward pass per batch.

    ``num_workers``: on a CPU, threads of this process that make each batch between forward passes
    (``engine.batches``; 0 = one); elsewhere DataLoader worker processes.

    Returns:
        ``({pooling: features float32 (N, D) L2-normalised}, labels int64 (N,))`` in dataset order. The
        encoder's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else default_device()
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    if device.type == "cpu" and not isinstance(dataset, IterableDataset):  # threads in turn (engine.batches)
        from engine.batches import thread_batches

        loader = thread_batches(dataset.__getitem__, range(len(dataset)), batch_size, num_workers, default_collate)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
    feats: dict[str, list] = {p: [] for p in poolings}
    labels = []
    total = -(-len(dataset) // batch_size) if hasattr(dataset, "__len__") else None
    try:
        with channels_last(encoder):
            for images, ys, _paths in tqdm(loader, total=total, desc=desc, disable=not progress, unit="batch",
                                           leave=False):
                for p, f in embed_batch(encoder, images, poolings, amp=amp).items():
                    feats[p].append(f)
                labels.append(np.asarray(ys, dtype=np.int64))
    finally:
        if hasattr(loader, "close"):  # the threads end with the generator
            loader.close()
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
