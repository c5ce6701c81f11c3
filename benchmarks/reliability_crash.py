"""Crashes at length: every kill point of every index writer, random-time ``kill -9`` of the real CLI, and
repeated ``kill -9`` of ``ppssl train`` resumed until it finishes.

1. ``crash`` section, part 1: the kill-point matrix of ``benchmarks/reliability/crashlib.py`` at *every*
   occurrence of each point (each vector append, each manifest INSERT and commit, each FAISS and header
   write of a build, an add, a remove and a compacting rebuild), each followed by the consistency checks and
   a rerun.
2. ``crash`` section, part 2: ``--kills`` real ``ppssl index build|add|remove`` processes SIGKILLed at a
   uniformly random instant while they hold the index's writer lock (seen from ``/proc/PID/fd``), then
   checked and rerun (in-process).
3. ``training`` section: ``ppssl train`` (tinycnn, tiny synthetic world, random-init tiny CLIP teacher)
   SIGKILLed at random instants and resumed with ``--resume`` until it completes; its final checkpoint and
   log are compared with an uninterrupted run (CPU: bit-identical weights expected).

Usage::

    python -m benchmarks.reliability_crash [--kills 24] [--train-kills 4] [--skip-matrix] [--skip-train]

Writes the ``crash`` and ``training`` sections of ``benchmarks/results/reliability.{md,json}``. About 10-15 minutes
on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, machine_info, md_table, to_jsonable, write_results
from benchmarks.reliability import PREAMBLE, RESULTS_NAME, SECTIONS


def _holds_lock(pid: int, lock: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(lock) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _timed_run(cmd: list[str], lock: Path, env: dict) -> tuple[float, float]:
    """Run ``cmd`` to completion; returns (seconds until it took the lock, seconds it held it)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_lock = None
    while proc.poll() is None:
        if t_lock is None and _holds_lock(proc.pid, lock):
            t_lock = time.monotonic()
        time.sleep(0.002)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd}: {proc.stderr.read()[-2000:]}")
    end = time.monotonic()
    return (t_lock or end) - t0, end - (t_lock or end)


def random_kills(world: dict, tmp: Path, n: int, rng: random.Random) -> dict:
    from indexer import EmbedOptions, Index, Source, add_to_index, build_index, remove_from_index
    from benchmarks.reliability.crashlib import check_consistent, paths_of

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    g, base = world["gallery"], world["base"]
    all_paths, base_paths = set(world["ref"]), paths_of(base)
    removed = {Index.open(base).record(i)["path"] for i in (1, 2, 3)}

    def cmd(op: str, d: Path) -> list[str]:
        head = [sys.executable, "-m", "ppssl", "index"]
        if op == "build":
            return head + ["build", "--out", str(d), "--images", str(g), "--checkpoint", str(world["ckpt"]),
                           "--chunk-size", "4", "--batch-size", "2", "--workers", "0"]
        if op == "add":
            return head + ["add", "--index", str(d), "--batch-size", "2", "--workers", "0", str(g / "new")]
        return head + ["remove", "--index", str(d), "--id", "1", "2", "3"]

    def fresh(op: str, d: Path) -> None:
        if d.exists():
            shutil.rmtree(d)
        if op != "build":
            shutil.copytree(base, d)

    held = {}
    for op in ("build", "add", "remove"):  # calibrate: how long each op holds the writer lock
        d = tmp / f"calib-{op}"
        fresh(op, d)
        d.mkdir(parents=True, exist_ok=True)
        held[op] = _timed_run(cmd(op, d), d / ".lock", env)[1]
    stats = {"tried": 0, "killed_holding_lock": 0, "finished_first": 0, "consistent_after_kill": 0,
             "rerun_complete": 0, "lost_or_duplicated": 0, "problems": [], "held": held}
    for i in range(n):
        op = ("build", "add", "remove")[i % 3]
        d = tmp / f"kill-{i}-{op}"
        fresh(op, d)
        d.mkdir(parents=True, exist_ok=True)
        delay = rng.uniform(0, held[op])
        proc = subprocess.Popen(cmd(op, d), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and not _holds_lock(proc.pid, d / ".lock"):
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            stats["killed_holding_lock"] += 1
        else:
            stats["finished_first"] += 1
        proc.wait()
        stats["tried"] += 1
        try:
            after = check_consistent(d, world["ref"]) if (d / "header.json").is_file() else set()
            if op == "build":
                assert after <= all_paths
                build_index(d, embed=EmbedOptions(num_workers=0, chunk_size=4, progress=lambda *_: None)) \
                    if (d / "header.json").is_file() else \
                    build_index(d, Source(images=g), str(world["ckpt"]),
                                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
                want = all_paths
            elif op == "add":
                assert base_paths <= after <= all_paths
                add_to_index(d, [g / "new"], embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
                want = all_paths
            else:
                assert after in (base_paths, base_paths - removed)
                remove_from_index(d, ids=[1, 2, 3])
                want = base_paths - removed
            stats["consistent_after_kill"] += 1
            final = check_consistent(d, world["ref"])
            if final != want:
                stats["lost_or_duplicated"] += 1
                raise AssertionError(f"final records differ: missing {sorted(want - final)[:3]}, "
                                     f"extra {sorted(final - want)[:3]}")
            stats["rerun_complete"] += 1
        except Exception as exc:  # noqa: BLE001 - recorded
            stats["problems"].append(f"kill {i} ({op}, {delay:.3f} s into the lock): {type(exc).__name__}: {exc}")
    return stats


def crash_section(kills: int, every: bool, seed: int) -> tuple[dict, str]:
    """The kill-point matrix (``every``) and ``kills`` random-time kills: (counts, markdown body)."""
    import torch

    from benchmarks.reliability.crashlib import crash_matrix, make_world
    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ppssl-rel-crash-"))
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn", input_size=64), tmp / "ckpt")
    world = make_world(tmp / "world", tmp / "ckpt")
    lines, data = [], {"seed": seed}
    if every:
        t0 = time.monotonic()
        m = crash_matrix(world, tmp / "matrix", every=True)
        data["every_kill_point"] = {**m, "seconds": time.monotonic() - t0}
        lines += [f"### Every kill point ({time.monotonic() - t0:.0f} s)\n",
                  "Forked children of one driver process kill themselves at the n-th occurrence of a point "
                  "(`benchmarks/reliability/crash_driver.py`): after a vector append, at a manifest INSERT inside its "
                  "transaction, after a manifest commit / delete / compaction, after the FAISS temporary file is "
                  "written, before header.json is written.\n",
                  md_table(["scenarios", "killed at the point", "index consistent + atomic, rerun complete",
                            "broken guarantees", "repair not persisted by the rerun", "temporary files left"],
                           [(m["scenarios"], m["killed"], m["killed"] - len(m["problems"]), len(m["problems"]),
                             len(m["not_persisted"]), len(m["leftover_tmp"]))]),
                  ""]
        lines += [f"- broken: {p}" for p in m["problems"]]
        lines += [f"- not persisted: {p}" for p in m["not_persisted"]]
        lines += [f"- temporary file left: {p}" for p in m["leftover_tmp"][:5]]
        if len(m["leftover_tmp"]) > 5:
            lines.append(f"- ... {len(m['leftover_tmp']) - 5} more scenarios left a temporary file")
    if kills:
        t0 = time.monotonic()
        s = random_kills(world, tmp / "random", kills, random.Random(seed))
        data["random_kills"] = {**s, "seconds": time.monotonic() - t0}
        lines += [f"\n### Random-time kill -9 of the real CLI ({time.monotonic() - t0:.0f} s, seed {seed})\n",
                  "`ppssl index build|add|remove` in turn, SIGKILL at a uniform random instant within the time "
                  "each holds the writer lock (calibrated: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in s["held"].items()) + "), then checks and a rerun.\n",
                  md_table(["processes", "killed while holding the lock", "finished before the kill",
                            "consistent + atomic after the kill", "rerun complete, nothing lost or duplicated",
                            "problems"],
                           [(s["tried"], s["killed_holding_lock"], s["finished_first"], s["consistent_after_kill"],
                             s["rerun_complete"], len(s["problems"]))]), ""]
        lines += [f"- {p}" for p in s["problems"]]
    shutil.rmtree(tmp, ignore_errors=True)
    return to_jsonable(data), "\n".join(lines) + "\n"


# --- training ---------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def training_section(kills: int, epochs: int, seed: int) -> tuple[dict, str]:
    """``ppssl train`` killed ``kills`` times and resumed, against an uninterrupted run: (outcome, markdown body)."""
    import open_clip
    import torch

    from engine.checkpoint import read_checkpoint_config
    from engine.synth import generate_world
    from training.teacher import save_teacher_dir

    tmp = Path(tempfile.mkdtemp(prefix="ppssl-rel-train-"))
    generate_world(tmp / "world", classes=4, per_class=8, size=32, seed=0, clutter="high", coarse_per_family=3,
                   progress=False)
    torch.manual_seed(0)
    save_teacher_dir(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, tmp / "teacher", image_size=32, info={"note": "bench"})

    def args(out: Path) -> list[str]:
        return ["train", "--dataset", "cub200", "--root", str(tmp / "world"), "--out", str(out),
                "--backbone", "tinycnn", "--weights", "none", "--method", "ppssl", "--teacher", str(tmp / "teacher"),
                "--epochs", str(epochs), "--batch-size", "8", "--input-size", "32", "--queue-size", "16",
                "--lr", "0.05", "--workers", "0", "--quiet", "--threads", "1",
                "--set", "proj_hidden=32", "--set", "proj_dim=16", "--set", "attn_k=8",
                "--set", "eval_batch_size=16", "--set", "log_every=1", "--set", "moco_momentum=0.99"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def rows(log: Path) -> int:
        try:
            return max(0, sum(1 for _ in open(log)) - 1)
        except OSError:
            return 0

    t0 = time.time()
    ref = subprocess.run([sys.executable, "-m", "ppssl", *args(tmp / "ref")], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if ref.returncode != 0:
        raise RuntimeError(ref.stderr[-2000:])
    full_s = time.time() - t0
    per_epoch = rows(tmp / "ref" / "train_log.csv") // epochs
    rng = random.Random(seed)
    out = tmp / "killed"
    runs, killed, problems = 0, [], []
    while True:
        runs += 1
        cmd = [sys.executable, "-m", "ppssl", *args(out)] + (["--resume"] if (out / "resume").exists() else [])
        state = out / "resume" / "state.json"
        done = json.loads(state.read_text())["epoch"] if state.is_file() else 0
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(killed) < kills and done < epochs - 1:
            # die right after a random training step of what is left (plus up to 50 ms: checkpoint writes)
            target = rng.randint(done * per_epoch + 1, epochs * per_epoch - 1)
            while proc.poll() is None and rows(out / "train_log.csv") < target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                epoch = json.loads(state.read_text())["epoch"] if state.is_file() else 0
                killed.append((target, epoch))
                continue
        proc.wait()
        if proc.returncode != 0:
            problems.append(f"run {runs} exited {proc.returncode}: {proc.stderr.read()[-500:]}")
            if runs > kills + 5:
                break
            continue
        break
    fa = read_checkpoint_config(tmp / "ref" / "last")["fingerprint"]
    fb = read_checkpoint_config(out / "last")["fingerprint"] if (out / "last").is_dir() else None
    with open(out / "train_log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    with open(tmp / "ref" / "train_log.csv") as fh:
        ref_steps = [int(r["step"]) for r in csv.DictReader(fh)]
    same = fa == fb
    data = {"epochs": epochs, "steps_per_epoch": per_epoch, "uninterrupted_seconds": full_s, "seed": seed,
            "processes_started": runs, "kills": [{"after_step": d, "epochs_saved": e} for d, e in killed],
            "same_weights": same, "log_steps_continuous": steps == ref_steps, "problems": problems,
            "fingerprints": {"uninterrupted": fa, "killed_and_resumed": fb}}
    lines = [f"`ppssl train` (tinycnn at 32 px, method ppssl, {epochs} epochs, 32-image synthetic world, random-init "
             f"tiny CLIP teacher, CPU, 1 thread, {per_epoch} steps per epoch); an uninterrupted run took "
             f"{full_s:.0f} s. Each killed run died 0-50 ms after a training step drawn uniformly from the steps it "
             f"had left (so kills land in epochs, evaluations and checkpoint writes, not in start-up); the next run "
             f"used `--resume`.\n",
             md_table(["processes started", "SIGKILLs", "kills (after step / epochs saved when killed)",
                       "final weights equal the uninterrupted run", "log steps continuous, none duplicated",
                       "problems"],
                      [(runs, len(killed), ", ".join(f"{d} / {e}" for d, e in killed) or "-",
                        "yes" if same else "**no**",
                        "yes" if steps == ref_steps else f"**no** ({len(steps)} vs {len(ref_steps)} rows)",
                        len(problems))]),
             f"\nFingerprints: uninterrupted `{fa}`, killed and resumed `{fb}`.\n"]
    lines += [f"- {p}" for p in problems]
    shutil.rmtree(tmp, ignore_errors=True)
    return data, "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=24, help="random-time kills of the index CLI (default 24)")
    ap.add_argument("--train-kills", type=int, default=5, help="kills of one training run (default 5)")
    ap.add_argument("--train-epochs", type=int, default=40, help="epochs of that run (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the kill times")
    ap.add_argument("--skip-matrix", action="store_true", help="skip the every-kill-point matrix")
    ap.add_argument("--skip-train", action="store_true", help="skip the training part")
    args = ap.parse_args()
    info = machine_info()
    if not args.skip_matrix or args.kills:
        data, body = crash_section(args.kills, not args.skip_matrix, args.seed)
        path = write_results(RESULTS_NAME, data, body, title="Crashes: index writers killed with SIGKILL", info=info,
                             section="crash", preamble=PREAMBLE, order=SECTIONS)[1]
        print(f"wrote the crash section of {path}")
    if not args.skip_train:
        data, body = training_section(args.train_kills, args.train_epochs, args.seed)
        path = write_results(RESULTS_NAME, data, body, title="Training killed with SIGKILL and resumed", info=info,
                             section="training", preamble=PREAMBLE, order=SECTIONS)[1]
        print(f"wrote the training section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
