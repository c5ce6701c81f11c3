"""Crash injection for index writers: each scenario runs in a forked child that SIGKILLs itself at a chosen
point (the same signal as ``kill -9``, at an exact instant instead of a random one).

Usage (from the repository root)::

    python -m benchmarks.reliability.crash_driver SPEC.json RESULT.json

SPEC: ``{"scenarios": [{"id", "op", "point", "nth", "args"}]}`` where ``op`` is ``build`` / ``add`` /
``remove`` / ``rebuild`` (``args`` are passed to the indexer function) and ``point`` names where to die:

    append     after the nth ``VectorAppender.append`` (vectors written and fsynced, not committed)
    sql        at the nth ``INSERT INTO records`` statement (inside the manifest transaction, before COMMIT)
    commit     after the nth ``Manifest.commit_rows`` (manifest committed, FAISS file not yet rewritten)
    delete     after the nth ``Manifest.delete_ids``
    vectors    after the nth ``Manifest.set_vectors`` (a rebuild compacted the vector file)
    faiss_tmp  after the nth ``faiss.write_index`` (temporary file written, not yet renamed over index.faiss)
    header     before the nth ``write_header`` (index.faiss replaced, header.json still the old one)
    none       no kill (the op must complete)

One parent imports torch and the indexer once and forks a child per scenario (the parent computes nothing,
so the children inherit no OpenMP state). Consecutive scenarios with the same ``"group"`` run at the same
time (concurrent writers); ``"lock_log": FILE`` records when each child holds the index writer lock.
RESULT: per scenario ``{"id", "killed": bool, "exit": int|None, "seconds"}``; ``killed`` False with exit 3
means the point was never reached.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

NOT_REACHED = 3


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(obj, name: str, nth: int) -> None:
    original = getattr(obj, name)
    calls = [0]

    def wrapper(*a, **kw):
        result = original(*a, **kw)
        calls[0] += 1
        if calls[0] == nth:
            _die()
        return result

    setattr(obj, name, wrapper)


def _before(obj, name: str, nth: int) -> None:
    original = getattr(obj, name)
    calls = [0]

    def wrapper(*a, **kw):
        calls[0] += 1
        if calls[0] == nth:
            _die()
        return original(*a, **kw)

    setattr(obj, name, wrapper)


def install(point: str, nth: int) -> None:
    """Arm the kill at ``point`` (in the child only)."""
    import faiss

    from indexer import build, header, manifest, vectors, writer

    if point == "append":
        _after(vectors.VectorAppender, "append", nth)
    elif point == "commit":
        _after(manifest.Manifest, "commit_rows", nth)
    elif point == "delete":
        _after(manifest.Manifest, "delete_ids", nth)
    elif point == "vectors":
        _after(manifest.Manifest, "set_vectors", nth)
    elif point == "faiss_tmp":
        _after(faiss, "write_index", nth)
    elif point == "header":
        for module in (writer, build, header):  # each calls it through its own import
            _before(module, "write_header", nth)
    elif point == "sql":
        seen = [0]
        init = manifest.Manifest.__init__

        def traced_init(self, *a, **kw):
            init(self, *a, **kw)

            def trace(stmt: str) -> None:
                if stmt.lstrip().upper().startswith("INSERT INTO RECORDS"):
                    seen[0] += 1
                    if seen[0] == nth:
                        _die()

            self.db.set_trace_callback(trace)

        manifest.Manifest.__init__ = traced_init
    elif point != "none":
        raise ValueError(f"unknown crash point {point!r}")


def run_op(op: str, args: dict):
    from dataclasses import fields

    from indexer import EmbedOptions, Source, add_to_index, build_index, remove_from_index

    def take(cls) -> dict:  # the scenario's arguments that are fields of ``cls``
        return {f.name: args.pop(f.name) for f in fields(cls) if f.name in args}

    embed = EmbedOptions(**{"num_workers": 0, "progress": lambda *_: None, **take(EmbedOptions)})
    if op == "build":
        source = take(Source)
        return build_index(args.pop("out"), Source(**source) if source else None, args.pop("encoder", None),
                           embed=embed, **args)
    if op == "rebuild":
        return build_index(args.pop("out"), embed=embed, rebuild=True, **args)
    if op == "add":
        return add_to_index(args.pop("index"), args.pop("paths"), embed=embed, **args)
    if op == "remove":
        return remove_from_index(args.pop("index"), **args)
    raise ValueError(f"unknown op {op!r}")


def trace_lock(log: str, name: str) -> None:
    """Append ``<name> acquired|released <monotonic ns>`` to ``log`` around the index writer lock."""
    from indexer import store

    init, release = store.WriterLock.__init__, store.WriterLock.release

    def note(what: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"{name} {what} {time.monotonic_ns()}\n")

    def traced_init(self, *a, **kw):
        init(self, *a, **kw)
        note("acquired")

    def traced_release(self):
        if self.fd is not None:
            note("released")
        release(self)

    store.WriterLock.__init__, store.WriterLock.release = traced_init, traced_release


def start_scenario(sc: dict) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            if sc.get("lock_log"):
                trace_lock(sc["lock_log"], sc["id"])
            install(sc["point"], int(sc.get("nth", 1)))
            run_op(sc["op"], dict(sc["args"]))
            code = 0 if sc["point"] == "none" else NOT_REACHED
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            print(f"crash_driver: scenario {sc['id']}: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    return pid


def finish_scenario(sc: dict, pid: int, t0: float) -> dict:
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"id": sc["id"], "killed": killed, "exit": None if killed else os.waitstatus_to_exitcode(status),
            "seconds": round(time.monotonic() - t0, 3)}


def run_all(scenarios: list[dict]) -> list[dict]:
    """Scenarios run one after the other, except that consecutive ones with the same ``group`` run at once."""
    results, i = [], 0
    while i < len(scenarios):
        j = i + 1
        while j < len(scenarios) and scenarios[i].get("group") and scenarios[j].get("group") == scenarios[i]["group"]:
            j += 1
        t0 = time.monotonic()
        pids = [start_scenario(sc) for sc in scenarios[i:j]]
        results += [finish_scenario(sc, pid, t0) for sc, pid in zip(scenarios[i:j], pids)]
        i = j
    return results


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    # Import everything the writers use before forking, so each child starts warm (torchvision alone
    # takes seconds); nothing is computed here.
    import importlib

    for module in ("faiss", "torch", "torch.utils.data", "torchvision.transforms.v2", "tqdm.auto",
                   "engine.checkpoint", "engine.embed", "engine.encoder", "indexer.build", "indexer.writer",
                   "indexer.index", "indexer.sources"):
        importlib.import_module(module)

    results = run_all(spec["scenarios"])
    Path(argv[1]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
