"""The AIS teacher's view of each training image, embedded once per run (``teacher_view: image``).

The teacher is frozen and, with ``teacher_view: image``, sees each training image through CLIP's own
deterministic eval preprocessing (open_clip's ``image_transform``: resize, centre crop, CLIP
normalisation). Its embedding of an image is therefore a constant of the run, and so are its logits
against the (constant) corpus embeddings: computing them once before the first epoch is exact, and
removes the teacher forward pass from every training step.

The pass is stored in chunks under ``OUT/teacher_cache/`` (safetensors + a JSON manifest naming the
teacher's weights fingerprint, the dataset and the image size). A killed pass resumes from the chunks
already written; a run resumed with another teacher or dataset recomputes. Under torchrun each rank
embeds every ``world``-th chunk and the chunks are summed across ranks, so every rank ends with the
whole table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from engine.atomic import atomic_path, atomic_write_json
from training import ddp

FORMAT = "ppssl-teacher-cache"
VERSION = 1
CHUNK = 4096  # images per chunk file: bounds the work lost to a kill and the size of each write


class TeacherImages(Dataset):
    """``(teacher input tensor, index)`` for each image of an engine dataset (items ``(PIL, label, path)``)."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.transform(self.base[index][0]), index


def teacher_transform(teacher):
    """CLIP's own eval preprocessing for this teacher (open_clip ``image_transform``)."""
    import open_clip

    return open_clip.image_transform(teacher.image_size, is_train=False, mean=teacher.mean, std=teacher.std,
                                     **teacher.preprocess)


def cache_key(teacher, dataset: str, root: str, n: int) -> dict:
    """What the cached embeddings depend on; a manifest with another key is recomputed, never reused."""
    return {"format": FORMAT, "format_version": VERSION, "teacher": teacher.fingerprint(),
            "image_size": teacher.image_size, "mean": list(teacher.mean), "std": list(teacher.std),
            "preprocess": dict(teacher.preprocess), "dataset": dataset,
            "root": str(Path(root).resolve()) if root else "", "images": int(n), "chunk": CHUNK}


def teacher_embeddings(teacher, base: Dataset, cache_dir: Path, key: dict, *, batch_size: int = 64,
                       num_workers: int = 0, device: torch.device | str = "cpu", progress: bool = True) -> torch.Tensor:
    """L2-normalised teacher embeddings (N, D) of every image of ``base``, computed once and cached.

    Args:
        teacher: a frozen :class:`~training.teacher.Teacher` already on ``device``.
        base: the training set (PIL images); index i of the result is image i.
        cache_dir: where the chunks and the manifest live (created; rank 0's copy is the one reused).
        key: :func:`cache_key` of this run; chunks written under another key are discarded.
    """
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    n = len(base)
    manifest = cache_dir / "manifest.json"
    rank, world = ddp.rank(), ddp.world_size()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if ddp.is_main() and _read_manifest(manifest) != key:  # another teacher, dataset or size: start over
        for f in cache_dir.glob("chunk_*.safetensors"):
            f.unlink()
        atomic_write_json(manifest, key)
    ddp.barrier()
    out = torch.zeros(n, teacher.embed_dim, dtype=torch.float32)
    chunks = [c for c in range((n + CHUNK - 1) // CHUNK) if c % world == rank]
    dataset = TeacherImages(base, teacher_transform(teacher))
    todo = []
    for c in chunks:
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        path = cache_dir / f"chunk_{c:05d}.safetensors"
        part = _load_chunk(load_file, path, hi - lo, teacher.embed_dim)
        if part is None:
            todo.append((c, lo, hi, path))
        else:
            out[lo:hi] = part
    bar = tqdm(total=sum(hi - lo for _, lo, hi, _ in todo), desc="teacher pass (once per run)", unit="img",
               disable=not (progress and ddp.is_main()) or not todo, leave=False)
    for c, lo, hi, path in todo:
        loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=batch_size, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(c),  # leave the global RNG alone
                            pin_memory=torch.device(device).type == "cuda")
        for images, idx in loader:
            out[idx] = teacher.encode_image(images.to(device, non_blocking=True)).cpu()
            bar.update(len(idx))
        with atomic_path(path) as tmp:
            save_file({"embeddings": out[lo:hi].contiguous()}, str(tmp))
    bar.close()
    if world > 1:  # every rank filled its own chunks and left zeros elsewhere
        buf = out.to(device)
        torch.distributed.all_reduce(buf)
        out = buf.cpu()
    return out


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load_chunk(load_file, path: Path, rows: int, dim: int) -> torch.Tensor | None:
    """A chunk written earlier, or None when it is missing or does not have the expected shape."""
    if not path.is_file():
        return None
    try:
        t = load_file(str(path)).get("embeddings")
    except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed, not trusted
        return None
    if t is None or tuple(t.shape) != (rows, dim) or t.dtype != torch.float32 or not torch.isfinite(t).all():
        return None
    return t
