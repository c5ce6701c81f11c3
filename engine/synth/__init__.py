"""The synthetic fine-grained world: procedural 'birds' whose classes differ only in small parts, on cluttered,
class-independent backgrounds, plus coarse families (fish, butterflies, flowers, ...) with captions for the
offline teacher. numpy + Pillow only; written in the CUB_200_2011 layout so the CUB reader reads it.

Names are imported lazily so that ``ppssl --help`` (which imports ``engine.synth.cli``) stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "engine.synth.attributes": ("ATTRIBUTES", "SMALL_ATTRIBUTES", "CLUSTER_ATTRIBUTES", "BirdClass",
                                "select_classes", "hamming", "nearest_neighbours", "random_attributes",
                                "bird_caption"),
    "engine.synth.bird": ("PARTS", "DISCRIMINATIVE_PARTS", "part_share", "render_bird", "render_bird_scene"),
    "engine.synth.coarse": ("FAMILIES", "render_coarse"),
    "engine.synth.scenery": ("CLUTTER_LEVELS", "SynthError"),
    "engine.synth.world": ("generate_world",),
    "engine.synth.sheet": ("contact_sheet",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine.synth' has no attribute {name!r}")
