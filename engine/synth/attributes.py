"""The bird attribute space, the choice of fine-grained classes in it, class names and captions.

A class is one combination of attribute values. Classes come in clusters (a "genus") that share the body colour
and differ only in the small parts (crown, eye-ring, beak, wing bars, breast marks, tail), each cluster grown by
flipping one or two small attributes of an earlier member: every class of a cluster has a neighbour at Hamming
distance 1 or 2, and telling neighbours apart needs the small parts, not the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.synth.canvas import RGB

# attribute -> its values (the first value of eye_ring / wing_bar / breast_pattern means "absent")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "body_color": ("brown", "grey", "olive", "slate", "tan", "rust"),
    "crown_color": ("red", "yellow", "blue", "black", "white", "orange"),
    "eye_ring": ("none", "white", "yellow", "red"),
    "beak_shape": ("conical", "thin", "hooked", "long"),
    "beak_color": ("black", "yellow", "orange", "pink"),
    "wing_bar": ("none", "single", "double", "spotted"),
    "breast_pattern": ("plain", "spotted", "streaked"),
    "tail_shape": ("rounded", "forked", "pointed", "square"),
}
# attributes of small parts: the ones that separate classes inside a cluster
SMALL_ATTRIBUTES = ("crown_color", "eye_ring", "beak_shape", "beak_color", "wing_bar", "breast_pattern", "tail_shape")
# attributes shared by all classes of a cluster (a large, coarse cue)
CLUSTER_ATTRIBUTES = ("body_color",)

COLORS: dict[str, RGB] = {
    # body colours: mid tones, so every crown colour stands out against them
    "brown": (139, 98, 62), "grey": (128, 130, 136), "olive": (118, 124, 58), "slate": (82, 98, 126),
    "tan": (190, 160, 112), "rust": (160, 78, 44),
    # part colours
    "red": (214, 28, 36), "yellow": (248, 208, 28), "blue": (36, 92, 226), "black": (22, 22, 24),
    "white": (248, 248, 244), "orange": (250, 132, 16), "pink": (238, 150, 165),
}
GENERA = ("Warbler", "Finch", "Sparrow", "Tanager", "Vireo", "Wren", "Thrush", "Flycatcher", "Bunting",
          "Grosbeak", "Kinglet", "Pipit", "Chat", "Shrike", "Oriole", "Towhee")
# (attribute, value) -> the word it adds to a class name
_NAME_WORDS = {
    "eye_ring": {"none": "Bare_eyed", "white": "White_ringed", "yellow": "Yellow_ringed", "red": "Red_ringed"},
    "beak_shape": {"conical": "Stubby_billed", "thin": "Thin_billed", "hooked": "Hook_billed",
                   "long": "Long_billed"},
    "beak_color": {v: f"{v.capitalize()}_beaked" for v in ATTRIBUTES["beak_color"]},
    "wing_bar": {"none": "Plain_winged", "single": "Bar_winged", "double": "Double_barred",
                 "spotted": "Spot_winged"},
    "breast_pattern": {"plain": "Clear_breasted", "spotted": "Spotted", "streaked": "Streaked"},
    "tail_shape": {"rounded": "Round_tailed", "forked": "Fork_tailed", "pointed": "Sharp_tailed",
                   "square": "Square_tailed"},
}


@dataclass(frozen=True)
class BirdClass:
    """One fine-grained class: a name, its attribute values and the cluster it was grown in."""
    name: str
    attributes: dict[str, str] = field(hash=False)
    cluster: int


def hamming(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(a[k] != b[k] for k in ATTRIBUTES)


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [k for k in ATTRIBUTES if a[k] != b[k]]


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """A uniformly random attribute combination (for the coarse 'bird' family)."""
    return {k: str(v[int(rng.integers(len(v)))]) for k, v in ATTRIBUTES.items()}


def _mutate(parent: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    child = dict(parent)
    n_flip = 1 if rng.random() < 0.6 else 2
    for k in rng.choice(SMALL_ATTRIBUTES, size=n_flip, replace=False):
        others = [v for v in ATTRIBUTES[k] if v != parent[k]]
        child[str(k)] = others[int(rng.integers(len(others)))]
    return child


def _cluster_sizes(n: int, rng: np.random.Generator) -> list[int]:
    sizes = []
    while n > 0:
        k = min(int(rng.integers(3, 5)), n)
        if n - k == 1:  # never leave a class alone in its cluster
            k += 1
        sizes.append(k)
        n -= k
    return sizes


def select_classes(n: int, seed: int) -> list[BirdClass]:
    """``n`` distinct classes in clusters of 3-4 (2-5 at the edges); deterministic in (n, seed)."""
    rng = np.random.default_rng([seed, 7001])
    bodies = list(rng.permutation(ATTRIBUTES["body_color"]))
    genera = list(rng.permutation(GENERA))
    used: set[tuple[str, ...]] = set()
    out: list[BirdClass] = []

    def key(a):
        return tuple(a[k] for k in ATTRIBUTES)

    for ci, k in enumerate(_cluster_sizes(n, rng)):
        body = str(bodies[ci % len(bodies)])
        genus = f"{body.capitalize()}_{genera[ci % len(genera)]}"
        if ci >= len(genera):
            genus += f"_{ci // len(genera) + 1}"
        while True:
            base = random_attributes(rng)
            base["body_color"] = body
            if key(base) not in used:
                break
        members = [base]
        used.add(key(base))
        tries = 0
        while len(members) < k:
            child = _mutate(members[int(rng.integers(len(members)))], rng)
            tries += 1
            if key(child) not in used or tries > 10_000:
                if key(child) in used:  # pragma: no cover - the space has ~150k combinations per body colour
                    raise RuntimeError("attribute space exhausted")
                used.add(key(child))
                members.append(child)
        for attrs in members:
            words = [f"{attrs['crown_color'].capitalize()}_crowned"]
            words += [_NAME_WORDS[a][attrs[a]] for a in differing(attrs, base) if a != "crown_color"]
            out.append(BirdClass("_".join(words + [genus]), attrs, ci))
    seen: dict[str, int] = {}
    for i, c in enumerate(out):  # names are unique by construction; keep a guard anyway
        if c.name in seen:
            out[i] = BirdClass(f"{c.name}_{i + 1}", c.attributes, c.cluster)
        seen[out[i].name] = i
    return out


def nearest_neighbours(classes: list[BirdClass]) -> dict[str, list[dict]]:
    """For each class, the other classes at the smallest Hamming distance, with the attributes that differ."""
    out = {}
    for c in classes:
        dists = [(hamming(c.attributes, o.attributes), o) for o in classes if o is not c]
        if not dists:
            out[c.name] = []
            continue
        best = min(d for d, _ in dists)
        out[c.name] = [{"name": o.name, "distance": d, "differs": differing(c.attributes, o.attributes)}
                       for d, o in dists if d == best]
    return out


# ---------------------------------------------------------------------------------------------------- captions
_BEAK_WORDS = {"conical": "short conical", "thin": "thin", "hooked": "hooked", "long": "long"}
_WING_WORDS = {"single": "a white wing bar", "double": "two white wing bars", "spotted": "white-spotted wings"}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def bird_caption(attrs: dict[str, str], visible: set[str] | None = None) -> str:
    """'a photo of a small olive bird with a red crown, a hooked yellow beak and a spotted breast'.

    Only attributes in ``visible`` (all when None) are named; absent parts (no eye-ring, plain wings, plain
    breast) are not mentioned.
    """
    def vis(a):
        return visible is None or a in visible

    p = []
    if vis("crown_color"):
        p.append(f"{_a(attrs['crown_color'])} crown")
    if vis("eye_ring") and attrs["eye_ring"] != "none":
        p.append(f"a {attrs['eye_ring']} eye-ring")
    if vis("beak_shape"):
        p.append(f"{_a(_BEAK_WORDS[attrs['beak_shape']])} {attrs['beak_color']} beak")
    if vis("wing_bar") and attrs["wing_bar"] != "none":
        p.append(_WING_WORDS[attrs["wing_bar"]])
    if vis("breast_pattern") and attrs["breast_pattern"] != "plain":
        p.append(f"a {attrs['breast_pattern']} breast")
    if vis("tail_shape"):
        p.append(f"a {attrs['tail_shape']} tail")
    head = f"a photo of a small {attrs['body_color']} bird"
    return f"{head} with {_join(p)}" if p else head
