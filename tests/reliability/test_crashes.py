"""Crashes: kill -9 during ``index build`` / ``add`` / ``remove`` / ``--rebuild`` at every commit stage, a real
``kill -9`` of ``ppssl index add``, and disk-full / read-only output directories.

After every kill: the index opens, agrees with its manifest (ids, paths and stored vectors; FAISS search
finds every stored vector), its records are exactly a state before or after the interrupted change, and
rerunning the command completes with no duplicates and no losses. Training's kill -9 + ``--resume`` is
tested in ``tests/test_training_trainer.py::test_cli_kill_and_resume_matches_uninterrupted``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.reliability.crashlib import check_consistent, crash_matrix, make_world, reference_vectors
from benchmarks.reliability.gallery import make_clean_gallery, manifest_rows
from reliability.conftest import REPO

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def world(tmp_path_factory, encoder_ckpt):
    return make_world(tmp_path_factory.mktemp("crash"), encoder_ckpt)


@pytest.fixture(scope="module")
def matrix(world, tmp_path_factory) -> dict:
    return crash_matrix(world, tmp_path_factory.mktemp("matrix"))


def test_kill_9_at_every_commit_stage_keeps_the_index_consistent_and_the_rerun_completes(matrix):
    assert matrix["scenarios"] >= 9 and matrix["killed"] == matrix["scenarios"]
    assert not matrix["problems"], "\n".join(matrix["problems"])


def test_rerun_after_a_kill_persists_the_repair(matrix):
    assert not matrix["not_persisted"], "\n".join(matrix["not_persisted"])


def test_no_temporary_files_survive_the_rerun(matrix):
    assert not matrix["leftover_tmp"], "\n".join(matrix["leftover_tmp"])


def test_real_kill_9_of_index_add_then_rerun(world, tmp_path):
    """An external SIGKILL of ``ppssl index add`` after it committed the new rows (tests/slow_commits.py pauses
    after each manifest commit) but before it rewrote index.faiss."""
    from indexer import Index

    d = tmp_path / "idx"
    shutil.copytree(world["base"], d)
    before = manifest_rows(d)
    cmd = [sys.executable, str(REPO / "tests" / "slow_commits.py"), "60", "-m", "ppssl", "index", "add", "--index",
           str(d), "--workers", "0", str(world["gallery"] / "new")]
    proc = subprocess.Popen(cmd, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and manifest_rows(d) == before:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert manifest_rows(d) == before + 6
    idx = Index.open(d)  # FAISS lags the manifest: rebuilt in memory from the stored vectors
    assert idx.repaired and idx.count == before + 6
    assert check_consistent(d, world["ref"]) == set(world["ref"])
    from ppssl.cli import main

    assert main(["index", "add", "--index", str(d), "--workers", "0", str(world["gallery"] / "new")]) == 0
    assert not Index.open(d).repaired and check_consistent(d, world["ref"]) == set(world["ref"])


# --- disk full and read-only output ----------------------------------------------------------------

def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != ".lock"}


def _same_index(before: dict[str, bytes], d: Path, ref) -> None:
    """The index is untouched: its files hold the same records (byte-identical FAISS file and vectors)."""
    after = _snapshot(d)
    for name in ("index.faiss", "header.json"):
        assert after.get(name) == before.get(name), f"{name} changed"
    n = len(before["vectors.f32"])
    assert after["vectors.f32"][:n] == before["vectors.f32"]
    check_consistent(d, ref)


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines()  # progress bars and the lock notice are not errors
             if ln.strip() and not ln.startswith(("waiting for", "embedding")) and "img/s" not in ln]
    assert len(lines) == 1 and lines[0].startswith("ppssl index: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only, where mounting is allowed); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the RLIMIT_FSIZE test still runs")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_add_is_a_clear_error_and_the_index_is_untouched(world, tmpfs, capsys):
    """Fill the disk so that 24, 40 or 56 KiB are left: the add fails opening the manifest (SQLite's 32 KiB
    -shm), writing the WAL, or appending vectors / writing the FAISS file. Each time: one line, status 2,
    and once space is freed the index is exactly what it was."""
    from ppssl.cli import main

    seen = []
    for left_kib in (24, 40, 56):
        d = tmpfs / "idx"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(world["base"], d)
        before = _snapshot(d)
        st = os.statvfs(tmpfs)
        (tmpfs / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - left_kib * 1024))
        rc = main(["index", "add", "--index", str(d), "--workers", "0", str(world["gallery"] / "new")])
        (tmpfs / "filler").unlink()
        if rc == 0:  # enough room after all: then the add must be complete and consistent
            assert check_consistent(d, world["ref"]) == set(world["ref"])
            capsys.readouterr()
            continue
        line = _one_line_error(capsys, rc)
        assert "space" in line or "full" in line, line
        seen.append(line)
        _same_index(before, d, world["ref"])
    assert seen, "the disk never filled up"


def test_file_size_limit_during_add_is_a_clear_error_and_the_index_is_untouched(world, tmp_path, capsys):
    """Portable disk-full: RLIMIT_FSIZE (SIGXFSZ ignored, so writes past it fail with EFBIG) just above the
    current files, then an add of 36 images whose vectors alone outgrow it."""
    import resource

    from indexer import EmbedOptions, Source, build_index
    from indexer.manifest import MANIFEST_FILE, Manifest
    from ppssl.cli import main

    gallery, d = tmp_path / "g", tmp_path / "idx"
    make_clean_gallery(gallery)
    build_index(d, Source(images=gallery), str(world["ckpt"]),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    ref = reference_vectors(gallery, world["ckpt"])
    make_clean_gallery(gallery / "more", classes=4, per_class=9, seed=3)
    Manifest(d / MANIFEST_FILE).close()  # settle the WAL so SQLite needs no growth to open
    before = _snapshot(d)
    limit = max([len(v) for v in before.values()] + [32768]) + 8192  # 32 KiB: SQLite's -shm file
    assert len(before["vectors.f32"]) + 36 * 4 * index_dim(d) > limit
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        rc = main(["index", "add", "--index", str(d), "--workers", "0", str(gallery / "more")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)
    _one_line_error(capsys, rc)
    _same_index(before, d, ref)


def index_dim(d: Path) -> int:
    return json.loads((d / "header.json").read_text())["dim"]


@pytest.fixture
def read_only_copy(tmp_path, world):
    """A copy of the base index seen through a read-only bind mount (root) or a chmod 555 folder (others)."""
    src = tmp_path / "rw"
    shutil.copytree(world["base"], src)
    if os.geteuid() != 0:
        for p in [src, *src.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield src
        for p in [src, *src.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("running as root without mount rights: permission bits cannot make a folder read-only")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount the bind mount read-only here")
        yield ro
    finally:
        if subprocess.run(["umount", str(ro)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_read_only_index_refuses_writes_with_a_clear_error(world, read_only_copy, capsys):
    from ppssl.cli import main

    before = _snapshot(read_only_copy)
    rc = main(["index", "add", "--index", str(read_only_copy), "--workers", "0", str(world["gallery"] / "new")])
    _one_line_error(capsys, rc)
    rc = main(["index", "build", "--out", str(read_only_copy / "sub"), "--images", str(world["gallery"]),
               "--checkpoint", str(world["ckpt"]), "--workers", "0"])
    _one_line_error(capsys, rc)
    assert _snapshot(read_only_copy) == before


def test_read_only_index_can_still_be_searched(world, read_only_copy):
    from indexer import Index

    idx = Index.open(read_only_copy)
    assert idx.count == 12 and check_consistent(read_only_copy, world["ref"])
