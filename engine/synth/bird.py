"""The bird: one shared body plan (body, breast, wing, head, tail, beak, eye, legs) whose small parts carry the class.

Bird-frame coordinates: x right, y down, bird facing right, roughly x 0.06-0.93 and y 0.27-0.82.
"""

from __future__ import annotations

import numpy as np

from engine.synth.attributes import ATTRIBUTES, COLORS, bird_caption
from engine.synth.canvas import Pen, chord_band, ellipse_points, jitter, mix, rotate, shade, translate
from engine.synth.scenery import SUPERSAMPLE, Scene, render_scene

# part ids written into the mask (0 = not the bird)
PARTS = {"body": 1, "breast": 2, "wing": 3, "head": 4, "legs": 5, "perch": 6, "tail": 7, "crown": 8, "eye": 9,
         "eye_ring": 10, "beak": 11, "wing_bar": 12, "breast_marks": 13}
# the parts whose look depends on the class's small attributes
DISCRIMINATIVE_PARTS = ("tail", "crown", "eye_ring", "beak", "wing_bar", "breast_marks")
BIRD_PARTS = tuple(p for p in PARTS if p != "perch")
# attribute -> the part that shows it (for captions of what is visible)
ATTRIBUTE_PARTS = {"crown_color": "crown", "eye_ring": "eye_ring", "beak_shape": "beak", "beak_color": "beak",
                   "wing_bar": "wing_bar", "breast_pattern": "breast_marks", "tail_shape": "tail"}
_CREAM = (242, 232, 208)
_MARK = (58, 38, 28)
_OUTLINE_W = 0.006
# body ellipse in the bird frame
_BODY = dict(cx=0.46, cy=0.56, rx=0.205, ry=0.135, angle=18.0)
_HEAD = (0.685, 0.385, 0.088)


def _tail_polygon(shape: str) -> np.ndarray:
    """Tail in its own frame: base at x=0 (width ±0.045), pointing to -x."""
    if shape == "rounded":
        arc = ellipse_points(-0.19, 0.0, 0.07, 0.07, 0, 14, 90, 270)
        return np.concatenate([[[0.0, -0.045]], [[-0.19, -0.07]], arc, [[-0.19, 0.07]], [[0.0, 0.045]]])
    if shape == "forked":
        return np.array([[0, -0.045], [-0.27, -0.09], [-0.16, 0.0], [-0.27, 0.09], [0, 0.045]])
    if shape == "pointed":
        return np.array([[0, -0.045], [-0.17, -0.035], [-0.30, 0.0], [-0.17, 0.035], [0, 0.045]])
    return np.array([[0, -0.045], [-0.24, -0.07], [-0.24, 0.07], [0, 0.045]])  # square


def _beak_polygon(shape: str) -> np.ndarray:
    """Beak in the head frame: attached at x=0, pointing to +x."""
    if shape == "conical":
        return np.array([[-0.01, -0.032], [0.075, 0.004], [-0.01, 0.036]])
    if shape == "thin":
        return np.array([[-0.01, -0.014], [0.085, 0.006], [-0.01, 0.018]])
    if shape == "hooked":
        return np.array([[-0.01, -0.03], [0.04, -0.028], [0.072, -0.01], [0.082, 0.02], [0.07, 0.034],
                         [0.062, 0.012], [0.03, 0.01], [-0.01, 0.03]])
    return np.array([[-0.01, -0.016], [0.16, 0.012], [-0.01, 0.02]])  # long


def _inside_body(pts: np.ndarray, margin: float = 0.97) -> np.ndarray:
    """Pull points (body frame, axis aligned) inside the body ellipse."""
    rx, ry = _BODY["rx"], _BODY["ry"]
    r = np.sqrt((pts[:, 0] / rx) ** 2 + (pts[:, 1] / ry) ** 2)
    f = np.where(r > margin, margin / np.maximum(r, 1e-9), 1.0)
    return pts * f[:, None]


def draw_bird(pen: Pen, rng: np.random.Generator, attrs: dict[str, str]) -> None:
    """Draw a bird with ``attrs`` in the unit frame (centred), with small per-image shape and colour jitter."""
    P = PARTS
    # marks whose number depends on the class draw from their own stream, so that two classes rendered from
    # the same generator share pose, jitter and perch and differ only in their parts
    rng, marks_rng = rng.spawn(2)
    pen = pen.then(translate(0.0, -0.05))  # bird frame centre (0.5, 0.55) -> unit centre
    body_c = jitter(COLORS[attrs["body_color"]], rng)
    wing_c, tail_c = shade(body_c, 0.62), shade(body_c, 0.55)
    breast_c = mix(body_c, _CREAM, 0.55)
    line_c = shade(body_c, 0.4)
    leg_c = (70, 62, 58)

    # perch and legs (behind the body)
    if rng.random() < 0.6:
        y = 0.83
        pen.line([[0.2 + rng.uniform(-0.1, 0.05), y + rng.uniform(-0.01, 0.01)], [0.8 + rng.uniform(-0.05, 0.1), y]],
                 jitter((96, 70, 46), rng), 0.03, P["perch"])
    for x0, x1 in ((0.44, 0.42), (0.51, 0.52)):
        pen.line([[x0, 0.66], [x1, 0.83]], leg_c, 0.014, P["legs"])
        pen.line([[x1 - 0.03, 0.835], [x1 + 0.04, 0.835]], leg_c, 0.012, P["legs"])

    # tail
    tail_angle = 12 + rng.uniform(-8, 8)
    tail = pen.then(translate(0.29, 0.612) @ rotate(tail_angle))
    tail.polygon(_tail_polygon(attrs["tail_shape"]), tail_c, P["tail"], line_c, _OUTLINE_W)

    # body, breast and breast marks (body frame: axis aligned, centred)
    b = _BODY
    body = pen.then(translate(b["cx"], b["cy"]) @ rotate(b["angle"]))
    body.ellipse(0, 0, b["rx"], b["ry"], body_c, P["body"], outline=line_c, width=_OUTLINE_W)
    pen.ellipse(0.625, 0.46, 0.075, 0.065, body_c, P["body"], angle=-35)  # neck, under breast and head
    breast_pts = _inside_body(ellipse_points(0.075, 0.05, 0.13, 0.08, -8, 40))
    body.polygon(breast_pts, breast_c, P["breast"])
    pattern = attrs["breast_pattern"]
    if pattern == "spotted":
        for x, y in ((0.16, 0.0), (0.13, 0.045), (0.1, 0.085), (0.06, 0.1), (0.14, -0.035), (0.015, 0.105)):
            x, y = x + marks_rng.uniform(-0.008, 0.008), y + marks_rng.uniform(-0.008, 0.008)
            body.circle(x, y, marks_rng.uniform(0.013, 0.016), _MARK, P["breast_marks"])
    elif pattern == "streaked":
        for x, y in ((0.17, -0.03), (0.14, 0.01), (0.11, 0.05), (0.065, 0.07), (0.02, 0.08)):
            x, y = x + marks_rng.uniform(-0.006, 0.006), y + marks_rng.uniform(-0.006, 0.006)
            seg = _inside_body(np.array([[x, y], [x - 0.018, y + 0.05]]), 0.93)
            body.line(seg, _MARK, 0.009, P["breast_marks"])

    # wing with its bars (wing frame: axis aligned ellipse centred at the origin)
    wrx, wry = 0.15, 0.075
    wing = body.then(translate(-0.06, -0.035) @ rotate(-6 + rng.uniform(-4, 4)))
    tip = np.array([[-wrx * 0.85, -wry * 0.5], [-wrx - 0.07, 0.015], [-wrx * 0.8, wry * 0.55]])
    wing.polygon(tip, shade(wing_c, 0.9), P["wing"], line_c, _OUTLINE_W)
    wing.ellipse(0, 0, wrx, wry, wing_c, P["wing"], outline=line_c, width=_OUTLINE_W)
    bar_c = (246, 244, 232)
    if attrs["wing_bar"] in ("single", "double"):
        xs = (0.015,) if attrs["wing_bar"] == "single" else (0.045, -0.025)
        for x in xs:
            wing.polygon(chord_band(wrx, wry, x - 0.014, x + 0.014), bar_c, P["wing_bar"])
    elif attrs["wing_bar"] == "spotted":
        for x, y in ((0.07, -0.02), (0.03, 0.02), (-0.01, -0.03), (-0.04, 0.015), (-0.08, -0.01), (0.0, 0.045)):
            wing.circle(x, y, 0.013, bar_c, P["wing_bar"])

    # head: neck, head disc, crown cap, eye-ring, eye, beak
    hx, hy, hr = _HEAD
    hx, hy = hx + rng.uniform(-0.008, 0.008), hy + rng.uniform(-0.008, 0.008)
    pen.circle(hx, hy, hr, body_c, P["head"], outline=line_c, width=_OUTLINE_W)
    cap = ellipse_points(hx, hy, hr, hr, 0, 24, 190, 340)
    pen.polygon(np.concatenate([cap, [[hx + hr * 0.94, hy - hr * 0.34]]]), COLORS[attrs["crown_color"]],
                P["crown"], line_c, _OUTLINE_W)
    ex, ey = hx + 0.03, hy - 0.005
    if attrs["eye_ring"] != "none":
        pen.circle(ex, ey, 0.031, COLORS[attrs["eye_ring"]], P["eye_ring"])
    pen.circle(ex, ey, 0.016, (12, 12, 14), P["eye"])
    pen.circle(ex + 0.005, ey - 0.005, 0.004, (240, 240, 240), P["eye"])
    beak = pen.then(translate(hx + hr * 0.92, hy + 0.012))
    beak.polygon(_beak_polygon(attrs["beak_shape"]), COLORS[attrs["beak_color"]], P["beak"], shade(line_c, 0.6),
                 _OUTLINE_W * 0.8)


def check_attributes(attrs: dict[str, str]) -> dict[str, str]:
    bad = [f"{k}={attrs.get(k)!r}" for k, v in ATTRIBUTES.items() if attrs.get(k) not in v]
    if bad:
        raise ValueError(f"invalid bird attributes: {', '.join(bad)}")
    return attrs


def visible_attributes(scene: Scene, min_fraction: float = 0.4) -> set[str]:
    """Attributes whose part is still mostly visible after distractors and occluders covered the bird."""
    out = {"body_color"}
    for a, part in ATTRIBUTE_PARTS.items():
        pid = PARTS[part]
        drawn, seen = scene.drawn[pid], scene.visible[pid]
        if drawn == 0 or seen >= min_fraction * drawn:  # absent parts (no eye-ring ...) count as visible
            out.add(a)
    return out


def render_bird_scene(attrs: dict[str, str], rng: np.random.Generator, size: int = 96, clutter: str = "high",
                      supersample: int = SUPERSAMPLE) -> tuple[Scene, str]:
    """A bird scene and its caption (which names only the attributes still visible)."""
    check_attributes(attrs)
    scene = render_scene(rng, size, clutter, lambda pen, r: draw_bird(pen, r, attrs), supersample)
    return scene, bird_caption(attrs, visible_attributes(scene))


def render_bird(attrs: dict[str, str], rng: np.random.Generator, size: int = 96, clutter: str = "high",
                return_mask: bool = False):
    """Render one bird picture (``size`` x ``size`` RGB) of attribute combination ``attrs``.

    ``rng`` is a numpy Generator or a seed; ``clutter`` is 'none', 'low' or 'high'.

    With ``return_mask`` also returns a uint8 array of part ids (see ``PARTS``; 0 = background or covered).
    """
    scene, _ = render_bird_scene(attrs, rng, size, clutter)
    return (scene.image, scene.mask) if return_mask else scene.image


def part_share(mask: np.ndarray, parts=DISCRIMINATIVE_PARTS) -> float:
    """Fraction of the image's pixels that show the given parts."""
    ids = [PARTS[p] for p in parts]
    return float(np.isin(mask, ids).mean())


__all__ = ["PARTS", "DISCRIMINATIVE_PARTS", "BIRD_PARTS", "draw_bird", "render_bird", "render_bird_scene",
           "part_share", "visible_attributes"]
