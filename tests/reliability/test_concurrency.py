"""Concurrency and load: two writer processes on one index, eight searching threads meanwhile, and 20
browser sessions querying the served app at once (Streamlit's WebSocket protocol on 127.0.0.1)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from benchmarks.reliability.crashlib import DRIVER
from benchmarks.reliability.gallery import make_clean_gallery
from reliability.conftest import REPO

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")



def _search_is_consistent(idx, rng) -> int:
    """Search one snapshot with three of its own vectors, full ranking; compare with numpy. Returns count."""
    recs = idx.records()
    ids = np.asarray([r["id"] for r in recs])
    assert len(set(ids.tolist())) == len(ids) and len({r["path"] for r in recs}) == len(ids)
    vecs = idx.vectors(ids)
    pick = rng.sample(range(len(ids)), 3)
    hits = idx.search(vecs[pick], k=len(ids))
    for q, row in zip(pick, hits):
        got = np.asarray([h.id for h in row])
        assert sorted(got.tolist()) == sorted(ids.tolist()), "hits are not exactly the snapshot's records"
        want = vecs @ vecs[q]
        np.testing.assert_allclose([h.score for h in row], np.sort(want)[::-1], atol=1e-4)
        assert got[0] == ids[q] or abs(want[ids.tolist().index(got[0])] - want[q]) < 1e-5
    return len(ids)


def test_two_writer_processes_serialise_while_eight_threads_search(tmp_path, clean_index):
    from indexer import Index

    gallery = tmp_path / "gallery"
    shutil.copytree(clean_index["gallery"], gallery)
    d = tmp_path / "index"
    shutil.copytree(clean_index["index"], d)
    header = d / "header.json"
    h = json.loads(header.read_text())
    h["root"] = str(gallery)
    h["source"]["images"] = str(gallery)
    header.write_text(json.dumps(h))
    base = {r["path"] for r in Index.open(d).records()}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        make_clean_gallery(gallery / name, classes=2, per_class=3, seed=seed)
    lock_log = tmp_path / "lock.log"
    args = {"index": str(d), "chunk_size": 1, "batch_size": 1}
    specs = [{"id": "writer-A", "op": "add", "point": "none", "group": "w", "lock_log": str(lock_log),
              "args": {**args, "paths": [str(gallery / "a"), str(gallery / "c")]}},
             {"id": "writer-B", "op": "add", "point": "none", "group": "w", "lock_log": str(lock_log),
              "args": {**args, "paths": [str(gallery / "b"), str(gallery / "c")]}}]
    (tmp_path / "spec.json").write_text(json.dumps({"scenarios": specs}))

    stable = Index.open(d)  # opened before the writers: must keep serving its snapshot
    stable_answer = [[(h.id, round(h.score, 5)) for h in hs] for hs in stable.search(stable.vectors()[:4], k=5)]
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []
    searches = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                if seed % 2:
                    seen.append(_search_is_consistent(Index.open(d), rng))
                else:
                    got = [[(h.id, round(h.score, 5)) for h in hs] for hs in stable.search(stable.vectors()[:4], k=5)]
                    assert got == stable_answer, "an open Index changed under a concurrent writer"
                searches[0] += 1
                time.sleep(0.01)
            except Exception as exc:  # noqa: BLE001 - collected and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(8)]
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "slow_commits.py"), "0.2", "-m", DRIVER,
                             str(tmp_path / "spec.json"), str(tmp_path / "res.json")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not lock_log.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the readers start when the first writer holds the lock (imports done)
        for t in threads:
            t.start()
        _, stderr = proc.communicate(timeout=600)
        time.sleep(0.3)  # a last round of searches on the final state
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in threads:
            if t.is_alive() or t.ident:
                t.join(60)
    assert proc.returncode == 0, stderr[-3000:]
    assert [r["exit"] for r in json.loads((tmp_path / "res.json").read_text())] == [0, 0], stderr[-3000:]
    assert not errors, "\n".join(errors[:10])
    # the lock serialised the writers: their lock-holding intervals do not overlap
    events = [line.split() for line in lock_log.read_text().splitlines()]
    spans = {}
    for who, what, ns in events:
        spans.setdefault(who, {})[what] = int(ns)
    (a0, a1), (b0, b1) = ((spans[w]["acquired"], spans[w]["released"]) for w in ("writer-A", "writer-B"))
    assert a1 <= b0 or b1 <= a0, f"writers held the lock at the same time: {spans}"
    # nothing lost or duplicated; the readers saw the index grow through consistent snapshots
    want = base | {p.relative_to(gallery).as_posix() for f in "abc" for p in (gallery / f).rglob("*.*")}
    final = Index.open(d)
    assert not final.repaired and {r["path"] for r in final.records()} == want
    assert _search_is_consistent(final, random.Random(0)) == len(want) == 12 + 18
    assert len(set(seen)) >= 3 and min(seen) >= 12 and max(seen) == 30, sorted(set(seen))
    assert searches[0] >= 40


@pytest.fixture(scope="module")
def served(clean_index):
    """``ppssl serve`` (ui.server.serve) of the clean index on a free loopback port."""
    pytest.importorskip("websockets")
    from benchmarks.reliability.ui_sessions import free_port
    from ui.server import serve, wait_until_ready

    port = free_port()
    proc = serve(clean_index["index"], port=port, block=False, quiet=True)
    try:
        wait_until_ready(port, timeout=180, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_twenty_ui_sessions_query_at_once(served, capsys):
    from benchmarks.reliability.ui_sessions import gallery_query, run_sessions

    warm = gallery_query(served)  # first visitor loads the index and encoder into the server's caches
    assert not warm["exceptions"] and not warm["errors"] and warm["results"] == 10, warm
    t0 = time.perf_counter()
    results = run_sessions(served, 20, ids=warm["ids"])  # each: one script run with the query's widget states
    wall = time.perf_counter() - t0
    bad = [r for r in results if "error" in r or r["exceptions"] or r["errors"] or r["results"] != 10]
    assert not bad, bad
    lat = sorted(r["query_s"] for r in results)
    with capsys.disabled():
        print(f"\n20 concurrent UI sessions: query latency p50 {lat[9]:.2f} s, max {lat[-1]:.2f} s, "
              f"all 20 done in {wall:.1f} s (see benchmarks/reliability_ui_load.py for the recorded numbers)")
