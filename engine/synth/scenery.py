"""Everything around the object: backgrounds, distractors, occluders, pose, lighting, and the scene compositor.

All of it is drawn from random streams that never see the class label, so clutter is independent of the class
by construction (``render_scene`` spawns separate generators for background, pose, object, foreground, lighting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.errors import PPSSLError
from engine.synth.canvas import Pen, hsv, rotate, scale, translate

CLUTTER_LEVELS = ("none", "low", "high")
# background kinds per clutter level ("none" stays plain so the object is the only structure)
BACKGROUNDS = {
    "none": ("plain", "gradient"),
    "low": ("gradient", "sky", "noise", "blobs", "foliage", "stripes"),
    "high": ("sky", "noise", "blobs", "foliage", "stripes", "checker", "bricks", "dots", "waves"),
}
# how empty-scene captions name each background kind
BACKGROUND_PHRASES = {
    "plain": "a plain background", "gradient": "a smooth gradient background", "sky": "a cloudy sky",
    "noise": "a mottled background", "blobs": "a blotchy background", "foliage": "green foliage",
    "stripes": "a striped background", "checker": "a checkered background", "bricks": "a brick wall",
    "dots": "a polka-dot background", "waves": "a wavy pattern",
}
SUPERSAMPLE = 3  # render at 3x the target size, then downsample with antialiasing


class SynthError(PPSSLError, ValueError):
    """Invalid synthetic-world parameters or output directory."""


def as_generator(rng) -> np.random.Generator:
    """Accept a numpy Generator or anything ``default_rng`` takes (an int seed, a list of ints)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def check_clutter(clutter: str) -> str:
    if clutter not in CLUTTER_LEVELS:
        raise SynthError(f"clutter must be one of {', '.join(CLUTTER_LEVELS)}, got {clutter!r}")
    return clutter


# ----------------------------------------------------------------------------------------------- backgrounds
def _palette(rng: np.random.Generator, clutter: str) -> tuple[np.ndarray, np.ndarray]:
    """Two background colours; saturation and contrast grow with the clutter level."""
    smin, smax = {"none": (0.05, 0.3), "low": (0.2, 0.5), "high": (0.55, 1.0)}[clutter]
    h = rng.random()
    c1 = hsv(h, rng.uniform(smin, smax), rng.uniform(0.55, 0.95))
    h2 = h + rng.uniform(0.1, 0.5) * (1 if clutter == "high" else 0.3)
    v2 = rng.uniform(0.3, 0.95) if clutter == "high" else rng.uniform(0.5, 0.9)
    c2 = hsv(h2, rng.uniform(smin, smax), v2)
    return np.array(c1, np.float32), np.array(c2, np.float32)


def _coords(w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [0, 1), rotated by a random angle."""
    y, x = np.mgrid[0:w, 0:w].astype(np.float32) / w
    a = rng.uniform(0, math.pi)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def _blend(t: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def paint_background(rng: np.random.Generator, w: int, clutter: str) -> tuple[Image.Image, str]:
    """A ``w`` x ``w`` RGB background of a kind allowed at ``clutter``; returns (image, kind)."""
    kind = str(rng.choice(BACKGROUNDS[clutter]))
    c1, c2 = _palette(rng, clutter)
    if kind == "plain":
        arr = np.broadcast_to(c1, (w, w, 3))
    elif kind == "gradient":
        u, _ = _coords(w, rng)
        arr = _blend((u - u.min()) / (np.ptp(u) + 1e-6), c1, c2)
    elif kind in ("stripes", "checker", "waves"):
        u, v = _coords(w, rng)
        f = rng.uniform(3, 10)
        if kind == "stripes":
            t = (np.sin(2 * math.pi * f * u) > 0).astype(np.float32)
        elif kind == "checker":
            t = ((np.floor(u * f) + np.floor(v * f)) % 2).astype(np.float32)
        else:
            amp, g = rng.uniform(1, 4), rng.uniform(1, 3)
            t = 0.5 + 0.5 * np.sin(2 * math.pi * f * u + amp * np.sin(2 * math.pi * g * v))
        arr = _blend(t, c1, c2)
    elif kind == "noise":
        k = int(rng.integers(4, 12))
        grid = (rng.random((k, k, 3)) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(grid).resize((w, w), Image.BICUBIC), np.float32) / 255
        arr = _blend(smooth.mean(2), c1, c2) * 0.7 + smooth * 255 * 0.3
    else:
        img = Image.new("RGB", (w, w), tuple(int(v) for v in c1))
        d = ImageDraw.Draw(img)
        if kind == "sky":
            y = np.linspace(0, 1, w, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
            top, bottom = np.array(hsv(0.58 + rng.uniform(-0.04, 0.04), rng.uniform(0.35, 0.7), 0.9), np.float32), \
                np.array((235, 240, 250), np.float32)
            img = Image.fromarray(_blend(y, top, bottom).astype(np.uint8))
            clouds = Image.new("L", (w, w), 0)
            cd = ImageDraw.Draw(clouds)
            for _ in range(int(rng.integers(3, 9))):
                cx, cy, r = rng.uniform(0, w), rng.uniform(0, w * 0.8), rng.uniform(0.05, 0.15) * w
                cd.ellipse([cx - 2 * r, cy - r, cx + 2 * r, cy + r], fill=int(rng.integers(160, 255)))
            clouds = clouds.filter(ImageFilter.GaussianBlur(w * 0.03))
            img = Image.composite(Image.new("RGB", (w, w), (250, 250, 252)), img, clouds)
        elif kind == "blobs":
            for _ in range(int(rng.integers(10, 30))):
                cx, cy, r = rng.uniform(0, w), rng.uniform(0, w), rng.uniform(0.04, 0.2) * w
                col = _blend(np.array([rng.random()], np.float32), c1, c2)[0]
                col = np.clip(col + rng.normal(0, 30, 3), 0, 255)
                d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r], fill=tuple(int(v) for v in col))
        elif kind == "foliage":
            img = Image.new("RGB", (w, w), hsv(rng.uniform(0.22, 0.4), 0.6, rng.uniform(0.2, 0.4)))
            d = ImageDraw.Draw(img)
            base_h = rng.uniform(0.18, 0.38)
            for _ in range(int(rng.integers(60, 140))):
                cx, cy = rng.uniform(0, w), rng.uniform(0, w)
                pen = Pen(img, None, translate(cx, cy) @ rotate(rng.uniform(0, 360)) @ scale(w))
                pen.ellipse(0, 0, rng.uniform(0.04, 0.1), rng.uniform(0.012, 0.03),
                            hsv(base_h + rng.uniform(-0.06, 0.06), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.85)))
        elif kind == "bricks":
            mortar = tuple(int(v) for v in c2)
            d.rectangle([0, 0, w, w], fill=mortar)
            bh = w / rng.uniform(5, 12)
            bw = bh * rng.uniform(1.8, 3)
            gap = max(1, int(bh * 0.12))
            for row in range(int(w / bh) + 1):
                off = (row % 2) * bw / 2
                for col in range(-1, int(w / bw) + 2):
                    x0, y0 = col * bw + off, row * bh
                    shadec = np.clip(c1 + rng.normal(0, 18, 3), 0, 255)
                    d.rectangle([x0 + gap, y0 + gap, x0 + bw - gap, y0 + bh - gap], fill=tuple(int(v) for v in shadec))
        elif kind == "dots":
            step = w / rng.uniform(4, 9)
            r = step * rng.uniform(0.15, 0.4)
            for yy in np.arange(step / 2, w + step, step):
                for xx in np.arange((yy // step % 2) * step / 2, w + step, step):
                    d.ellipse([xx - r, yy - r, xx + r, yy + r], fill=tuple(int(v) for v in c2))
        arr = np.asarray(img, np.float32)
    if clutter == "low" and kind not in ("plain", "gradient", "sky"):
        arr = arr * 0.55 + np.asarray(arr, np.float32).reshape(-1, 3).mean(0) * 0.45  # muted texture
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), kind


# ------------------------------------------------------------------------------------------------ distractors
def _star(n: int, inner: float) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False) - math.pi / 2
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_SHAPES = {
    "disk": None, "ring": None, "stripe_disk": None,
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8,
    "triangle": np.array([[0, -1], [0.95, 0.7], [-0.95, 0.7]], float),
    "cross": np.array([[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3], [0.3, 1], [-0.3, 1],
                       [-0.3, 0.3], [-1, 0.3], [-1, -0.3], [-0.3, -0.3]], float),
    "star": _star(5, 0.45), "burst": _star(9, 0.7), "diamond": np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], float),
}


def draw_distractor(img: Image.Image, mask: Image.Image | None, rng: np.random.Generator,
                    radius: float, center: tuple[float, float]) -> None:
    """One saturated geometric object of ``radius`` pixels; pixels it covers are cleared (0) in ``mask``."""
    shape = str(rng.choice(list(_SHAPES)))
    m = translate(*center) @ rotate(rng.uniform(0, 360)) @ scale(radius)
    pen = Pen(img, mask, m)
    col = hsv(rng.random(), rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    col2 = hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.2, 1.0))
    if shape == "disk":
        pen.circle(0, 0, 1, col, 0)
    elif shape == "ring":
        pen.circle(0, 0, 1, col, 0)
        pen.circle(0, 0, 0.55, col2, 0)
    elif shape == "stripe_disk":
        pen.circle(0, 0, 1, col, 0)
        for x0 in (-0.6, -0.1, 0.4):
            pen.polygon(np.array([[x0, -0.9], [x0 + 0.25, -0.9], [x0 + 0.25, 0.9], [x0, 0.9]]) *
                        [1, math.sqrt(max(0.05, 1 - (x0 + 0.12) ** 2))], col2, 0)
    else:
        pen.polygon(_SHAPES[shape], col, 0, outline=col2, width=0.08)


def draw_occluder(img: Image.Image, mask: Image.Image, rng: np.random.Generator, w: int) -> None:
    """A plain rectangle near the centre that hides part of the object (intra-class occlusion)."""
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * w
    hw, hh = rng.uniform(0.06, 0.15) * w, rng.uniform(0.06, 0.15) * w
    col = hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.8))
    pen = Pen(img, mask, translate(cx, cy) @ rotate(rng.uniform(-30, 30)))
    pen.polygon([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]], col, 0)


# ------------------------------------------------------------------------------------------- pose & lighting
def sample_pose(rng: np.random.Generator, w: int, max_rotation: float = 25.0) -> np.ndarray:
    """Unit frame -> canvas matrix: random position, scale, rotation (±``max_rotation``°) and mirror."""
    s = rng.uniform(0.7, 0.95) * w
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    cx, cy = (0.5 + rng.uniform(-0.08, 0.08)) * w, (0.5 + rng.uniform(-0.08, 0.08)) * w
    return translate(cx, cy) @ rotate(rng.uniform(-max_rotation, max_rotation)) @ scale(s * mirror, s) @ \
        translate(-0.5, -0.5)


def apply_lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random brightness, contrast, colour temperature and a directional light gradient."""
    a = np.asarray(img, np.float32)
    w = a.shape[0]
    # contrast around a fixed mid-grey, not the image mean, so lighting never depends on the content
    a = (a - 128.0) * rng.uniform(0.75, 1.25) + 128.0 * rng.uniform(0.75, 1.2)
    t = rng.uniform(-1, 1) * 0.12
    a = a * np.array([1 + t, 1.0, 1 - t], np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:w, 0:w].astype(np.float32) / max(w - 1, 1) - 0.5
    a = a * (1 + rng.uniform(0, 0.3) * (x * math.cos(ang) + y * math.sin(ang)))[..., None]
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def _downsample_labels(mask: np.ndarray, f: int) -> np.ndarray:
    """Each output pixel takes the highest label covering at least a third of its f x f block, else the
    label covering most of it. Part ids grow from large to small parts, so thin parts (spots, rings, bars)
    keep the pixels they visibly tint instead of vanishing as under nearest-neighbour sampling."""
    if f == 1:
        return mask.copy()
    n = mask.shape[0] // f
    m = mask[: n * f, : n * f].astype(np.int64)
    k = int(m.max()) + 1
    block = (np.arange(n * f) // f)
    idx = (block[:, None] * n + block[None, :]) * k + m  # (block, label) pair of every pixel
    counts = np.bincount(idx.ravel(), minlength=n * n * k).reshape(n, n, k)
    mode = np.argmax(counts, axis=2)
    strong = counts * 3 >= f * f
    strong[..., 0] = False
    highest = k - 1 - np.argmax(strong[..., ::-1], axis=2)
    return np.where(strong.any(2), highest, mode).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- compositor
@dataclass
class Scene:
    """A rendered scene at the target size."""
    image: Image.Image                 # RGB, size x size
    mask: np.ndarray                   # uint8 part ids (0 = not the object), size x size
    background: str                    # background kind (see BACKGROUNDS)
    drawn: np.ndarray                  # pixels per part id before anything covered the object (supersampled)
    visible: np.ndarray                # pixels per part id in the final picture (supersampled)
    info: object = None                # whatever draw_object returned (e.g. per-image attribute details)


DrawFn = Callable[[Pen, np.random.Generator], object]


def render_scene(rng: np.random.Generator, size: int, clutter: str, draw_object: DrawFn | None,
                 supersample: int = SUPERSAMPLE, max_rotation: float = 25.0) -> Scene:
    """Background, distractors behind, object in a random pose, distractors and occluders in front, lighting.

    ``draw_object(pen, rng)`` draws in the unit frame centred on (0.5, 0.5) and writes its part ids (1..255)
    into the mask through the pen. Separate generators are spawned for each stage, so the clutter and pose
    streams do not depend on what (or which class) the object is.
    """
    check_clutter(clutter)
    r_bg, r_pose, r_obj, r_front, r_light = as_generator(rng).spawn(5)
    w = size * supersample
    img, kind = paint_background(r_bg, w, clutter)
    mask = Image.new("L", (w, w), 0)
    if clutter == "none":
        n_behind, n_front, rad = 0, 0, (0.0, 0.0)
    elif clutter == "low":
        n_behind, n_front, rad = int(r_front.integers(0, 3)), 0, (0.06, 0.14)
    else:  # high: several large saturated shapes, some of them in front of the object
        n_behind, n_front, rad = int(r_front.integers(2, 5)), int(r_front.integers(0, 3)), (0.12, 0.3)
    for _ in range(n_behind):
        draw_distractor(img, None, r_front, r_front.uniform(*rad) * w, tuple(r_front.uniform(0, w, 2)))
    info = None
    if draw_object is not None:
        info = draw_object(Pen(img, mask, sample_pose(r_pose, w, max_rotation)), r_obj)
    drawn = np.bincount(np.asarray(mask).ravel(), minlength=256)
    for _ in range(n_front):
        # front distractors are smaller and sit towards the border: they cover part of the object, rarely all
        ang = r_front.uniform(0, 2 * math.pi)
        dist = r_front.uniform(0.3, 0.55) * w
        draw_distractor(img, mask, r_front, r_front.uniform(0.1, 0.22) * w,
                        (w / 2 + dist * math.cos(ang), w / 2 + dist * math.sin(ang)))
    if r_front.random() < 0.2:
        draw_occluder(img, mask, r_front, w)
    visible = np.bincount(np.asarray(mask).ravel(), minlength=256)
    out = img.resize((size, size), Image.LANCZOS) if supersample > 1 else img
    out = apply_lighting(out, r_light)
    small_mask = _downsample_labels(np.asarray(mask), supersample)
    return Scene(out, small_mask, kind, drawn, visible, info)
