"""Server-side settings of the app, passed from ``ui.server.serve`` to the Streamlit process.

They travel as environment variables so a visitor cannot change them: the served index, the folders
builds may read from and write to, and the upload limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_INDEX = "PPSSL_UI_INDEX"  # the index directory served by default
ENV_ALLOW_ROOTS = "PPSSL_UI_ALLOW_ROOTS"  # os.pathsep-separated folders the Build page may use
ENV_MAX_UPLOAD_MB = "PPSSL_UI_MAX_UPLOAD_MB"  # upload size cap in MiB
ENV_MAX_PIXELS = "PPSSL_UI_MAX_PIXELS"  # decoded-size cap of an uploaded image (decompression bombs)
ENV_COMPARE = "PPSSL_UI_COMPARE"  # an index over the same images shown beside the served one (Evaluate page)
ENV_QDRANT = "PPSSL_UI_QDRANT"  # search the served index's Qdrant copy at this folder or URL

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Settings:
    """What the operator chose when starting the server."""

    index_dir: Path | None  # the served index (None: the app asks for ``--index``)
    allow_roots: tuple[Path, ...] = ()  # resolved folders the Build page may read and write under
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB  # uploads larger than this are refused
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded images larger than this are refused
    compare_dir: Path | None = None  # another index over the same images (e.g. ImageNet-only) for the Evaluate page
    qdrant: str | None = None  # the served index is searched in its Qdrant copy here (folder or URL)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def to_env(self) -> dict[str, str]:
        env = {ENV_MAX_UPLOAD_MB: str(self.max_upload_mb), ENV_MAX_PIXELS: str(self.max_pixels),
               ENV_ALLOW_ROOTS: os.pathsep.join(str(r) for r in self.allow_roots)}
        if self.index_dir is not None:
            env[ENV_INDEX] = str(self.index_dir)
        if self.compare_dir is not None:
            env[ENV_COMPARE] = str(self.compare_dir)
        if self.qdrant:
            env[ENV_QDRANT] = self.qdrant
        return env


def _positive_int(env: dict, key: str, default: int) -> int:
    raw = env.get(key, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = default
    return value if value > 0 else default


def load_settings(env: dict | None = None) -> Settings:
    """Read the settings from the environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
    index = env.get(ENV_INDEX) or None
    compare = env.get(ENV_COMPARE) or None
    roots = tuple(Path(r).expanduser().resolve() for r in env.get(ENV_ALLOW_ROOTS, "").split(os.pathsep) if r)
    return Settings(
        index_dir=Path(index).expanduser().resolve() if index else None,
        allow_roots=roots,
        max_upload_mb=_positive_int(env, ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB),
        max_pixels=_positive_int(env, ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS),
        compare_dir=Path(compare).expanduser().resolve() if compare else None,
        qdrant=env.get(ENV_QDRANT) or None,
    )
