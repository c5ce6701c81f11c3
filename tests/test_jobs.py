"""Training jobs (ppssl/jobs.py, ui/jobs.py): run to a verdict, one at a time, progress, cancel, resume after a
kill, promotion only when training won; ``ppssl serve --images`` indexes and adapts a folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_ui_apptest import make_gallery

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = """
backbone: tinycnn
weights: null
method: moco
input_size: 32
batch_size: 4
queue_size: 8
proj_hidden: 16
proj_dim: 8
attn_k: 4
epochs: {epochs}
lr: 0.05
neighbour_positives: 2
whiten_dim: 4
whiten_neighbours: 2
eval_every: 0
workers: 1
tensorboard: false
"""


@pytest.fixture
def setup(tmp_path):
    """A labelled folder of photos, a plain index of it, and tiny recipes (1 and 40 epochs)."""
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    make_gallery(tmp_path / "photos", classes=3, per_class=8)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    build_index(tmp_path / "index", Source(images=tmp_path / "photos"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    for n in (1, 40):
        (tmp_path / f"recipe{n}.yaml").write_text(TINY_RECIPE.format(epochs=n))
    return tmp_path


def test_a_job_trains_indexes_and_records_the_verdict(setup):
    from indexer import Index
    from ppssl.jobs import read_job, run_job

    t = setup
    job = run_job(str(t / "photos"), str(t / "work"), baseline=str(t / "index"), lock=str(t / "jobs" / ".lock"),
                  promote=str(t / "jobs" / "promoted.json"), config=str(t / "recipe1.yaml"))
    assert job["state"] == "done" and read_job(t / "work")["state"] == "done"
    res = job["result"]
    report = json.loads((t / "work" / "run" / "report.json").read_text())
    assert res["verdict"] == report["verdict"] and res["trained_won"] == report["verdict"]["trained_won"]
    assert Index.open(res["trained_index"]).count == 24
    promoted = t / "jobs" / "promoted.json"
    assert promoted.is_file() == res["trained_won"]
    assert res["kept"] == (res["trained_index"] if res["trained_won"] else str(t / "index"))
    # the app's view of it
    from ui import jobs

    st = jobs.status(t / "work", t / "jobs")
    assert st["state"] == "done" and st["progress"]["phase"] == "done" and st["build"]["done"] == 24
    served = jobs.promoted(t / "jobs", t / "index")
    assert (served is not None) == res["trained_won"]
    assert jobs.partner(t / "jobs", t / "work" / "index") == Path(str(t / "index"))


def test_one_job_at_a_time_and_never_inside_the_photos(setup):
    from ppssl.jobs import JobBusy, JobError, acquire, run_job

    t = setup
    fd = acquire(t / "jobs" / ".lock")
    try:
        with pytest.raises(JobBusy):
            run_job(str(t / "photos"), str(t / "work"), lock=str(t / "jobs" / ".lock"), config=str(t / "recipe1.yaml"))
        from ui import jobs

        assert jobs.lock_held(t / "jobs")
        with pytest.raises(jobs.JobError, match="already running"):
            jobs.start(t / "photos", t / "work2", t / "index", t / "jobs")
    finally:
        os.close(fd)
    with pytest.raises(JobError, match="inside the photo folder"):
        run_job(str(t / "photos"), str(t / "photos" / "work"), config=str(t / "recipe1.yaml"))
    out = subprocess.run([sys.executable, "-m", "ppssl", "job", "run", "--images", str(t / "photos"), "--work",
                          str(t / "photos" / "w"), "--config", str(t / "recipe1.yaml")], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 2 and "inside the photo folder" in out.stderr and "Traceback" not in out.stderr


def _wait(pred, timeout=240.0, every=0.25):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_background_job_progress_cancel_kill_and_resume(setup):
    """Started detached as the app starts it: progress appears, a second start is refused, cancel stops it, a
    kill -9 shows as interrupted, and starting it again resumes training from its last epoch to the end."""
    from ui import jobs

    t = setup
    root, work, recipe = t / "jobs", t / "work", t / "recipe40.yaml"
    jobs.start(t / "photos", work, t / "index", root, config=recipe)
    _wait(lambda: ((jobs.status(work, root) or {}).get("progress") or {}).get("phase") == "training")
    with pytest.raises(jobs.JobError, match="already running"):
        jobs.start(t / "photos", t / "other", t / "index", root, config=recipe)
    assert jobs.cancel(work)
    _wait(lambda: jobs.status(work, root)["state"] == "cancelled")
    jobs.start(t / "photos", work, t / "index", root, config=recipe)  # resume
    _wait(lambda: jobs.status(work, root)["state"] == "running"
          and (jobs.status(work, root)["progress"] or {}).get("epoch", 0) >= 2)
    os.killpg(int(jobs.status(work, root)["pid"]), signal.SIGKILL)
    st = _wait(lambda: (s := jobs.status(work, root)) and s["state"] == "interrupted" and s)
    assert st["progress"]["epoch"] >= 2 and (work / "run" / "resume").is_dir()
    jobs.start(t / "photos", work, t / "index", root, config=recipe)
    st = _wait(lambda: (s := jobs.status(work, root)) and s["state"] in ("done", "failed") and s)
    assert st["state"] == "done", (work / "log.txt").read_text()[-3000:]
    assert st["result"]["trained_index"] and (Path(st["result"]["trained_index"]) / "header.json").is_file()
    rows = (work / "run" / "train_log.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[1]) for r in rows]
    assert steps == sorted(set(steps)) and int(rows[-1].split(",")[0]) == 40  # resumed, never restarted


def test_serve_images_indexes_and_adapts_the_folder(tmp_path, monkeypatch):
    from indexer import Index
    from ppssl.serve import folder_index_dir, index_folder

    monkeypatch.setenv("PPSSL_HOME", str(tmp_path / "home"))
    make_gallery(tmp_path / "photos", classes=2, per_class=3)
    out = index_folder(tmp_path / "photos", progress=False)
    assert out == folder_index_dir(tmp_path / "photos") and str(tmp_path / "home") in str(out)
    idx = Index.open(out)
    assert idx.count == 6 and idx.header.adapt_skipped  # 6 photos: too few to adapt by default
    assert idx.header.encoder.spec["backbone"] == "efficientnet_lite0"
    with pytest.raises(Exception, match="inside the photo folder"):
        index_folder(tmp_path / "photos", tmp_path / "photos" / "idx", progress=False)
