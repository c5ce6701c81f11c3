"""Display copies of photos: bounded size, and never so thin that the browser draws them zero pixels high."""

from __future__ import annotations

from PIL import Image


def preview(image: Image.Image, max_side: int = 640, max_aspect: float = 4.0) -> Image.Image:
    """A display copy: at most ``max_side`` pixels a side, letterboxed to at most ``max_aspect`` : 1.

    Streamlit scales an image to its column width; a 20000x10 panorama would become 0 pixels high and
    fail, so extreme aspect ratios are padded onto a light canvas.
    """
    img = image.convert("RGB")
    img = img.copy() if img is image else img
    img.thumbnail((max_side, max_side))
    w, h = img.size
    if max(w, h) > max_aspect * min(w, h):
        cw, ch = (w, max(h, round(w / max_aspect))) if w >= h else (max(w, round(h / max_aspect)), h)
        canvas = Image.new("RGB", (cw, ch), (245, 245, 245))
        canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
        img = canvas
    return img
