"""Training jobs: the README recipe on an index's photo folder, then the trained index, then the verdict.

``ppssl job run`` is what the app's Build page starts in the background (``ui.jobs``), and what a terminal can
run by hand. One job is one work directory::

    WORK/job.json        the spec, the state (running / done / failed / cancelled), the phase, the result
    WORK/log.txt         the job's output (the app starts it with stdout/stderr there)
    WORK/run/            the training run (``ppssl train`` layout: progress.json, report.json, resume/, last/)
    WORK/index/          the gallery indexed with the trained encoder
    WORK/build_progress.json

Every step resumes: rerunning the same job continues training from its last finished epoch (``--resume``) and
the index build from its last committed chunk. The job holds an exclusive lock (``--lock``; the app uses one
per served index) for its whole life, so a second job is refused while one runs, and a dead job frees it.

The verdict is the training run's own (``report.json``: the trained encoder against the start + retrieval
head on the held-out part): when training won, ``promote`` (the app's pointer to the index it serves) is
written to name the trained index; otherwise the adapted index stays, and the job says why.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

from engine.errors import PPSSLError

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune_lite0.yaml"


class JobError(PPSSLError, ValueError):
    """A job that cannot run as asked (a work folder inside the photo folder)."""


class JobBusy(PPSSLError, RuntimeError):
    """Another job holds the lock."""


class Cancelled(BaseException):
    """SIGTERM: the job stops at once (training resumes from its last epoch if started again)."""


def read_job(work: str | Path) -> dict | None:
    """``WORK/job.json`` (None when absent or unreadable)."""
    try:
        return json.loads((Path(work) / "job.json").read_text())
    except (OSError, ValueError):
        return None


def _write_job(work: Path, job: dict) -> None:
    from engine.atomic import atomic_write_json

    job["updated"] = time.time()
    atomic_write_json(work / "job.json", job)


def acquire(lock_path: str | Path):
    """Take the job lock without waiting (an open file descriptor; closed when the process ends)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = {}
        try:
            holder = json.loads((lock_path.parent / "current.json").read_text())
        except (OSError, ValueError):
            pass
        raise JobBusy(f"a training job is running ({holder.get('work', 'unknown work directory')})") from None
    return fd


def lock_is_held(lock_path: str | Path) -> bool:
    """True while some process holds the job lock (a running job)."""
    try:
        fd = acquire(lock_path)
    except JobBusy:
        return True
    os.close(fd)
    return False


def run_job(images: str, work: str, *, baseline: str | None = None, lock: str | None = None,
            promote: str | None = None, overrides: list[str] | None = None, config: str | None = None,
            quiet: bool = True) -> dict:
    """Train the recipe on ``images``, index the folder with the trained encoder, record the verdict.

    Args:
        images: the photo folder (sub-folders as classes give the held-out score that decides).
        work: the job's work directory (created; an earlier run of the same job is resumed).
        baseline: the index the job competes with (the adapted index of the folder), shown before/after.
        lock: the lock file that makes this the only job (held until this function returns).
        promote: a JSON file written with ``{"from": baseline, "to": trained index}`` when training won.
        overrides: ``KEY=VALUE`` recipe overrides (``ppssl train --set``).
        config: the recipe file (default configs/finetune_lite0.yaml).
    """
    from engine.atomic import atomic_write_json

    work_dir = Path(work).expanduser().resolve()
    folder = Path(images).expanduser().resolve()
    if work_dir == folder or folder in work_dir.parents:
        raise JobError(f"the work folder {work_dir} lies inside the photo folder {folder}: its files would be indexed "
                       "as photos; choose a folder outside it")
    fd = acquire(lock) if lock else None
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        if lock:
            atomic_write_json(Path(lock).parent / "current.json", {"work": str(work_dir), "pid": os.getpid()})
        spec = {"images": str(Path(images).expanduser().resolve()), "baseline": baseline, "overrides": overrides or [],
                "config": str(config or RECIPE), "promote": promote, "lock": lock}
        job = {"spec": spec, "state": "running", "phase": "starting", "pid": os.getpid(), "started": time.time(),
               "result": None, "error": None}
        _write_job(work_dir, job)
        previous = signal.signal(signal.SIGTERM, _on_term)
        try:
            job["result"] = _steps(spec, work_dir, job, quiet)
            job["state"], job["phase"] = "done", "done"
        except Cancelled:
            job["state"], job["phase"] = "cancelled", "cancelled"
        except Exception as exc:  # noqa: BLE001 - recorded for the app; the command line re-raises
            job["state"], job["error"] = "failed", f"{type(exc).__name__}: {exc}"
            _write_job(work_dir, job)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        _write_job(work_dir, job)
        return job
    finally:
        if fd is not None:
            os.close(fd)


def _on_term(signum, frame):
    raise Cancelled()


def _steps(spec: dict, work: Path, job: dict, quiet: bool) -> dict:
    from engine.atomic import atomic_write_json
    from training.cli import images_settings
    from training.config import build_config, parse_overrides
    from training.trainer import Trainer

    run = work / "run"
    job["phase"] = "training"
    _write_job(work, job)
    report_path = run / "report.json"
    if not report_path.is_file():
        overrides = {**images_settings(spec["images"]), **parse_overrides(spec["overrides"])}
        flags = {"dataset": "images", "root": spec["images"], "out": str(run), "progress": not quiet}
        cfg = build_config(spec["config"], overrides, flags)
        trainer = Trainer(cfg, resume=(run / "resume" / "state.json").is_file())
        try:
            trainer.fit()
        finally:
            from training import ddp

            ddp.cleanup()
    report = json.loads(report_path.read_text())

    job["phase"] = "building the trained index"
    _write_job(work, job)
    from indexer import EmbedOptions, Source, build_index

    progress_path = work / "build_progress.json"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.time() - last[0] > 1.0 or done == total:
            last[0] = time.time()
            atomic_write_json(progress_path, {"done": done, "total": total, "updated": last[0]})

    build_index(str(work / "index"), Source(images=spec["images"]), str(run / "last"),
                embed=EmbedOptions(num_workers=2, progress=progress))

    job["phase"] = "comparing"
    _write_job(work, job)
    verdict = report.get("verdict")
    won = bool(verdict and verdict.get("trained_won"))
    result = {"trained_index": str(work / "index"), "baseline_index": spec["baseline"], "verdict": verdict,
              "trained_won": won, "baselines": report.get("baselines"),
              "trained": (report.get("last") or {}).get("metrics", {}).get(report.get("pooling")),
              "kept": str(work / "index") if won else spec["baseline"]}
    if verdict is None:
        result["note"] = ("no held-out score (the folder has no class sub-folders): the adapted index is kept; "
                          "open the trained index from the Build page to try it")
    if spec.get("promote") and spec.get("baseline"):
        path = Path(spec["promote"])
        if won:
            atomic_write_json(path, {"from": spec["baseline"], "to": str(work / "index"), "work": str(work)})
        elif path.is_file():  # an earlier job's win for the same baseline is superseded by this verdict
            try:
                if json.loads(path.read_text()).get("from") == spec["baseline"]:
                    path.unlink()
            except (OSError, ValueError):
                pass
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job", help="background training jobs (what the app's Build page starts)",
                       description="Train the real-photo recipe on a folder, index it with the trained encoder and "
                                   "record whether training beat the adapted index (see ppssl/jobs.py).")
    jsub = p.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    r = jsub.add_parser("run", help="run (or resume) a job in the foreground",
                        description="Run or resume one job; its state is kept in WORK/job.json.")
    r.add_argument("--images", required=True, help="the photo folder (class sub-folders give the held-out score)")
    r.add_argument("--work", required=True, help="the job's work directory (resumed when it exists)")
    r.add_argument("--baseline", default=None, help="the index the trained one competes with (the adapted index)")
    r.add_argument("--lock", default=None, help="lock file: refuse to start while another job holds it")
    r.add_argument("--promote", default=None, help="JSON file naming the trained index when training won")
    r.add_argument("--config", default=None, help="recipe YAML (default configs/finetune_lite0.yaml)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override (repeatable), as for ppssl train")
    r.add_argument("--progress", action="store_true", help="show progress bars")
    r.set_defaults(func=_run)
    s = jsub.add_parser("status", help="print a job's state (JSON)")
    s.add_argument("--work", required=True, help="the job's work directory")
    s.set_defaults(func=_status)


def _run(args: argparse.Namespace) -> int:
    from engine.errors import PPSSLError

    try:
        job = run_job(args.images, args.work, baseline=args.baseline, lock=args.lock, promote=args.promote,
                      overrides=args.overrides, config=args.config, quiet=not args.progress)
    except JobBusy as exc:
        print(f"ppssl job: {exc}", file=sys.stderr)
        return 2
    except PPSSLError:
        raise
    print(json.dumps({"state": job["state"], "result": job["result"]}, indent=2))
    return 0 if job["state"] == "done" else 1


def _status(args: argparse.Namespace) -> int:
    job = read_job(args.work)
    if job is None:
        print(f"ppssl job: no job in {args.work}", file=sys.stderr)
        return 2
    progress = None
    try:
        progress = json.loads((Path(args.work) / "run" / "progress.json").read_text())
    except (OSError, ValueError):
        pass
    print(json.dumps({**job, "training_progress": progress}, indent=2))
    return 0
