"""Coarse families (bird, fish, butterfly, flower, vehicle, aircraft, empty scene) for training the teacher.

Each picture comes with a caption naming its family and the visible attributes of the object, so a
caption-supervised teacher learns what objects and their parts look like, on the same clutter as the birds.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.synth.attributes import random_attributes
from engine.synth.bird import render_bird_scene
from engine.synth.canvas import RGB, Pen, chord_band, jitter, rotate, shade, translate
from engine.synth.scenery import BACKGROUND_PHRASES, SUPERSAMPLE, SynthError, as_generator, render_scene

FAMILIES = ("bird", "fish", "butterfly", "flower", "vehicle", "aircraft", "empty_scene")
_OBJECT = 1  # mask id of a coarse object

_C: dict[str, RGB] = {
    "red": (214, 34, 40), "orange": (246, 132, 22), "yellow": (246, 206, 30), "green": (48, 160, 64),
    "blue": (40, 96, 224), "purple": (132, 60, 176), "pink": (240, 140, 170), "white": (244, 244, 240),
    "black": (26, 26, 30), "silver": (180, 184, 190), "brown": (120, 74, 40), "grey": (120, 122, 128),
}


def _a(word: str) -> str:
    """'a red' / 'an orange'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(rng: np.random.Generator, names, avoid: str | None = None) -> str:
    names = [n for n in names if n != avoid]
    return names[int(rng.integers(len(names)))]


def _fish(pen: Pen, rng: np.random.Generator) -> str:
    body = _pick(rng, ("orange", "blue", "yellow", "red", "silver", "green", "purple"))
    fin = _pick(rng, ("orange", "yellow", "blue", "red", "black", "white"), body)
    pattern = _pick(rng, ("plain", "stripes", "spots"))
    pc = _pick(rng, ("white", "black", "blue", "yellow"), body)
    bc, fc = jitter(_C[body], rng), jitter(_C[fin], rng)
    line = shade(bc, 0.45)
    pen.polygon([[0.47, 0.37], [0.58, 0.22], [0.66, 0.36]], fc, _OBJECT, line, 0.006)          # dorsal fin
    pen.polygon([[0.5, 0.6], [0.56, 0.74], [0.62, 0.61]], fc, _OBJECT, line, 0.006)            # pelvic fin
    pen.polygon([[0.27, 0.5], [0.08, 0.33], [0.14, 0.5], [0.08, 0.67]], fc, _OBJECT, line, 0.006)  # tail
    rx, ry = 0.3, 0.15
    b = pen.then(translate(0.53, 0.5))
    b.ellipse(0, 0, rx, ry, bc, _OBJECT, outline=line, width=0.006)
    if pattern == "stripes":
        for x in (-0.14, -0.04, 0.06):
            b.polygon(chord_band(rx, ry, x - 0.025, x + 0.025), _C[pc], _OBJECT)
    elif pattern == "spots":
        for _ in range(12):
            x, y = rng.uniform(-0.22, 0.12), rng.uniform(-0.09, 0.09)
            if (x / rx) ** 2 + (y / ry) ** 2 < 0.7:
                b.circle(x, y, 0.018, _C[pc], _OBJECT)
    b.circle(0.19, -0.03, 0.032, (246, 246, 246), _OBJECT)
    b.circle(0.2, -0.03, 0.017, (10, 10, 10), _OBJECT)
    b.line([[0.27, 0.04], [0.23, 0.05]], line, 0.008, _OBJECT)
    marks = {"plain": "", "stripes": f"{pc} stripes and ", "spots": f"{pc} spots and "}[pattern]
    return f"a photo of {_a(body)} fish with {marks}{fin} fins"


def _butterfly(pen: Pen, rng: np.random.Generator) -> str:
    wing = _pick(rng, ("orange", "blue", "yellow", "white", "red", "purple", "green"))
    pattern = _pick(rng, ("plain", "eyespots", "borders", "spots"))
    pc = _pick(rng, ("black", "white", "yellow", "blue", "orange"), wing)
    wc = jitter(_C[wing], rng)
    line = (30, 24, 24)
    for side in (-1, 1):
        s = pen.then(translate(0.5, 0.5) @ np.diag([side, 1.0, 1.0]))
        upper = dict(cx=0.19, cy=-0.1, rx=0.19, ry=0.14, angle=25)
        lower = dict(cx=0.14, cy=0.13, rx=0.13, ry=0.11, angle=-30)
        for w in (upper, lower):
            if pattern == "borders":
                s.ellipse(w["cx"], w["cy"], w["rx"], w["ry"], _C[pc], _OBJECT, angle=w["angle"])
                s.ellipse(w["cx"], w["cy"], w["rx"] * 0.72, w["ry"] * 0.66, wc, _OBJECT, angle=w["angle"])
            else:
                s.ellipse(w["cx"], w["cy"], w["rx"], w["ry"], wc, _OBJECT, angle=w["angle"], outline=line,
                          width=0.006)
        if pattern == "eyespots":
            s.circle(0.24, -0.12, 0.05, _C[pc], _OBJECT)
            s.circle(0.24, -0.12, 0.022, (10, 10, 10), _OBJECT)
            s.circle(0.16, 0.15, 0.035, _C[pc], _OBJECT)
        elif pattern == "spots":
            for x, y in ((0.3, -0.2), (0.34, -0.08), (0.2, -0.2), (0.22, 0.2), (0.12, 0.22)):
                s.circle(x, y, 0.022, _C[pc], _OBJECT)
        s.line([[0.01, -0.15], [0.1, -0.3]], line, 0.008, _OBJECT)
        s.circle(0.1, -0.3, 0.015, line, _OBJECT)
    pen.ellipse(0.5, 0.52, 0.025, 0.17, (40, 32, 28), _OBJECT)
    marks = {"plain": "", "eyespots": f" with {pc} eyespots", "borders": f" with {pc} wing borders",
             "spots": f" with {pc} spots"}[pattern]
    return f"a photo of {_a(wing)} butterfly{marks}"


def _flower(pen: Pen, rng: np.random.Generator) -> str:
    petal = _pick(rng, ("red", "pink", "yellow", "white", "purple", "orange", "blue"))
    centre = _pick(rng, ("yellow", "brown", "black", "orange"), petal)
    n = int(rng.choice([5, 6, 8, 12]))
    stem = (52, 130, 50)
    pen.line([[0.5, 0.45], [0.5 + rng.uniform(-0.05, 0.05), 0.98]], stem, 0.025, _OBJECT)
    for side in (-1, 1):
        pen.ellipse(0.5 + side * 0.08, 0.78, 0.08, 0.03, stem, _OBJECT, angle=side * 30)
    pc = jitter(_C[petal], rng)
    length = 0.16 if n < 12 else 0.17
    width = {5: 0.085, 6: 0.075, 8: 0.06, 12: 0.04}[n]
    head = pen.then(translate(0.5, 0.4) @ rotate(rng.uniform(0, 360)))
    for k in range(n):
        p = head.then(rotate(360.0 * k / n))
        p.ellipse(length * 0.85, 0, length * 0.85, width, pc, _OBJECT, outline=shade(pc, 0.6), width=0.005)
    head.circle(0, 0, 0.065, _C[centre], _OBJECT, outline=shade(_C[centre], 0.5), width=0.005)
    return f"a photo of {_a(petal)} flower with {n} petals and {_a(centre)} centre"


def _wheel(pen: Pen, x: float, y: float, r: float) -> None:
    pen.circle(x, y, r, (24, 24, 26), _OBJECT)
    pen.circle(x, y, r * 0.5, (170, 172, 178), _OBJECT)


def _vehicle(pen: Pen, rng: np.random.Generator) -> str:
    color = _pick(rng, ("red", "blue", "yellow", "white", "green", "orange", "silver", "black"))
    kind = _pick(rng, ("car", "truck", "bus"))
    c = jitter(_C[color], rng)
    line, glass = shade(c, 0.45) if color != "black" else (90, 90, 96), (160, 200, 230)
    if kind == "car":
        pen.polygon([[0.3, 0.5], [0.38, 0.34], [0.64, 0.34], [0.74, 0.5]], c, _OBJECT, line, 0.006)
        pen.polygon([[0.35, 0.49], [0.41, 0.37], [0.5, 0.37], [0.5, 0.49]], glass, _OBJECT)
        pen.polygon([[0.53, 0.49], [0.53, 0.37], [0.62, 0.37], [0.69, 0.49]], glass, _OBJECT)
        pen.polygon([[0.1, 0.5], [0.9, 0.5], [0.92, 0.64], [0.08, 0.64]], c, _OBJECT, line, 0.006)
        pen.circle(0.89, 0.54, 0.018, (250, 230, 120), _OBJECT)
        wheels = (0.25, 0.75)
    elif kind == "truck":
        pen.polygon([[0.08, 0.26], [0.62, 0.26], [0.62, 0.64], [0.08, 0.64]], shade(c, 1.35), _OBJECT, line, 0.006)
        pen.polygon([[0.64, 0.36], [0.82, 0.36], [0.9, 0.48], [0.9, 0.64], [0.64, 0.64]], c, _OBJECT, line, 0.006)
        pen.polygon([[0.7, 0.39], [0.8, 0.39], [0.86, 0.48], [0.7, 0.48]], glass, _OBJECT)
        wheels = (0.2, 0.47, 0.78)
    else:
        pen.polygon([[0.06, 0.28], [0.9, 0.28], [0.94, 0.4], [0.94, 0.66], [0.06, 0.66]], c, _OBJECT, line, 0.006)
        for x in np.arange(0.1, 0.86, 0.12):
            pen.polygon([[x, 0.33], [x + 0.09, 0.33], [x + 0.09, 0.45], [x, 0.45]], glass, _OBJECT)
        wheels = (0.22, 0.76)
    for x in wheels:
        _wheel(pen, x, 0.66, 0.075)
    return f"a photo of {_a(color)} {kind}"


def _aircraft(pen: Pen, rng: np.random.Generator) -> str:
    color = _pick(rng, ("white", "grey", "red", "blue", "yellow", "green", "silver"))
    tail = _pick(rng, ("red", "blue", "black", "yellow", "orange"), color)
    kind = _pick(rng, ("jet", "propeller"))
    c, tc = jitter(_C[color], rng), _C[tail]
    line = shade(c, 0.5)
    if kind == "jet":  # top view, swept wings, two engines
        for s in (-1, 1):
            pen.polygon([[0.56, 0.5], [0.36, 0.5 + s * 0.38], [0.3, 0.5 + s * 0.38], [0.42, 0.5]], c, _OBJECT,
                        line, 0.006)
            pen.ellipse(0.44, 0.5 + s * 0.17, 0.05, 0.022, shade(c, 0.75), _OBJECT)
            pen.polygon([[0.17, 0.5], [0.08, 0.5 + s * 0.14], [0.05, 0.5 + s * 0.14], [0.1, 0.5]], tc, _OBJECT)
    else:  # straight wings, propeller at the nose
        for s in (-1, 1):
            pen.polygon([[0.6, 0.5], [0.58, 0.5 + s * 0.36], [0.5, 0.5 + s * 0.36], [0.48, 0.5]], c, _OBJECT,
                        line, 0.006)
            pen.polygon([[0.18, 0.5], [0.15, 0.5 + s * 0.13], [0.09, 0.5 + s * 0.13], [0.1, 0.5]], tc, _OBJECT)
        pen.ellipse(0.895, 0.5, 0.01, 0.1, (40, 40, 44), _OBJECT)
    pen.ellipse(0.5, 0.5, 0.4, 0.05, c, _OBJECT, outline=line, width=0.006)
    pen.ellipse(0.12, 0.5, 0.05, 0.018, tc, _OBJECT)
    pen.ellipse(0.84, 0.5, 0.03, 0.022, (90, 130, 170), _OBJECT)
    name = "jet airliner" if kind == "jet" else "propeller plane"
    return f"a photo of {_a(color)} {name} with {_a(tail)} tail"


_DRAW = {"fish": _fish, "butterfly": _butterfly, "flower": _flower, "vehicle": _vehicle, "aircraft": _aircraft}


def render_coarse(family: str, rng: np.random.Generator, size: int = 96, clutter: str = "high",
                  supersample: int = SUPERSAMPLE) -> tuple[Image.Image, str]:
    """One picture of a coarse ``family`` (see ``FAMILIES``) and its caption; ``rng``: Generator or seed."""
    if family == "bird":
        r_attrs, r_scene = as_generator(rng).spawn(2)
        scene, caption = render_bird_scene(random_attributes(r_attrs), r_scene, size, clutter, supersample)
        return scene.image, caption
    if family == "empty_scene":
        scene = render_scene(rng, size, clutter, None, supersample)
        extra = " and colourful shapes" if clutter == "high" else ""
        return scene.image, f"a photo of an empty scene with {BACKGROUND_PHRASES[scene.background]}{extra}"
    if family not in _DRAW:
        raise SynthError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    scene = render_scene(rng, size, clutter, _DRAW[family], supersample)
    return scene.image, scene.info

