"""The app's background training job: start ``ppssl job run`` detached, watch its files, cancel, resume.

The job is a separate process (it survives page reloads and app restarts) that writes everything it does to
its work directory (``ppssl/jobs.py``); this module only starts it and reads those files. One job at a time per
served index: the job holds ``<jobs root>/.lock`` while it lives, so a second start is refused with what runs.
A job whose process died (a restart, a kill) shows as interrupted and is resumed by starting it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.errors import PPSSLError


class JobError(PPSSLError, RuntimeError):
    """A job cannot be started (another one runs, a bad folder) or controlled."""


def jobs_root(index_dir: Path) -> Path:
    """Where the jobs of the app serving ``index_dir`` keep their lock, last job and promotion."""
    base = Path(os.environ.get("PPSSL_HOME") or Path.home() / ".cache" / "ppssl")
    return base / "jobs" / hashlib.sha256(str(Path(index_dir).resolve()).encode()).hexdigest()[:12]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lock_held(root: Path) -> bool:
    """True while a job process holds the lock."""
    path = root / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def last_work(root: Path) -> Path | None:
    """The work directory of the last job started here (running or not)."""
    cur = _read(root / "current.json")
    return Path(cur["work"]) if cur and cur.get("work") else None


def status(work: Path, root: Path | None = None) -> dict | None:
    """The job's record with what it is doing now: ``state`` (running / done / failed / cancelled /
    interrupted / starting), ``phase``, training ``progress`` (epoch, step, img/s, ETA) and ``build`` progress."""
    job = _read(work / "job.json")
    if job is None:
        return None
    if job.get("state") == "running" and root is not None and not lock_held(root):
        job["state"] = "interrupted"  # its process is gone: start it again to resume
    job["progress"] = _read(work / "run" / "progress.json")
    job["build"] = _read(work / "build_progress.json")
    return job


def start(images: Path, work: Path, baseline: Path, root: Path, overrides: list[str] | tuple = (),
          config: Path | None = None) -> None:
    """Start (or resume) the job in the background; refused while another job of this app runs. ``config``: a
    recipe other than the README's (``ppssl job run --config``)."""
    if Path(work).resolve() == Path(images).resolve() or Path(images).resolve() in Path(work).resolve().parents:
        raise JobError(f"the work folder {work} lies inside the photo folder {images}: its files would be indexed as "
                       "photos; choose a folder outside it")
    if lock_held(root):
        running = last_work(root)
        raise JobError(f"a training job is already running ({running}); wait for it or cancel it first")
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ppssl", "job", "run", "--images", str(images), "--work", str(work),
           "--baseline", str(baseline), "--lock", str(root / ".lock"), "--promote", str(root / "promoted.json")]
    for o in overrides:
        cmd += ["--set", o]
    if config is not None:
        cmd += ["--config", str(config)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(work / "log.txt", "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)  # its own process group: a page reload or app stop leaves it be
    for _ in range(50):  # until the job holds the lock (or has failed to start), so a second click sees it
        if lock_held(root) or _read(work / "job.json"):
            return
        time.sleep(0.1)


def cancel(work: Path) -> bool:
    """Stop the job's process group (SIGTERM: it records ``cancelled``; training resumes from its last epoch
    when started again). False when it was not running."""
    job = _read(work / "job.json")
    pid = (job or {}).get("pid")
    if not pid or (job or {}).get("state") != "running":
        return False
    try:
        os.killpg(os.getpgid(int(pid)), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def promoted(root: Path, served: Path | None) -> Path | None:
    """The trained index that replaced ``served`` after a job in which training won (None otherwise)."""
    rec = _read(root / "promoted.json")
    if not rec or served is None or Path(rec.get("from", "")).resolve() != Path(served).resolve():
        return None
    to = Path(rec.get("to", ""))
    return to if (to / "header.json").is_file() else None


def partner(root: Path, index_dir: Path) -> Path | None:
    """The other side of the last finished job's before/after for ``index_dir`` (trained <-> baseline)."""
    work = last_work(root)
    job = _read(work / "job.json") if work else None
    res = (job or {}).get("result") or {}
    trained, base = res.get("trained_index"), res.get("baseline_index")
    if not trained or not base:
        return None
    here = Path(index_dir).resolve()
    if Path(trained).resolve() == here:
        return Path(base)
    if Path(base).resolve() == here:
        return Path(trained)
    return None
