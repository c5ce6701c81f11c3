"""Build: create an index, or extend the served one, from a folder on the server.

Only folders under the roots the server was started with (``--allow-root``) are accepted: typed paths
are resolved (symlinks included) and refused outside them. Without ``--allow-root`` the page is off.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.errors import PPSSLError
from indexer.adapt import MIN_GALLERY
from indexer.faiss_index import INDEX_TYPES
from ui import state
from ui.paths import PathNotAllowedError, allowed_path


s = state.settings()
st.title("Build")
if not s.allow_roots:
    st.info("Building is disabled: the server was started without `--allow-root DIR`. Restart it with "
            "`ppssl serve --allow-root DIR` to let this page index folders under DIR.")
    st.stop()

st.caption("Allowed roots (folders, checkpoints and new indexes must lie under one of them): "
           + ", ".join(f"`{r}`" for r in s.allow_roots))


def _progress_callback(bar):
    def cb(done: int, total: int) -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        bar.progress(frac, text=f"embedding {done:,} / {total:,} images")
    return cb


def _show_report(report) -> None:
    st.success(f"added {report.added:,} · already present {report.already_present:,} · "
               f"skipped {len(report.skipped):,} · {report.seconds:.1f} s")
    if report.adapt and "skipped" in report.adapt:
        st.info(f"Not adapted: {report.adapt['skipped']}")
    elif report.adapt:
        st.info(f"Adapted to these photos: a retrieval head ({report.adapt['stored_dim']} → {report.adapt['dim']} "
                f"dims) fitted on {report.adapt['fitted_on']:,} vectors in {report.adapt['seconds']:.1f} s.")
    prec = report.precision or {}
    if prec.get("mode") == "int8":
        sp = (prec.get("speed") or {}).get("speedup")
        st.info(f"Embedded at int8 (calibrated on {prec.get('calibration_count', 0):,} of these photos; features agree "
                f"with fp32 at mean cosine {prec['agreement']['mean_cosine']:.3f}"
                + (f"; forward {sp:.1f}x faster here" if sp else "") + ").")
    elif prec.get("reason"):
        st.caption(f"Embedded at fp32: {prec['reason']}")
    if report.skipped:
        st.warning(f"{len(report.skipped)} files were skipped:")
        st.dataframe(pd.DataFrame(report.skipped, columns=["file", "reason"]), hide_index=True)


MODES = ["Extend the current index", "Create a new index", "Improve it by training"]
mode = st.radio("What to do", MODES, horizontal=True, key="build_mode")

if mode == "Improve it by training":
    from ui import job_panel

    job_panel.render(s)
elif mode == "Extend the current index":
    index_dir = state.current_index_dir()
    if index_dir is None:
        st.info("No index is being served; create one instead.")
        st.stop()
    st.caption(f"Adds the images of a folder to `{index_dir}` with the index's own encoder. The folder must lie "
               "under the index's gallery root and under an allowed root; files already indexed are skipped.")
    folder_text = st.text_input("Image folder on the server", key="build_extend_folder")
    if st.button("Add images", type="primary", key="build_extend_go"):
        try:
            folder = allowed_path(folder_text, s.allow_roots, kind="folder")
            if not folder.is_dir():
                raise PathNotAllowedError(f"folder {folder_text!r} is not a directory")
            from indexer import EmbedOptions, add_to_index

            bar = st.progress(0.0, text="scanning…")
            report = add_to_index(index_dir, folder,
                                  embed=EmbedOptions(num_workers=0, progress=_progress_callback(bar)))
            bar.progress(1.0, text="done")
        except PPSSLError as exc:
            st.error(str(exc))
        else:
            _show_report(report)
            st.session_state.pop(state.KEY_QUERY, None)  # the new version is opened on the next run
else:
    folder_text = st.text_input("Image folder on the server (one sub-folder per class gives labels)",
                                key="build_new_folder")
    use_current = st.checkbox("Use the current index's encoder", value=state.current_index_dir() is not None,
                              key="build_new_same_encoder")
    ckpt_text = "" if use_current else st.text_input("Checkpoint directory on the server", key="build_new_ckpt")
    out_text = st.text_input("New index directory (under an allowed root)", key="build_new_out")
    index_type = st.selectbox("Index type", INDEX_TYPES, key="build_new_type",
                              help="flat: exact search; ivf/ivfsq/ivfpq/hnsw: approximate, for large galleries")
    adapt = st.checkbox("Adapt the index to these photos (recommended)", value=True, key="build_new_adapt",
                        help="Fits the unsupervised retrieval head on the gallery's own vectors after embedding (no "
                             f"labels, about a minute) and searches in its space. Skipped for galleries under {MIN_GALLERY} images "
                             "and for encoders that already end in a head.")
    precision = st.selectbox("Precision", ["auto", "fp32", "int8"], key="build_new_precision",
                             help="int8: ONNX Runtime quantised to 8 bits, calibrated on these photos (about twice as "
                                  "fast on CPUs with int8 dot products; retrieval within 0.5 mAP on validation). auto: "
                                  "int8 where it was measured to pay, else fp32. Fixed once the index exists.")
    if st.button("Build index", type="primary", key="build_new_go"):
        try:
            folder = allowed_path(folder_text, s.allow_roots, kind="folder")
            if not folder.is_dir():
                raise PathNotAllowedError(f"folder {folder_text!r} is not a directory")
            out = allowed_path(out_text, s.allow_roots, must_exist=False, kind="index directory")
            if out.exists() and not (out / "header.json").is_file() and any(out.iterdir()):
                raise PathNotAllowedError(f"{out} exists and is not an index; choose an empty or new directory")
            if use_current:
                if state.current_index_dir() is None:
                    raise PathNotAllowedError("no current index; give a checkpoint directory")
                from indexer import EncoderSpec

                # The recorded spec (checkpoint path or backbone + weights), so the new index can
                # rebuild its encoder too; an in-memory encoder object would not record where it came from.
                encoder = EncoderSpec.from_dict(state.get_index().header.encoder.spec)
            else:
                ckpt = allowed_path(ckpt_text, s.allow_roots, kind="checkpoint")
                if not (ckpt / "config.json").is_file():
                    raise PathNotAllowedError(f"{ckpt_text!r} is not a checkpoint directory (no config.json)")
                encoder = str(ckpt)
            from indexer import EmbedOptions, Source, build_index

            bar = st.progress(0.0, text="scanning…")
            report = build_index(out, Source(images=folder), encoder,
                                 embed=EmbedOptions(num_workers=0, progress=_progress_callback(bar)),
                                 index_type=index_type, adapt=None if adapt else False, precision=precision)
            bar.progress(1.0, text="done")
        except PPSSLError as exc:
            st.error(str(exc))
        else:
            _show_report(report)
            st.session_state["build_last_out"] = str(out)

    last = st.session_state.get("build_last_out")
    if last and (Path(last) / "header.json").is_file():
        if st.button(f"Open `{Path(last).name}` in this session", key="build_open"):
            if state.may_open(Path(last)):
                st.session_state[state.KEY_INDEX] = last
                st.session_state.pop(state.KEY_QUERY, None)
                st.switch_page("views/search.py")
            else:
                st.error("That index is outside the allowed roots.")
