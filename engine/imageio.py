"""One robust image opener shared by training, indexing and the UI.

Every failure becomes an :class:`ImageLoadError` that names the file, so callers can
skip-and-report instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import PPSSLError

#: File name suffixes treated as images when scanning folders (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: Pillow's own default decompression-bomb limit (about 89.5 Mpx); above twice it Pillow raises.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

#: The only Pillow decoders tried (photo formats). Pillow knows ~40 more (EPS runs Ghostscript, PSD, FITS,
#: SPIDER, ...); untrusted files never reach them. AVIF/HEIF count when a decoder plugin is installed.
DECODERS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "AVIF", "HEIF")

Source = Union[str, os.PathLike, bytes, BinaryIO]


class ImageLoadError(PPSSLError, ValueError):
    """An image could not be opened or decoded; the message names the file (on one line)."""

    def __init__(self, name: str, reason: str):
        reason = printable(" ".join(reason.split()))  # decoder messages may span lines
        super().__init__(f"{printable(name)}: {reason}")
        self.name = name
        self.reason = reason


def printable(name: str) -> str:
    """``name`` with control characters escaped (a file name with a newline still makes a one-line message)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _decoders() -> list[str]:
    Image.preinit()
    if not all(f in Image.OPEN for f in DECODERS[:6]):
        Image.init()
    return [f for f in DECODERS if f in Image.OPEN]


def _name_of(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited on white, 16-bit is rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def open_image(source: Source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Open an image file, path or byte string as an EXIF-upright 8-bit RGB image.

    Args:
        source: a path, raw bytes, or a binary file object.
        max_pixels: refuse images with more pixels than this (decompression bombs); ``None`` disables.
        min_side: a JPEG whose short side is at least twice this is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
            DCT scaling, ``Image.draft``), the smallest that keeps its short side >= ``min_side``: for callers
            that resize below that anyway (the eval transform's ``resize_size``). A camera photo then decodes
            several times faster (``benchmarks/decode.py``). ``None``: full size.

    Returns:
        A fully decoded ``PIL.Image`` in mode ``RGB`` (first frame of animations).

    Raises:
        ImageLoadError: unreadable, not an image, truncated, corrupt, empty, or too large.
    """
    name = _name_of(source)
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageLoadError(name, "empty file")
            fp: BinaryIO = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                if path.is_symlink() and not path.exists():
                    raise ImageLoadError(name, "broken symbolic link (missing target or a link loop)")
                raise ImageLoadError(name, "no such file" if not path.exists() else "not a regular file")
            if path.stat().st_size == 0:
                raise ImageLoadError(name, "empty file")
            fp = open(path, "rb")
        else:
            fp = source
            if not (hasattr(fp, "seekable") and fp.seekable()):
                fp = io.BytesIO(fp.read())  # Pillow needs to seek; it would buffer the stream itself
            start = fp.tell()
            if not fp.read(1):
                raise ImageLoadError(name, "empty file")
            fp.seek(start)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(fp, formats=_decoders()) as img:
                    w, h = img.size
                    if w < 1 or h < 1:
                        raise ImageLoadError(name, f"degenerate size {w}x{h}")
                    if max_pixels is not None and w * h > max_pixels:
                        raise ImageLoadError(
                            name, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
                        )
                    img.seek(0)
                    if min_side and img.format == "JPEG" and min(w, h) >= 2 * min_side:
                        img.draft("RGB", (max(1, w * min_side // min(w, h)), max(1, h * min_side // min(w, h))))
                    img.load()
                    ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright photo
                    return _to_rgb(img)
            finally:
                if isinstance(source, (str, os.PathLike)):
                    fp.close()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(name, f"decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format (or decoder missing)") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(name, f"corrupt or truncated image ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise ValueError, SyntaxError, struct.error, RuntimeError
        # (AVIF), EOFError, KeyError ... on hostile bytes; every one of them means "this file is unusable".
        raise ImageLoadError(name, f"undecodable image ({type(exc).__name__}: {exc})") from None


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the name has an image suffix (content is checked only when opened)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def find_unreadable(paths: list[str], *, workers: int = 2, progress: bool = True,
                    desc: str = "checking images") -> list[tuple[str, str]]:
    """``(path, reason)`` for every file :func:`open_image` refuses, in input order (full decode, threaded).

    Lets a long job skip bad files with a report up front instead of failing on one mid-way.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def check(p: str) -> str | None:
        try:
            open_image(p)
        except ImageLoadError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(tqdm(pool.map(check, paths, chunksize=16), total=len(paths), desc=desc, unit="img",
                            disable=not progress, leave=False))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
