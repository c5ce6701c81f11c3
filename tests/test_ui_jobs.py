"""The app's adapted indexes and training job: the Build page starts / shows a job, the Evaluate page shows
adapted vs plain and a job's before / after, and a job in which training won switches the served index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_ui_apptest import APP, build_tiny_index, make_gallery


@pytest.fixture
def served(tmp_path, monkeypatch):
    t = build_tiny_index(tmp_path)
    monkeypatch.setenv("PPSSL_UI_INDEX", str(t["index"]))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tmp_path))
    return t


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    return at


def _finished_job(t, won: bool) -> tuple[Path, Path]:
    """A second index standing for the trained one, and the job record the job runner would have written."""
    from indexer import EmbedOptions, Source, build_index
    from ui import jobs

    trained = t["base"] / "work" / "trained_index"
    build_index(trained, Source(images=t["gallery"]), str(t["ckpt"]),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    root = jobs.jobs_root(t["index"])
    root.mkdir(parents=True, exist_ok=True)
    work = t["base"] / "work"
    verdict = {"trained_won": won, "against": "start+head", "delta_mAP": 0.05 if won else -0.02, "delta_rank-1": 0.0,
               "text": "training added +5.0 mAP" if won else "training did not pay: -2.0 mAP"}
    job = {"spec": {"images": str(t["gallery"]), "baseline": str(t["index"])}, "state": "done", "phase": "done",
           "pid": 0, "result": {"trained_index": str(trained), "baseline_index": str(t["index"]), "verdict": verdict,
                                "trained_won": won, "kept": str(trained if won else t["index"]),
                                "baselines": {"start": {"gap": {"rank-1": 0.5, "mAP": 0.4}},
                                              "start+head": {"gap": {"rank-1": 0.6, "mAP": 0.5}}},
                                "trained": {"rank-1": 0.7, "mAP": 0.55}}}
    (work / "job.json").write_text(json.dumps(job))
    (root / "current.json").write_text(json.dumps({"work": str(work)}))
    if won:
        (root / "promoted.json").write_text(json.dumps({"from": str(t["index"]), "to": str(trained)}))
    return trained, work


def test_build_page_starts_a_training_job_on_the_index_folder(served, monkeypatch):
    from ui import jobs

    started = []
    monkeypatch.setattr(jobs, "start", lambda *a, **k: started.append(a))
    at = _app()
    at.switch_page("views/build.py").run()
    at.radio(key="build_mode").set_value("Improve it by training").run()
    assert not at.exception, at.exception
    at.text_input(key="job_work").set_value(str(served["gallery"] / "inside"))
    at.button(key="job_start").click().run()
    assert started and started[0][0] == served["gallery"].resolve()
    assert started[0][1] == (served["gallery"] / "inside").resolve()
    monkeypatch.undo()  # the real start refuses a work folder inside the photos
    with pytest.raises(jobs.JobError, match="inside the photo folder"):
        jobs.start(served["gallery"], served["gallery"] / "inside", served["index"], jobs.jobs_root(served["index"]))


@pytest.mark.parametrize("won", [True, False])
def test_a_finished_job_shows_its_verdict_and_before_after(served, won):
    trained, _ = _finished_job(served, won)
    at = _app()
    at.switch_page("views/build.py").run()
    at.radio(key="build_mode").set_value("Improve it by training").run()
    assert not at.exception, at.exception
    shown = [m.value for m in (at.success if won else at.warning)]
    assert any(("training added" if won else "did not pay") in v for v in shown)
    from ui import state  # noqa: F401

    # the app serves the trained index only when training won
    at.switch_page("views/search.py").run()
    side = " ".join(c.value for c in at.sidebar.caption)
    assert (trained.name in side) == won
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, at.exception
    assert any("before / after the training job" in c.value for c in at.caption)


def test_evaluate_page_shows_an_adapted_index_beside_its_plain_vectors(tmp_path, monkeypatch):
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    make_gallery(tmp_path / "gallery", classes=4, per_class=6)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    build_index(tmp_path / "index", Source(images=tmp_path / "gallery"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None), adapt=True)
    monkeypatch.setenv("PPSSL_UI_INDEX", str(tmp_path / "index"))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tmp_path))
    at = _app()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, at.exception
    assert any("before the adapted index's head" in c.value for c in at.caption)
    from indexer.evaluate import compare_plain

    res = compare_plain(tmp_path / "index")
    table = at.dataframe[0].value
    assert list(table.columns[1:3]) == ["adapted (%)", "plain (%)"]
    assert table.iloc[3, 1] == pytest.approx(round(100 * res["index"]["summary"]["mAP"], 1))
    assert table.iloc[3, 2] == pytest.approx(round(100 * res["other"]["summary"]["mAP"], 1))
