"""Resized copies of large photos for training, made once and kept by content hash.

A training epoch decodes every photo several times (two views, a neighbour view, evaluation passes); for a
camera photo of 12 Mpx that costs ~90 ms a time and starves the model (benchmarks/train_data_path.py). Nothing a
view needs is finer than ``side`` pixels on the short side (``side`` = input size / sqrt(smallest crop area)),
so each photo whose short side exceeds 1.25 x ``side`` is decoded once (at a reduced JPEG scale where possible),
resized to that short side and kept as a high-quality JPEG under ``<cache>/<side>/<sha256[:2]>/<sha256>.jpg``:
keyed by the file's content, so renamed or copied photos share it and an edited one gets a new copy. The copy is
upright (EXIF orientation applied) and 8-bit RGB like every decoded image. Smaller photos are used as they are.

The same pass finds the unreadable files (the trainer skips them with a report), so it replaces the check pass.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

from engine.imageio import ImageLoadError, open_image

QUALITY = 94  # JPEG quality of the copies: indistinguishable after a resize to the input size
MARGIN = 1.25  # photos with a short side up to MARGIN x side are used as they are


def copy_side(input_size: int, min_scale: float, embed_size: int = 0) -> int:
    """The short side that keeps the smallest random crop (area ``min_scale``) at full resolution and, with
    ``embed_size``, every embedding view of the run (its neighbour, head and held-out passes) too.

    A training run also embeds its photos at the encoder's eval size; with large crops (``min_scale`` near 1)
    the crops alone would ask for less than that, and the embeddings would come from upsampled copies. The
    centre view's resize (``engine.preprocess.resize_size``, as ``engine.embed.decode_side``) is the most any
    view asks for.
    """
    from engine.preprocess import resize_size

    return max(int(math.ceil(input_size / math.sqrt(min_scale))), resize_size(embed_size) if embed_size else 0)


def default_cache_dir() -> Path:
    base = os.environ.get("PPSSL_HOME") or Path.home() / ".cache" / "ppssl"
    return Path(base) / "resized"


def resized_copy(path: str, side: int, cache_dir: str | os.PathLike) -> tuple[str, str | None]:
    """``(path to use, None)`` — the cached copy or the original — or ``(path, reason)`` when unreadable."""
    from PIL import Image

    from engine.atomic import atomic_path

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return path, f"{path}: unreadable ({exc.strerror or exc})"
    sha = hashlib.sha256(data).hexdigest()
    target = Path(cache_dir) / str(side) / sha[:2] / f"{sha}.jpg"
    if target.is_file():
        return str(target), None
    try:
        with Image.open(io.BytesIO(data)) as probe:  # the header only: the stored size
            small = min(probe.size) <= MARGIN * side
    except Exception:  # noqa: BLE001 - not an image: open_image below says why
        small = True
    if small:
        try:
            open_image(path)  # a small photo is used as it is: make sure it decodes in full (truncation)
        except ImageLoadError as exc:
            return path, str(exc)
        return path, None
    try:
        image = open_image(data, min_side=side)
    except ImageLoadError as exc:
        return path, str(exc).replace("<bytes>", path)
    w, h = image.size
    scale = side / min(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS,
                         reducing_gap=3.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=QUALITY)
    return str(target), None


def prepare(paths: list[str], side: int, cache_dir: str | os.PathLike | None = None, *, workers: int = 2,
            progress: bool = True, desc: str = "preparing photos") -> tuple[list[str], list[tuple[str, str]]]:
    """Resized copies of ``paths`` (see the module docstring): ``(path to train on per input path,
    [(path, reason) of the unreadable ones]``); threaded, in input order."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        out = list(tqdm(pool.map(lambda p: resized_copy(p, side, cache_dir), paths, chunksize=8), total=len(paths),
                        desc=desc, unit="img", disable=not progress, leave=False))
    return [p for p, _ in out], [(src, r) for src, (_, r) in zip(paths, out) if r is not None]
