"""The Build page's training job: start the README recipe on the served index's folder in the background, watch
it (epoch, step, images/s, ETA; survives a page reload), cancel or resume it, and see its verdict."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from engine.errors import PPSSLError
from ui import jobs, state
from ui.paths import PathNotAllowedError, allowed_path

STATE_TEXT = {"running": "running", "done": "finished", "failed": "failed", "cancelled": "cancelled",
              "interrupted": "interrupted (its process stopped: start it again to resume)"}


def _eta(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _show_progress(job: dict) -> None:
    p = job.get("progress") or {}
    phase = job.get("phase", "starting")
    if phase == "training" and p.get("phase") == "training" and p.get("total_steps"):
        frac = min(1.0, p["step"] / p["total_steps"])
        st.progress(frac, text=f"training: epoch {min(p['epoch'] + 1, p['epochs'])}/{p['epochs']} · step "
                               f"{p['step']}/{p['total_steps']} · {p.get('img_per_s', 0):.1f} images/s · "
                               f"ETA {_eta(p.get('eta_s'))}")
    elif phase == "training":
        st.progress(0.0, text=f"training: {p.get('phase', 'preparing (reading photos, finding neighbours)')}")
    elif phase == "building the trained index" and job.get("build"):
        b = job["build"]
        st.progress(min(1.0, b["done"] / max(1, b["total"])), text=f"indexing with the trained encoder: "
                                                                 f"{b['done']:,} / {b['total']:,}")
    else:
        st.progress(0.0 if phase != "done" else 1.0, text=phase)


def _show_result(job: dict) -> None:
    res = job.get("result") or {}
    verdict = res.get("verdict")
    if verdict:
        (st.success if res.get("trained_won") else st.warning)(verdict["text"])
    elif res.get("note"):
        st.info(res["note"])
    rows = []
    base = res.get("baselines") or {}
    for name, key in (("ImageNet start", "start"), ("start + retrieval head (the adapted index)", "start+head")):
        m = (base.get(key) or {}).get("gap") or (base.get(key) or {}).get("attention")
        if m:
            rows.append({"encoder": name, "rank-1 %": round(100 * m["rank-1"], 1), "mAP %": round(100 * m["mAP"], 1)})
    if res.get("trained"):
        rows.append({"encoder": "trained + head", "rank-1 %": round(100 * res["trained"]["rank-1"], 1),
                     "mAP %": round(100 * res["trained"]["mAP"], 1)})
    if rows:
        st.caption("Held-out photos (20 % of each class, never trained on), leave-one-out:")
        st.dataframe(rows, hide_index=True)
    if res.get("trained_won"):
        st.caption("The app now serves the trained index; the Evaluate page shows it beside the adapted one.")
    elif res.get("kept"):
        st.caption(f"The adapted index `{res['kept']}` stays in service.")
    trained = res.get("trained_index")
    if trained and Path(trained, "header.json").is_file() and st.button("Open the trained index in this session",
                                                                          key="job_open_trained"):
        st.session_state[state.KEY_INDEX] = trained
        st.session_state.pop(state.KEY_QUERY, None)
        st.rerun()


def render(s) -> None:
    served = s.index_dir
    index_dir = state.current_index_dir()
    if served is None or index_dir is None:
        st.info("No index is being served.")
        return
    root = jobs.jobs_root(served)
    work = jobs.last_work(root)
    job = jobs.status(work, root) if work else None
    header = state.get_index(index_dir).header
    folder = (header.source or {}).get("images")
    st.caption("Trains the real-photo recipe (configs/finetune_lite0.yaml: MoCo v2 with neighbour positives, then a "
               "retrieval head) on the index's photo folder in the background, indexes the folder with the trained "
               "encoder, and keeps whichever of the trained and the adapted index retrieves better on photos held "
               "out of training (20 % of each class folder). One job at a time; it keeps running if you leave.")

    @st.fragment(run_every=2.0)
    def live() -> None:
        current = jobs.status(work, root) if work else None
        if current is None:
            return
        st.markdown(f"**Job** `{work}` — {STATE_TEXT.get(current['state'], current['state'])}")
        if current["state"] == "running":
            _show_progress(current)
            if st.button("Cancel the job", key="job_cancel"):
                jobs.cancel(work)
                time.sleep(0.5)
                st.rerun()
        elif current["state"] == "done":
            _show_result(current)
        elif current.get("error"):
            st.error(current["error"])

    if job is not None:
        live()
    if job is not None and job["state"] == "running":
        return
    if not folder:
        st.info("This index was not built from a folder of photos, so there is nothing to train on.")
        return
    if job is not None and job["state"] in ("interrupted", "cancelled", "failed"):
        if st.button("Resume the job", type="primary", key="job_resume"):
            _start(Path(job["spec"]["images"]), work, Path(job["spec"]["baseline"] or served), root)
        st.divider()
    st.markdown(f"**New job** on `{folder}`")
    default = str(Path(index_dir).parent / f"{Path(index_dir).name}-trained")
    work_text = st.text_input("Work folder for the run and the trained index (under an allowed root)", value=default,
                              key="job_work")
    if st.button("Start training", type="primary", key="job_start"):
        try:
            new_work = allowed_path(work_text, s.allow_roots, must_exist=False, kind="work folder")
            images = allowed_path(folder, s.allow_roots, kind="folder")
        except PathNotAllowedError as exc:
            st.error(str(exc))
            return
        _start(images, new_work, Path(index_dir), root)


def _start(images: Path, work: Path, baseline: Path, root: Path) -> None:
    try:
        jobs.start(images, work, baseline, root)
    except (PPSSLError, OSError) as exc:
        st.error(str(exc))
        return
    st.rerun()
