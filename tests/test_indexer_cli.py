"""Indexer CLI and evaluation: build/search/info/eval/remove through ``ppssl``, kill -9 mid-build and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.encoder import create_encoder  # noqa: E402
from indexer.build import build_index  # noqa: E402
from indexer.index import Index  # noqa: E402
from indexer.options import EmbedOptions, Source  # noqa: E402
from ppssl.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from benchmarks.reliability.gallery import manifest_rows  # noqa: E402
from ranking import assert_same_hits, assert_within_bounds, metric_bounds  # noqa: E402
from test_indexer import make_gallery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    make_gallery(base / "gallery", classes=4, per_class=5)
    make_gallery(base / "queries", classes=4, per_class=2, seed=7)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), base / "ckpt")
    return base


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_build_search_info_remove_via_cli(env, tmp_path, capsys):
    out = tmp_path / "idx"
    assert run_cli("index", "build", "--checkpoint", env / "ckpt", "--images", env / "gallery", "--out", out,
                   "--workers", "0") == 0
    assert "20 items; added 20" in capsys.readouterr().out
    q = env / "gallery" / "class3" / "img2.jpg"
    assert run_cli("search", "--index", out, q, "-k", "3", "--json", "--refine", "none") == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["query"] == str(q) and [r["rank"] for r in res[0]["results"]] == [1, 2, 3]
    top = res[0]["results"][0]
    assert top["path"] == "class3/img2.jpg" and top["label"] == "class3" and top["score"] == pytest.approx(1, abs=1e-4)
    assert run_cli("search", "--index", out, q, "-k", "2") == 0
    assert "class3/img2.jpg" in capsys.readouterr().out
    assert run_cli("index", "info", "--index", out, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 20 and info["labels"] == 4 and info["faiss_consistent"] and info["state"] == "complete"
    assert run_cli("index", "remove", "--index", out, "--id", top["id"], "--path", "class0/img0.jpg") == 0
    assert "removed 2" in capsys.readouterr().out
    assert Index.open(out).count == 18
    assert run_cli("index", "add", "--index", out, env / "gallery" / "class0", "--workers", "0") == 0
    assert "added 1, already present 4" in capsys.readouterr().out
    assert Index.open(out).count == 19
    # user errors are one line and exit status 2
    torch.manual_seed(9)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "other")
    assert run_cli("search", "--index", out, q, "--checkpoint", tmp_path / "other") == 2
    err = capsys.readouterr().err
    assert "refusing to search" in err and Index.open(out).fingerprint in err
    assert run_cli("index", "info", "--index", tmp_path / "nothing") == 2


def test_eval_matches_engine_metrics_and_brute_force(env, tmp_path, capsys):
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.encoder import create_encoder as ce
    from engine.metrics import retrieval_metrics

    out = tmp_path / "idx"
    build_index(out, Source(images=env / "gallery"), str(env / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    assert run_cli("index", "eval", "--index", out, "--max-k", "10", "--workers", "0") == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "eval" / "eval.json").read_text())
    png = (out / "eval" / "rank_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "rank-1" in printed and rep["mode"] == "leave-one-out" and len(rep["rank_curve"]) == 10

    # independent brute force over the stored vectors (float64, near-ties allowed to swap)
    idx = Index.open(out)
    v, lab = idx.vectors(), np.asarray(idx.labels(), dtype=object)
    bounds = metric_bounds(v, lab, ks=(1, 5, 10))
    assert_within_bounds(rep["summary"], bounds)
    lo, hi = bounds["rank-1"]
    assert lo - 1e-9 <= rep["rank_curve"][0] <= hi + 1e-9
    assert sorted(d["label"] for d in rep["per_class"]) == ["class0", "class1", "class2", "class3"]
    assert [d["rank-1"] for d in rep["per_class"]] == sorted(d["rank-1"] for d in rep["per_class"])
    n_wrong = round((1 - rep["summary"]["rank-1"]) * len(v))
    assert sum(p[2] for p in rep["confused_pairs"]) == n_wrong
    for a, b, n, qpath, rpath in rep["confused_pairs"]:
        assert a != b and qpath.startswith(f"{a}/") and rpath.startswith(f"{b}/")

    # engine path: the same encoder re-embeds the images (other batches: vectors equal within float noise)
    enc = ce(str(env / "ckpt"))
    ds = build_dataset("folder", env / "gallery", split="all", transform=enc.transform())
    feats, labels = extract_features(enc, ds, batch_size=64, num_workers=0, device="cpu", progress=False)
    by_path = {r.path if hasattr(r, "path") else r["path"]: i for i, r in enumerate(idx.records())}
    order = [by_path[str(Path(p).relative_to(env / "gallery")).replace("\\", "/")] for p, _ in ds.samples]
    np.testing.assert_allclose(np.asarray(feats), v[order], rtol=0, atol=1e-5)
    ref = retrieval_metrics(feats, np.asarray([ds.classes[y] for y in labels], dtype=object))
    assert_within_bounds(ref.summary, bounds)

    # query folder mode: labels from folder names; embedded with the recorded encoder
    from indexer.evaluate import evaluate_index

    qrep = evaluate_index(out, queries=env / "queries", num_workers=0)
    assert qrep.mode == "queries" and qrep.n_queries == 8 and qrep.n_gallery == 20
    qfeats = idx.embed(sorted(str(p) for p in (env / "queries").rglob("*.*")))
    qlab = [Path(p).parent.name for p in sorted(str(p) for p in (env / "queries").rglob("*.*"))]
    assert_within_bounds(qrep.summary, metric_bounds(qfeats, qlab, v, lab))


def test_eval_reports_ann_metrics_for_approximate_types(env, tmp_path):
    from indexer.evaluate import evaluate_index

    out = tmp_path / "idx"
    build_index(out, Source(images=env / "gallery"), str(env / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None), index_type="hnsw")
    rep = evaluate_index(out, out_dir=tmp_path / "ev")
    assert rep.ann is not None and rep.ann["recall@10"] == pytest.approx(1.0)  # 20 items: HNSW is exact here
    assert rep.ann["rank-1"] == pytest.approx(rep.summary["rank-1"])


def test_eval_compare_scores_two_encoders_over_their_common_images(env, tmp_path, capsys):
    """``index eval --compare``: each side equals its own leave-one-out over the shared images (brute force on
    its stored vectors), an image only one index holds is left out, and the table shows both."""
    import shutil

    from indexer.evaluate import compare_indexes

    torch.manual_seed(3)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "other_ckpt")
    gallery = tmp_path / "gallery"
    shutil.copytree(env / "gallery", gallery)
    a, b = tmp_path / "a", tmp_path / "b"
    build_index(a, Source(images=gallery), str(env / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    extra = gallery / "class0" / "extra.jpg"
    shutil.copy(gallery / "class1" / "img0.jpg", extra)  # only in b, and of another class's content
    build_index(b, Source(images=gallery), str(tmp_path / "other_ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    res = compare_indexes(a, b, out_dir=tmp_path / "cmp")
    assert (res["common"], res["only_index"], res["only_other"]) == (20, 0, 1)
    for key, d in (("index", a), ("other", b)):
        idx = Index.open(d)
        keep = [r for r in idx.records() if r["path"] != "class0/extra.jpg"]
        v = idx.vectors([r["id"] for r in keep])
        assert_within_bounds(res[key]["summary"], metric_bounds(v, np.asarray([r["label"] for r in keep], object)))
    assert (tmp_path / "cmp" / "compare_rank_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cli("index", "eval", "--index", a, "--compare", b, "--out", tmp_path / "cmp2") == 0
    out = capsys.readouterr().out
    assert "20 labelled images both indexes hold" in out and "1 only in b" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("mAP"))
    va, vb, diff = float(row.split()[1]), float(row.split()[2]), float(row.split()[3])
    assert va == pytest.approx(100 * res["index"]["summary"]["mAP"], abs=0.01)
    assert vb == pytest.approx(100 * res["other"]["summary"]["mAP"], abs=0.01)
    assert diff == pytest.approx(va - vb, abs=0.02)


def test_kill_9_mid_build_leaves_a_loadable_index_and_rerun_completes(env, tmp_path):
    out = tmp_path / "idx"
    cmd = [sys.executable, str(REPO / "tests" / "slow_commits.py"), "1.5", "-m", "ppssl", "index", "build",
           "--checkpoint", str(env / "ckpt"), "--images", str(env / "gallery"), "--out", str(out), "--chunk-size", "4", "--batch-size", "2", "--workers", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if manifest_rows(out) >= 8 and (out / "index.faiss").is_file():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = manifest_rows(out)
    assert 8 <= done < 20
    # loadable: by plain FAISS and by Index.open, consistent with the manifest
    assert faiss.read_index(str(out / "index.faiss")).ntotal <= done
    idx = Index.open(out)
    assert idx.count == done and len(set(idx.ids().tolist())) == done
    assert len(idx.search(idx.vectors()[:1], k=3)[0]) == 3
    # rerun: completes without duplicates and equals a fresh build
    # rerun with only the index directory: the recorded encoder and source are used
    rep = build_index(out, embed=EmbedOptions(num_workers=0, progress=lambda *_: None, chunk_size=4))
    assert rep.already_present == done and rep.added == 20 - done
    idx = Index.open(out)
    ids = idx.ids().tolist()
    assert idx.count == 20 and len(set(ids)) == 20 and len({r["path"] for r in idx.records()}) == 20
    assert not idx.repaired and faiss.read_index(str(out / "index.faiss")).ntotal == 20
    fresh_dir = tmp_path / "fresh"
    build_index(fresh_dir, Source(images=env / "gallery"), str(env / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    fresh = Index.open(fresh_dir)
    q = fresh.vectors()
    got = [[(h.path, h.score) for h in hs] for hs in idx.search(q, k=5)]
    want = [[(h.path, h.score) for h in hs] for hs in fresh.search(q, k=5)]
    assert_same_hits(got, want)
