"""Turn an uploaded file into a query image, or into one clear message for the visitor.

Every failure (empty, too large, not an image, corrupt, truncated, decompression bomb) becomes an
:class:`UploadError`; the page shows it and keeps working.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from PIL import Image

from engine.errors import PPSSLError
from engine.imageio import ImageLoadError, open_image

#: Suffixes offered by the file picker (GIFs use their first frame).
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


class UploadError(PPSSLError, ValueError):
    """An upload that cannot be used as a query; the message is shown to the visitor as is."""


@dataclass
class QueryImage:
    """A decoded query photo."""

    name: str  # file name as uploaded (or the gallery path)
    image: Image.Image  # RGB, EXIF-upright
    sha256: str  # of the uploaded bytes (matches the manifest's sha256 of an identical gallery file)
    nbytes: int  # size of the upload


def read_upload(name: str, data: bytes, *, max_bytes: int, max_pixels: int,
                min_side: int | None = None) -> QueryImage:
    """Validate and decode an upload.

    Args:
        name: the uploaded file's name (only for messages).
        data: its bytes.
        max_bytes: size cap; larger uploads are refused before decoding.
        max_pixels: decoded-size cap (width x height), checked from the header before decoding.
        min_side: decode a large JPEG at a reduced scale down to this short side, as the gallery was
            (``engine.embed.decode_side``); ``None``: full size.

    Raises:
        UploadError: with a message fit for the visitor.
    """
    if not data:
        raise UploadError(f"'{name}' is empty (0 bytes). Upload a JPEG, PNG, WebP, BMP or GIF photo.")
    if len(data) > max_bytes:
        raise UploadError(f"'{name}' is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB.")
    try:
        image = open_image(data, max_pixels=max_pixels, min_side=min_side)
    except ImageLoadError as exc:
        reason = exc.reason
        if "exceeds the limit" in reason or "bomb" in reason:
            msg = (f"'{name}' is too large to decode safely ({reason}). "
                   f"Images up to {max_pixels / 1e6:.0f} megapixels are accepted.")
        elif "not a recognised image" in reason:
            msg = f"'{name}' is not an image this app can read. Upload a JPEG, PNG, WebP, BMP or GIF photo."
        else:
            msg = f"'{name}' could not be decoded: {reason}."
        raise UploadError(msg) from None
    return QueryImage(name=name, image=image, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))
