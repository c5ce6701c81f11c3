"""Which server paths a visitor may name: only those under the roots the server was started with.

Typed paths are resolved (``~``, ``..`` and symlinks) before the check, so a link inside an allowed
root that points outside it is refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from engine.errors import PPSSLError


class PathNotAllowedError(PPSSLError, PermissionError):
    """A path outside the allowed roots, or one that does not exist when it must."""


def is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def allowed_path(raw: str, roots: Iterable[Path], *, must_exist: bool = True, kind: str = "path") -> Path:
    """Resolve a visitor-typed path and check it lies under one of ``roots``.

    Args:
        raw: the text typed by the visitor (absolute, or relative to the first root).
        roots: resolved allowed roots; empty means nothing is allowed.
        must_exist: refuse paths that do not exist.
        kind: what the path is for, used in messages ("folder", "checkpoint", ...).

    Returns:
        The resolved absolute path.

    Raises:
        PathNotAllowedError: empty, outside every root, or missing.
    """
    roots = [Path(r).resolve() for r in roots]
    if not roots:
        raise PathNotAllowedError("building is disabled: the server was started without --allow-root")
    text = (raw or "").strip()
    if not text:
        raise PathNotAllowedError(f"enter a {kind}")
    if "\x00" in text:
        raise PathNotAllowedError(f"invalid {kind}: {text!r}")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    if not any(is_under(resolved, r) for r in roots):
        raise PathNotAllowedError(f"{kind} {text!r} is outside the allowed roots ({', '.join(map(str, roots))})")
    if must_exist and not resolved.exists():
        raise PathNotAllowedError(f"{kind} {text!r} does not exist")
    return resolved
