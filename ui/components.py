"""Pieces shared by the pages: opening the index with a clear message, the sidebar, result cards."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.errors import PPSSLError
from ui import state


def require_index() -> tuple[Path, object]:
    """The session's index directory and open index; shows a message and stops the page otherwise."""
    d = state.current_index_dir()
    if d is None:
        st.error("No index is being served. Start the app with `ppssl serve --index DIR`, "
                 "or plain `ppssl serve` for the built-in demo.")
        st.stop()
    try:
        idx = state.get_index(d)
        state.get_encoder(d)
    except (PPSSLError, OSError) as exc:
        st.error(f"Cannot open the index at `{d}`: {exc}")
        st.stop()
    return d, idx


def sidebar() -> None:
    """Which index is served and the upload limits."""
    s = state.settings()
    d = state.current_index_dir()
    with st.sidebar:
        st.markdown("### Index")
        if d is None:
            st.caption("none (start with `--index DIR`)")
            return
        try:
            idx = state.get_index(d)
        except (PPSSLError, OSError) as exc:
            st.caption(f"`{d}`: cannot open ({exc})")
            return
        st.caption(f"`{d.name}` · {idx.count:,} images · {idx.dim}-d · {idx.index_type}"
                   + (" · adapted to its photos" if getattr(idx, "adapted", None) else "")
                   + (" · int8" if getattr(idx, "precision", "fp32") == "int8" else ""))
        if s.index_dir is not None and d == state.served_index_dir() and d != s.index_dir:
            st.caption(f"serving the trained index: training beat `{s.index_dir.name}` on held-out photos")
        st.caption(f"encoder: `{idx.encoder_ref}` · `{str(idx.fingerprint)[:12]}`")
        if d != s.index_dir and s.index_dir is not None and st.button("Back to the served index"):
            st.session_state.pop(state.KEY_INDEX, None)
            st.session_state.pop(state.KEY_QUERY, None)
            st.rerun()
        st.caption(f"uploads up to {s.max_upload_mb} MiB and {s.max_pixels / 1e6:.0f} Mpx")


def badge(same: bool | None) -> str:
    """Markdown badge: same class / other class / nothing when the query's class is unknown."""
    if same is None:
        return ""
    return ":green-badge[same class]" if same else ":red-badge[other class]"


def show_gallery_image(path: str, *, caption: str | None = None, size: int = 320, index_dir=None) -> bool:
    """Draw a gallery thumbnail; a missing or unreadable file shows a placeholder instead."""
    thumb = state.thumbnail(path, size, index_dir)
    if thumb is None:
        st.warning(f"image unavailable: `{path}`")
        return False
    st.image(thumb, caption=caption, width="stretch", output_format="JPEG")
    return True


def hit_caption(rank: int, hit, query_label: str | None) -> str:
    same = None if query_label is None or hit.label is None else hit.label == query_label
    label = hit.label if hit.label is not None else "unlabelled"
    return f"**#{rank}** · {hit.score:.3f} · {label} {badge(same)}".strip()


def restore(key: str) -> None:
    """Bring back a widget's value after a page switch (Streamlit drops the state of unrendered widgets)."""
    shadow = f"_kept_{key}"
    if key not in st.session_state and shadow in st.session_state:
        st.session_state[key] = st.session_state[shadow]


def keep(key: str, value):
    """Remember a widget's value for :func:`restore`; returns ``value``."""
    st.session_state[f"_kept_{key}"] = value
    return value

