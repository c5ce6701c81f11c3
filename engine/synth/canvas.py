"""Drawing in an object's own unit coordinates, onto an image and a part-label mask at once.

Every synthetic object is drawn as polygons in a canonical unit frame (x right, y down, object centred on
(0.5, 0.5)); a 3x3 affine matrix maps that frame to canvas pixels. Pose (position, scale, rotation, mirror) is
therefore exact, shapes stay crisp at the supersampled resolution, and the part mask lines up pixel for pixel.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


def translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def scale(sx: float, sy: float | None = None) -> np.ndarray:
    return np.diag([sx, sx if sy is None else sy, 1.0])


def rotate(degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` (counter-clockwise on screen, where y points down)."""
    a = math.radians(-degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ellipse_points(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 48,
                   start: float = 0.0, stop: float = 360.0) -> np.ndarray:
    """Points of an ellipse (or of an arc from ``start`` to ``stop`` degrees), rotated by ``angle`` degrees."""
    t = np.radians(np.linspace(start, stop, n, endpoint=(stop - start) < 360.0))
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = math.radians(-angle)
    c, s = math.cos(a), math.sin(a)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def chord_band(rx: float, ry: float, x0: float, x1: float, n: int = 12) -> np.ndarray:
    """The part of an axis-aligned origin-centred ellipse with ``x0 <= x <= x1`` (a band across it)."""
    x0, x1 = max(x0, -rx * 0.999), min(x1, rx * 0.999)
    xs = np.linspace(x0, x1, n)
    ys = ry * np.sqrt(np.clip(1.0 - (xs / rx) ** 2, 0.0, None))
    return np.concatenate([np.stack([xs, -ys], 1), np.stack([xs[::-1], ys[::-1]], 1)])


class Pen:
    """Draws unit-frame shapes on ``image`` (colour) and ``mask`` (part ids) through affine matrix ``m``."""

    def __init__(self, image: Image.Image, mask: Image.Image | None, m: np.ndarray):
        self.image, self.mask, self.m = image, mask, m
        self._draw = ImageDraw.Draw(image)
        self._mdraw = ImageDraw.Draw(mask) if mask is not None else None

    def then(self, local: np.ndarray) -> "Pen":
        """A pen whose coordinates are first mapped by ``local`` (e.g. a part's own frame)."""
        pen = Pen.__new__(Pen)
        pen.image, pen.mask, pen.m = self.image, self.mask, self.m @ local
        pen._draw, pen._mdraw = self._draw, self._mdraw
        return pen

    @property
    def unit(self) -> float:
        """Pixels per unit length (geometric mean of the two axis scales)."""
        return math.sqrt(abs(np.linalg.det(self.m[:2, :2])))

    def _xy(self, pts) -> list[float]:
        """Flat [x0, y0, x1, y1, ...] canvas coordinates (the fastest form ImageDraw accepts)."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        return (p @ self.m[:2, :2].T + self.m[:2, 2]).ravel().tolist()

    def polygon(self, pts, fill: RGB, part: int | None = None, outline: RGB | None = None,
                width: float = 0.0) -> None:
        xy = self._xy(pts)
        w = max(1, round(width * self.unit)) if outline is not None and width > 0 else 0
        self._draw.polygon(xy, fill=fill, outline=outline if w else None, width=w or 1)
        if part is not None and self._mdraw is not None:
            self._mdraw.polygon(xy, fill=part, outline=part if w else None, width=w or 1)

    def ellipse(self, cx, cy, rx, ry, fill: RGB, part: int | None = None, angle: float = 0.0,
                outline: RGB | None = None, width: float = 0.0, n: int = 48) -> None:
        self.polygon(ellipse_points(cx, cy, rx, ry, angle, n), fill, part, outline, width)

    def circle(self, cx, cy, r, fill: RGB, part: int | None = None, **kw) -> None:
        self.ellipse(cx, cy, r, r, fill, part, **kw)

    def line(self, pts, fill: RGB, width: float, part: int | None = None) -> None:
        xy = self._xy(pts)
        w = max(1, round(width * self.unit))
        self._draw.line(xy, fill=fill, width=w, joint="curve")
        if part is not None and self._mdraw is not None:
            self._mdraw.line(xy, fill=part, width=w, joint="curve")


def shade(c: RGB, f: float) -> RGB:
    """Darken (f < 1) or lighten towards white (f > 1) a colour."""
    if f <= 1.0:
        return tuple(int(round(v * f)) for v in c)
    t = min(f - 1.0, 1.0)
    return tuple(int(round(v + (255 - v) * t)) for v in c)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def jitter(c: RGB, rng: np.random.Generator, hue: float = 0.02, sat: float = 0.08, val: float = 0.08) -> RGB:
    """A colour near ``c``: small random hue / saturation / value shifts (intra-class variation)."""
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = float(np.clip(s * (1 + rng.uniform(-sat, sat)), 0, 1))
    v = float(np.clip(v * (1 + rng.uniform(-val, val)), 0, 1))
    return tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h, s, v))


def hsv(h: float, s: float, v: float) -> RGB:
    return tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h % 1.0, s, v))
