"""Process-wide CPU runtime settings that make PyTorch's CPU paths fast; applied once by entry points.

glibc serves every allocation above its mmap threshold (128 KiB at first, raised only slowly) with a fresh
``mmap``, so each conv activation of a CNN forward is a new mapping whose pages fault in one by one and are
returned with ``munmap`` right after. ``python -m benchmarks.allocator_speed`` (Lite0, 224 px, batch 32, 2 cores):
forward 32.8 -> 92.7 img/s and training step 10.1 -> 16.9 img/s from this alone; with channels_last as well
(the trainer's layout) 122.3 and 31.8 img/s.
Raising the threshold and the trim threshold keeps freed memory in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: mmap thresholds tried in order: 1 GiB covers the activations of a batch of 32 at 224 px (a 51 MiB
#: 112 x 112 x 32-channel map); glibc versions that cap the value at HEAP_MAX / 2 refuse it and get 32 MiB
#: (measured 1.3x slower training than 1 GiB on Lite0 at 224 px, still 1.5x faster than glibc's default)
MMAP_THRESHOLDS = (1 << 30, 32 * 1024 * 1024)
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def tune_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (see module doc). True when applied; False elsewhere (musl,
    macOS, Windows), where it is a no-op. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        ok = any(mallopt(_M_MMAP_THRESHOLD, t) == 1 for t in MMAP_THRESHOLDS)
        _applied = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return _applied
