"""A contact sheet of the synthetic world for the README: classes, neighbour pairs, coarse families, clutter."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.atomic import atomic_path
from engine.synth.attributes import differing, hamming, select_classes
from engine.synth.bird import render_bird
from engine.synth.coarse import FAMILIES, render_coarse

_BG, _INK, _GREY = (255, 255, 255), (20, 20, 20), (90, 90, 90)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _neighbour_pairs(classes, count: int):
    """Up to ``count`` pairs at Hamming distance 1, each differing in a different attribute."""
    pairs, used_attrs = [], set()
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            if hamming(a.attributes, b.attributes) == 1:
                attr = differing(a.attributes, b.attributes)[0]
                if attr not in used_attrs:
                    used_attrs.add(attr)
                    pairs.append((a, b, attr))
    return pairs[:count]


def contact_sheet(path, seed: int = 0, tile: int = 128, columns: int = 9, classes: int = 24) -> Path:
    """Render the sheet and write it (PNG, atomically) to ``path``; returns the path."""
    specs = select_classes(classes, seed)
    title_f, label_f, small_f = _font(18), _font(13), _font(11)
    pad, label_h, row_title_h = 6, 40, 26
    rows: list[tuple[str, list[tuple[Image.Image, str]]]] = []

    rows.append((f"Fine-grained classes (first {columns} of {classes}; clusters share the body colour, clutter none)",
                 [(render_bird(c.attributes, np.random.default_rng([seed, 11, i]), tile, "none"),
                   f"{i + 1:03d} " + c.name.replace("_", " ")) for i, c in enumerate(specs[:columns])]))

    cells = []
    for k, (a, b, attr) in enumerate(_neighbour_pairs(specs, columns // 2)):
        r = [seed, 12, k]  # same generator for both: same pose and background, only the attribute differs
        cells.append((render_bird(a.attributes, np.random.default_rng(r), tile, "none"),
                      f"{attr.replace('_', ' ')}: {a.attributes[attr]}"))
        cells.append((render_bird(b.attributes, np.random.default_rng(r), tile, "none"),
                      f"{attr.replace('_', ' ')}: {b.attributes[attr]}"))
    rows.append(("Neighbour pairs: classes that differ in one small attribute (same pose for the comparison)", cells))

    rows.append(("Coarse families for the teacher (clutter low), with their captions",
                 [render_coarse(f, np.random.default_rng([seed, 13, i]), tile, "low") for i, f in enumerate(FAMILIES)]))

    c0 = specs[0]
    cells = []
    for j in range(columns // 3):
        for level in ("none", "low", "high"):  # same generator per column group: only the clutter changes
            cells.append((render_bird(c0.attributes, np.random.default_rng([seed, 14, j]), tile, level),
                          f"clutter {level}"))
    rows.append((f"Clutter levels, one class ({c0.name.replace('_', ' ')})", cells))

    rows.append((f"Intra-class variation at clutter high: position, scale, rotation, mirror, lighting, occlusion "
                 f"({c0.name.replace('_', ' ')})",
                 [(render_bird(c0.attributes, np.random.default_rng([seed, 15, j]), tile, "high"), "")
                  for j in range(columns)]))

    width = pad + columns * (tile + pad)
    height = 40 + sum(row_title_h + tile + label_h + pad for _ in rows)
    sheet = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(sheet)
    d.text((pad, 8), f"Synthetic fine-grained world (seed {seed}, {tile} px renders)", font=title_f, fill=_INK)
    y = 40
    for title, cells in rows:
        d.text((pad, y + 4), title, font=label_f, fill=_INK)
        y += row_title_h
        for i, (img, text) in enumerate(cells):
            x = pad + i * (tile + pad)
            sheet.paste(img, (x, y))
            chars = max(8, tile // 6)
            for li, line in enumerate(textwrap.wrap(text, chars)[:3]):
                d.text((x, y + tile + 2 + li * 12), line, font=small_f, fill=_GREY)
        y += tile + label_h + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path

