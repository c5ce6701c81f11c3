"""Shared by ``tests/reliability/test_crashes.py`` / ``test_concurrency.py`` and ``benchmarks.reliability_crash``:
a small indexed gallery, the kill scenarios of every index writer, and the checks run after each kill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import REPO
from benchmarks.reliability.gallery import make_clean_gallery, manifest_rows

DRIVER = "benchmarks.reliability.crash_driver"  # run as ``python -m DRIVER`` from the repository root


def make_world(root: Path, ckpt: Path) -> dict:
    """root/gallery (12 images) indexed as root/base; root/gallery/new (6 more) not yet in it; reference
    vectors of all 18 files computed straight from the encoder."""
    from indexer import EmbedOptions, Source, build_index

    gallery = root / "gallery"
    make_clean_gallery(gallery)
    build_index(root / "base", Source(images=gallery), str(ckpt),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    make_clean_gallery(gallery / "new", classes=2, per_class=3, seed=9)
    ref = reference_vectors(gallery, ckpt)
    return {"root": root, "gallery": gallery, "base": root / "base", "ckpt": ckpt, "ref": ref}


def reference_vectors(gallery: Path, ckpt: Path) -> dict[str, np.ndarray]:
    """path relative to ``gallery`` -> the encoder's feature of that file, computed without the indexer."""
    import torch

    from engine.encoder import create_encoder
    from engine.imageio import open_image

    enc = create_encoder(str(ckpt)).eval()
    tf = enc.transform()
    with torch.inference_mode():
        return {p.relative_to(gallery).as_posix(): enc(tf(open_image(p))[None])[0].numpy()
                for p in sorted(gallery.rglob("*")) if p.is_file()}


def paths_of(index_dir: Path) -> set[str]:
    from indexer import Index

    return {r["path"] for r in Index.open(index_dir).records()}


def check_consistent(index_dir: Path, ref: dict[str, np.ndarray]) -> set[str]:
    """The index opens, matches its manifest, stores the right vectors and FAISS finds each of them."""
    from indexer import Index

    idx = Index.open(index_dir)
    recs = idx.records()
    ids = [r["id"] for r in recs]
    paths = [r["path"] for r in recs]
    assert len(set(ids)) == len(ids) == idx.count == manifest_rows(index_dir), "duplicate ids or count mismatch"
    assert len(set(paths)) == len(paths), "duplicate paths"
    vecs = idx.vectors(ids)
    if ids:
        np.testing.assert_allclose(vecs, np.stack([ref[p] for p in paths]), atol=1e-5)
        hits = idx.search(vecs, k=1)
        assert [h[0].id for h in hits] == ids, "FAISS does not hold exactly the manifest's vectors"
    return set(paths)


def scenarios(world, work: Path, every: bool = False) -> list[dict]:
    """Kill points for every writer; each scenario gets its own copy of the base index.

    ``every``: kill at every occurrence of each point (each chunk of a build, ...), not one per point.
    """
    g = world["gallery"]
    out = []

    def sc(name, op, point, nth, args, base=True):
        d = work / name
        if base:
            shutil.copytree(world["base"], d)
        key = "out" if op in ("build", "rebuild") else "index"
        out.append({"id": name, "op": op, "point": point, "nth": nth, "args": {key: str(d), **args}})

    build = {"encoder": str(world["ckpt"]), "images": str(g), "chunk_size": 4, "batch_size": 2}
    add = {"paths": [str(g / "new")], "chunk_size": 2, "batch_size": 2}
    if every:
        # 18 images in chunks of 4: 5 appends and commits, 18 INSERTs; FAISS + header at the doubling
        # checkpoints and at the end. 6 new images in chunks of 2: 3 appends, commits, 6 INSERTs.
        points = {"build": {"append": 5, "sql": 18, "commit": 5, "faiss_tmp": 3, "header": 4},
                  "add": {"append": 3, "sql": 6, "commit": 3, "faiss_tmp": 1, "header": 1}}
    else:
        points = {"build": {"sql": [6], "commit": [2], "faiss_tmp": [1]},
                  "add": {"append": [2], "commit": [1], "header": [1]}}
    for op, args in (("build", build), ("add", add)):
        for point, nths in points[op].items():
            for nth in (range(1, nths + 1) if every else nths):
                sc(f"{op}-{point}" + (f"-{nth}" if every else ""), op, point, nth, args, base=op != "build")
    for point in ("delete", "faiss_tmp", "header") if every else ("delete", "header"):
        sc(f"remove-{point}", "remove", point, 1, {"ids": [1, 2, 3]})
    for point in ("vectors", "faiss_tmp") if every else ("vectors",):  # a rebuild after a removal compacts first
        sc(f"rebuild-{point}", "rebuild", point, 1, {"index_type": "hnsw"})
    return out


def run_driver(specs: list[dict], tmp: Path, env: dict | None = None) -> dict[str, dict]:
    """Run ``specs`` in one crash_driver process; results by scenario id."""
    spec_file, result_file = tmp / "spec.json", tmp / "result.json"
    spec_file.write_text(json.dumps({"scenarios": specs}))
    proc = subprocess.run([sys.executable, "-m", DRIVER, str(spec_file), str(result_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"crash driver failed: {proc.stderr[-3000:]}")
    return {r["id"]: r for r in json.loads(result_file.read_text())}


def crash_matrix(world: dict, tmp: Path, every: bool = False) -> dict:
    """Run every kill scenario (one driver process), check each killed index, rerun the command.

    Returns ``{"problems": [...], "not_persisted": [...], "leftover_tmp": [...], "scenarios": n, "killed": n}``:
    problems = broken guarantees (unopenable, inconsistent, non-atomic, rerun failed or lost/duplicated
    items); not_persisted = indexes still repaired in memory on every open after the rerun (FAISS file or
    header.json left stale); leftover_tmp = temporary files of killed writes still there after the rerun.
    """
    from indexer import EmbedOptions, Index, Source, add_to_index, build_index, remove_from_index

    import faiss

    quiet = EmbedOptions(num_workers=0, progress=lambda *_: None)
    quiet4 = EmbedOptions(num_workers=0, chunk_size=4, progress=lambda *_: None)

    work = tmp / "w"
    work.mkdir(parents=True)
    specs = scenarios(world, work, every)
    for s in specs:
        if s["op"] == "rebuild":
            remove_from_index(s["args"]["out"], ids=[1, 2, 3])  # leaves dead rows to compact
    results = run_driver(specs, tmp)
    base_paths = paths_of(world["base"])
    all_paths = set(world["ref"])
    removed = {Index.open(world["base"]).record(i)["path"] for i in (1, 2, 3)}
    out = {"problems": [], "not_persisted": [], "leftover_tmp": [], "not_reached": [], "scenarios": len(specs),
           "killed": sum(r["killed"] for r in results.values())}
    for s in specs:
        name, d, r = s["id"], Path(s["args"].get("out") or s["args"]["index"]), results[s["id"]]
        if not r["killed"]:
            if every and r["exit"] == 3:  # this writer passes that point fewer times: nothing to test
                out["not_reached"].append(name)
            else:
                out["problems"].append(f"{name}: the kill point was not reached (exit {r['exit']})")
            continue
        try:
            after_kill = check_consistent(d, world["ref"]) if (d / "header.json").is_file() else set()
            # atomic: a state between before and after the change, never anything else
            if s["op"] == "build":
                assert after_kill <= all_paths
                if (d / "header.json").is_file():  # resume with the recorded encoder and source
                    build_index(d, embed=quiet4)
                else:  # killed before the header existed: the same command again
                    build_index(d, Source(images=world["gallery"]), str(world["ckpt"]), embed=quiet4)
                want = all_paths
            elif s["op"] == "add":
                assert base_paths <= after_kill <= all_paths
                rep = add_to_index(d, [world["gallery"] / "new"], embed=quiet)
                assert rep.already_present == len(after_kill - base_paths)
                want = all_paths
            elif s["op"] == "remove":
                assert after_kill in (base_paths, base_paths - removed)
                remove_from_index(d, ids=[1, 2, 3])
                want = base_paths - removed
            else:  # rebuild
                assert after_kill == base_paths - removed
                build_index(d, embed=quiet, rebuild=True, index_type="hnsw")
                want = base_paths - removed
            assert check_consistent(d, world["ref"]) == want, "records differ from the uninterrupted result"
        except Exception as exc:  # noqa: BLE001 - an assertion or an error of the rerun: both are findings
            out["problems"].append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        stale = []
        if Index.open(d).repaired or faiss.read_index(str(d / "index.faiss")).ntotal != len(want):
            stale.append("index.faiss")
        if json.loads((d / "header.json").read_text())["counts"]["records"] != len(want):
            stale.append("header.json counts")
        if stale:
            out["not_persisted"].append(f"{name}: {', '.join(stale)} still stale after the rerun")
        tmp_left = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
        if tmp_left:
            out["leftover_tmp"].append(f"{name}: {tmp_left}")
    return out


