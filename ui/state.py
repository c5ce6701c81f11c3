"""Per-process caches (index, encoder, GradCAM copy, evaluation, thumbnails) and per-session state.

Everything heavy is created once per process with ``st.cache_resource`` / ``st.cache_data`` and keyed
by the index directory plus a *stamp* of its files, so a rerun never reopens the index or re-embeds
the gallery, while an index extended on the Build page is picked up on the next run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from indexer.store import CONTENT_FILES as _STAMP_FILES  # files whose change means the index changed
from ui.paths import is_under
from ui.settings import Settings, load_settings

# session_state keys (one place, so pages agree)
KEY_INDEX = "ppssl_index_dir"  # index chosen in this session (Build page "open"), else the served one
KEY_QUERY = "ppssl_query"  # dict: the current query (see views/search.py)
KEY_SELECTED = "ppssl_selected"  # id of the result opened large


def settings() -> Settings:
    """The operator's settings (read from the environment on each run: cheap, and never cached stale)."""
    return load_settings()


def index_stamp(index_dir: str | Path) -> tuple:
    """(name, mtime_ns, size) of the index's files: changes whenever a writer commits."""
    out = []
    for name in _STAMP_FILES:
        p = Path(index_dir) / name
        try:
            st_ = p.stat()
            out.append((name, st_.st_mtime_ns, st_.st_size))
        except OSError:
            out.append((name, 0, 0))
    return tuple(out)


def served_index_dir() -> Path | None:
    """The index the app serves to every session: the operator's, or the trained index that replaced it after a
    training job in which training beat it on the held-out photos (``ui.jobs.promoted``)."""
    served = settings().index_dir
    if served is None:
        return None
    from ui import jobs

    return jobs.promoted(jobs.jobs_root(served), served) or served


def current_index_dir() -> Path | None:
    """The index this session looks at: one opened from the Build page, else the served one."""
    chosen = st.session_state.get(KEY_INDEX)
    return Path(chosen) if chosen else served_index_dir()


def may_open(index_dir: Path) -> bool:
    """Visitors may switch to the served index or to indexes under the allowed roots."""
    s = settings()
    p = Path(index_dir).resolve()
    return p == s.index_dir or p == served_index_dir() or any(is_under(p, r) for r in s.allow_roots)


def comparison_partner(index_dir: Path) -> tuple[str, str] | None:
    """What the Evaluate page shows beside ``index_dir``: ``(other index dir or "plain", why)``.

    The operator's ``--compare`` index for the served one; else the other side of the last training job's
    before/after; else, for an adapted index, its own vectors before the head."""
    from ui import jobs

    s = settings()
    here = Path(index_dir).resolve()
    if s.compare_dir is not None and here in (s.index_dir, served_index_dir()) and s.compare_dir != here:
        return str(s.compare_dir), "the index given with --compare"
    if s.index_dir is not None:
        other = jobs.partner(jobs.jobs_root(s.index_dir), here)
        if other is not None and (other / "header.json").is_file():
            return str(other), "before / after the training job"
    if getattr(get_index(index_dir), "adapted", None):
        return "plain", "the same vectors before the adapted index's head"
    return None


@st.cache_resource(show_spinner="Opening the index…", max_entries=8)
def _open_index(index_dir: str, stamp: tuple):
    from indexer import Index

    s = settings()
    if s.qdrant and s.index_dir is not None and Path(index_dir).resolve() == s.index_dir:
        from indexer.vectordb import VectorDBIndex

        return VectorDBIndex(s.qdrant, s.index_dir.name, index_dir=index_dir)  # served from its Qdrant copy
    return Index.open(index_dir)


def get_index(index_dir: str | Path | None = None):
    """The open ``indexer.Index`` (cached per process until its files change)."""
    index_dir = Path(index_dir) if index_dir else current_index_dir()
    return _open_index(str(index_dir), index_stamp(index_dir))


def _key(index_dir: str | Path | None) -> tuple[str, tuple]:
    d = Path(index_dir) if index_dir else current_index_dir()
    return str(d), index_stamp(d)


@st.cache_resource(show_spinner="Loading the encoder…", max_entries=4)
def _encoder(index_dir: str, fingerprint: str):
    return _open_index(*_key(index_dir)).load_encoder().eval()


def get_encoder(index_dir: str | Path | None = None):
    """The index's encoder, fingerprint-verified by the indexer; loaded once per process."""
    d, stamp = _key(index_dir)
    return _encoder(d, str(_open_index(d, stamp).fingerprint))


@st.cache_resource(show_spinner="Preparing GradCAM…", max_entries=4)
def _cam_model(index_dir: str, fingerprint: str):
    from engine.gradcam import cam_model

    return cam_model(_encoder(index_dir, fingerprint))


def get_cam_model(index_dir: str | Path | None = None):
    """A frozen copy of the encoder that GradCAM may hook (see ``engine.gradcam.cam_model``)."""
    d, stamp = _key(index_dir)
    return _cam_model(d, str(_open_index(d, stamp).fingerprint))


@st.cache_resource(show_spinner=False, max_entries=8)
def _sha_lookup(index_dir: str, stamp: tuple) -> dict[str, tuple[int, str | None]]:
    idx = _open_index(index_dir, stamp)
    return {r["sha256"]: (int(r["id"]), r.get("label")) for r in idx.records() if r.get("sha256")}


def gallery_match(sha256: str, index_dir: str | Path | None = None) -> tuple[int, str | None] | None:
    """(id, label) of a gallery record with exactly these bytes, if any."""
    return _sha_lookup(*_key(index_dir)).get(sha256)


@st.cache_data(show_spinner=False, max_entries=16)
def _eval_report(index_dir: str, stamp: tuple) -> dict:
    from indexer import evaluate_index

    return evaluate_index(index_dir).to_dict()


def eval_report(index_dir: str | Path | None = None) -> dict:
    """Leave-one-out evaluation of the index (``indexer.evaluate_index``), as a plain dict, cached."""
    return _eval_report(*_key(index_dir))


@st.cache_data(show_spinner=False, max_entries=8)
def _compare_report(index_dir: str, stamp: tuple, other_dir: str, other_stamp: tuple) -> dict:
    from indexer.evaluate import compare_indexes

    return compare_indexes(index_dir, other_dir)


def compare_report(index_dir: str | Path, other_dir: str | Path) -> dict:
    """Both indexes scored over the images they share (``indexer.evaluate.compare_indexes``), cached;
    ``other_dir`` "plain": an adapted index against its vectors before the head."""
    if str(other_dir) == "plain":
        return _compare_report(*_key(index_dir), "plain", ())
    return _compare_report(*_key(index_dir), *_key(other_dir))


def load_gallery_image(index, path: str):
    """A gallery image as PIL RGB, or None when the file is gone/unreadable (never raises)."""
    from engine.imageio import open_image

    try:
        return open_image(index.resolve(path))
    except Exception:  # noqa: BLE001 - a missing/corrupt gallery file must not break the page
        return None


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumb(index_dir: str, stamp: tuple, path: str, size: int) -> np.ndarray | None:
    from ui.images import preview

    img = load_gallery_image(_open_index(index_dir, stamp), path)
    return None if img is None else np.asarray(preview(img, size))


def thumbnail(path: str, size: int = 320, index_dir: str | Path | None = None) -> np.ndarray | None:
    """A cached thumbnail of a gallery image (uint8 RGB), or None when unreadable."""
    return _thumb(*_key(index_dir), path, size)


@st.cache_resource(show_spinner=False, max_entries=8)
def _records(index_dir: str, stamp: tuple) -> tuple[list[dict], list[str]]:
    idx = _open_index(index_dir, stamp)
    records = idx.records()
    return records, sorted({r.get("label") for r in records if r.get("label") is not None})


def gallery_records(index_dir: str | Path | None = None) -> list[dict]:
    """The manifest rows (id, path, label, ...), read once per index version. Do not mutate."""
    return _records(*_key(index_dir))[0]


def class_names(index_dir: str | Path | None = None) -> list[str]:
    """Sorted distinct labels of the gallery."""
    return _records(*_key(index_dir))[1]
