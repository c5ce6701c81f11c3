"""engine.metrics against an independent brute-force reference, sklearn and pytorch-metric-learning."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.metrics as metrics
from engine.metrics import MetricsError, recall_at_k, retrieval_metrics

# --------------------------------------------------------------------------------------------------------
# Independent reference: plain Python loops over a sorted list, sharing no code with engine.metrics.


def brute_force(qf, ql, gf=None, gl=None, self_ids=None):
    """Per-query (first_hit_rank, ap, ap_at_r, top1, R) with ranking = (-similarity, gallery index)."""
    loo = gf is None
    if loo:
        gf, gl = qf, ql
    out = []
    for i in range(len(qf)):
        skip = i if loo else (None if self_ids is None else self_ids[i])
        ranking = []
        for j in range(len(gf)):
            if j == skip:
                continue
            sim = sum(float(a) * float(b) for a, b in zip(qf[i], gf[j]))
            ranking.append((-sim, j))
        ranking.sort()
        rel = [gl[j] == ql[i] for _, j in ranking]
        r = sum(rel)
        top1 = ranking[0][1] if ranking else -1
        if r == 0:
            out.append((-1, math.nan, math.nan, top1, 0))
            continue
        hits, precisions, precisions_at_r = 0, [], []
        for pos, is_rel in enumerate(rel):
            if is_rel:
                hits += 1
                precisions.append(hits / (pos + 1))
                if pos < r:
                    precisions_at_r.append(hits / (pos + 1))
        out.append((rel.index(True), sum(precisions) / r, sum(precisions_at_r) / r, top1, r))
    return out


def check_against_brute(rep, ref, ks=(1, 5, 10)):
    first = np.array([x[0] for x in ref])
    np.testing.assert_array_equal(rep.first_hit_rank, first)
    np.testing.assert_array_equal(rep.top1, [x[3] for x in ref])
    np.testing.assert_array_equal(rep.n_relevant, [x[4] for x in ref])
    # same divisions summed in the same (ranking) order: bit-identical
    np.testing.assert_array_equal(rep.ap, [x[1] for x in ref])
    np.testing.assert_array_equal(rep.ap_at_r, [x[2] for x in ref])
    scored = [x for x in ref if x[4] > 0]
    assert rep.n_without_relevant == len(ref) - len(scored)
    for k in ks:
        assert rep.summary[f"rank-{k}"] == pytest.approx(sum(x[0] < k for x in scored) / len(scored), abs=1e-12)
    assert rep.summary["mAP"] == pytest.approx(sum(x[1] for x in scored) / len(scored), abs=1e-12)
    assert rep.summary["MAP@R"] == pytest.approx(sum(x[2] for x in scored) / len(scored), abs=1e-12)


def tie_heavy(rng, n, n_classes, dim=16):
    """Unit vectors with entries +-1/4: dot products are exact multiples of 1/16, so ties are exact and many."""
    x = rng.choice([-0.25, 0.25], size=(n, dim)).astype(np.float32)
    return x, rng.integers(0, n_classes, n)


def unit(rng, n, dim=32):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# Brute force


def test_leave_one_out_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    x, y = tie_heavy(rng, 120, 3, dim=4)  # 16 distinct vectors only: heavy ties and duplicates
    y[0] = 7  # a singleton class: no relevant item
    rep = retrieval_metrics(x, y)
    check_against_brute(rep, brute_force(x, y))
    assert rep.n_without_relevant == 1 and rep.first_hit_rank[0] == -1 and np.isnan(rep.ap[0])


def test_query_vs_gallery_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    q, ql = tie_heavy(rng, 60, 4)
    g, gl = tie_heavy(rng, 150, 4)
    g[10:20] = q[:10]  # same images in both sets: not removed in this mode
    ql[:3] = 9  # labels absent from the gallery
    rep = retrieval_metrics(q, ql, g, gl, ks=(1, 3, 20))
    check_against_brute(rep, brute_force(q, ql, g, gl), ks=(1, 3, 20))
    assert rep.n_without_relevant == 3
    assert set(rep.summary) == {"rank-1", "rank-3", "rank-20", "mAP", "MAP@R"}


def test_exclude_self_ids_matches_brute_force():
    rng = np.random.default_rng(2)
    q, ql = tie_heavy(rng, 40, 3, dim=4)
    g, gl = tie_heavy(rng, 80, 3, dim=4)
    ids = rng.integers(-1, 80, 40)
    rep = retrieval_metrics(q, ql, g, gl, exclude_self_ids=ids)
    check_against_brute(rep, brute_force(q, ql, g, gl, self_ids=ids))


def test_tie_rule_by_hand():
    # three identical gallery vectors labelled a, b, a: ranking 0(a), 1(b), 2(a) by the index rule
    g = np.array([[1.0, 0.0]] * 3, np.float32)
    rep = retrieval_metrics(np.array([[1.0, 0.0]], np.float32), ["a"], g, ["a", "b", "a"])
    assert rep.first_hit_rank.tolist() == [0] and rep.top1.tolist() == [0]
    assert rep.ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert rep.ap_at_r[0] == pytest.approx(1 / 2)  # R = 2, only position 1 of the top 2 is relevant
    rep = retrieval_metrics(np.array([[1.0, 0.0]], np.float32), ["a"], g, ["b", "a", "a"])
    assert rep.first_hit_rank.tolist() == [1] and rep.top1.tolist() == [0]
    assert rep.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_order_keys_follow_float_order_and_index_rule():
    # matmul rarely yields -0.0, so the key mapping is checked directly, specials and ties included
    rng = np.random.default_rng(11)
    vals = np.concatenate([[0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38, 1e-45, -1e-45, 3.4e38, -3.4e38],
                           rng.standard_normal(40), rng.choice([0.5, -0.5, 0.0, -0.0], 30)]).astype(np.float32)
    sims = torch.from_numpy(rng.permutation(vals)[None, :].copy())
    n = sims.shape[1]
    keys = metrics._order_keys(sims.clone(), (2**32 - 1) - torch.arange(n, dtype=torch.int64))
    assert len(set(keys[0].tolist())) == n
    ours = torch.argsort(keys[0], descending=True).tolist()
    reference = sorted(range(n), key=lambda j: (-float(sims[0, j]), j))  # -0.0 == 0.0 in Python
    assert ours == reference


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(0, 40), st.integers(1, 4), st.integers(1, 9))
def test_property_brute_force(seed, n_q, n_g, n_classes, chunk):
    rng = np.random.default_rng(seed)
    q = rng.integers(-2, 3, (n_q, 3)).astype(np.float32) / 4  # not normalised: raw inner product is ranked
    ql = rng.integers(0, n_classes, n_q)
    if n_g == 0:
        ref = brute_force(q, ql)
        args = (q, ql)
    else:
        g = rng.integers(-2, 3, (n_g, 3)).astype(np.float32) / 4
        gl = rng.integers(0, n_classes, n_g)
        ref = brute_force(q, ql, g, gl)
        args = (q, ql, g, gl)
    if all(x[4] == 0 for x in ref):
        with pytest.raises(MetricsError, match="undefined"):
            retrieval_metrics(*args, chunk_size=chunk)
        return
    check_against_brute(retrieval_metrics(*args, chunk_size=chunk), ref)


# --------------------------------------------------------------------------------------------------------
# sklearn and pytorch-metric-learning


def test_ap_matches_sklearn_per_query():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    q, g = unit(rng, 30), unit(rng, 300)
    ql, gl = rng.integers(0, 6, 30), rng.integers(0, 6, 300)
    rep = retrieval_metrics(q, ql, g, gl)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    expected = [average_precision_score(gl == ql[i], sims[i]) for i in range(len(q))]
    np.testing.assert_allclose(rep.ap, expected, rtol=0, atol=1e-12)

    g, gl = g[:100], gl[:100]
    rep = retrieval_metrics(g, gl)  # leave-one-out: drop the query's own column
    sims = g.astype(np.float64) @ g.T.astype(np.float64)
    keep = ~np.eye(len(g), dtype=bool)
    expected = [average_precision_score((gl == gl[i])[keep[i]], sims[i][keep[i]]) for i in range(len(g))]
    np.testing.assert_allclose(rep.ap, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["leave_one_out", "query_vs_gallery"])
def test_matches_pytorch_metric_learning(mode):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(4)
    q, ql = unit(rng, 150), rng.integers(0, 8, 150)
    ql[0] = 99  # lone query: pml drops it too
    if mode == "leave_one_out":
        rep = retrieval_metrics(q, ql)
        pml_args = (q, ql)
    else:
        g, gl = unit(rng, 400), rng.integers(0, 8, 400)
        rep = retrieval_metrics(q, ql, g, gl)
        pml_args = (q, ql, g, gl, False)
    assert rep.n_without_relevant == 1
    cpu = torch.device("cpu")
    full = AccuracyCalculator(include=("mean_average_precision", "precision_at_1"), k=None, device=cpu)
    at_r = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count", device=cpu)
    got_full = full.get_accuracy(*pml_args)
    got_r = at_r.get_accuracy(*pml_args)
    # k=None: pml ranks the whole reference set, so its mAP is the full-ranking mAP
    assert rep.summary["mAP"] == pytest.approx(got_full["mean_average_precision"], abs=1e-12)
    assert rep.summary["rank-1"] == pytest.approx(got_full["precision_at_1"], abs=1e-12)
    assert rep.summary["MAP@R"] == pytest.approx(got_r["mean_average_precision_at_r"], abs=1e-12)


# --------------------------------------------------------------------------------------------------------
# Chunking, inputs, edge cases


def assert_same_report(a, b):
    assert a.summary == b.summary
    for name in ("first_hit_rank", "ap", "ap_at_r", "top1", "n_relevant"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_chunk_size_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    x, y = tie_heavy(rng, 300, 5)
    small, large = retrieval_metrics(x, y, chunk_size=7), retrieval_metrics(x, y, chunk_size=10_000)
    assert_same_report(small, large)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMENTS", 1000)  # the memory cap splits the 10_000 rows
    assert_same_report(retrieval_metrics(x, y, chunk_size=10_000), large)
    g, gl = unit(rng, 500), rng.integers(0, 5, 500)
    q, ql = unit(rng, 70), rng.integers(0, 5, 70)
    assert_same_report(retrieval_metrics(q, ql, g, gl, chunk_size=3), retrieval_metrics(q, ql, g, gl))


def test_single_class_is_perfect():
    rng = np.random.default_rng(6)
    rep = retrieval_metrics(unit(rng, 30), np.zeros(30, int))
    assert rep.summary == {"rank-1": 1.0, "rank-5": 1.0, "rank-10": 1.0, "mAP": 1.0, "MAP@R": 1.0}
    assert rep.confused_pairs() == []


def test_string_labels_and_torch_inputs_agree_with_numpy():
    rng = np.random.default_rng(7)
    q, g = unit(rng, 40), unit(rng, 90)
    ql, gl = rng.integers(0, 4, 40), rng.integers(0, 4, 90)
    base = retrieval_metrics(q, ql, g, gl)
    names = np.array(["wren", "jay", "tit", "owl"])
    as_str = retrieval_metrics(q, list(names[ql]), g, list(names[gl]))
    assert_same_report(base, as_str)
    assert as_str.query_labels.tolist() == names[ql].tolist()
    as_torch = retrieval_metrics(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g),
                                 torch.from_numpy(gl), device="cpu")
    assert_same_report(base, as_torch)
    assert_same_report(retrieval_metrics(q, ql), retrieval_metrics(torch.from_numpy(q).requires_grad_(), ql))


def test_exclude_self_ids_equals_leave_one_out():
    rng = np.random.default_rng(8)
    x, y = tie_heavy(rng, 100, 3, dim=4)
    loo = retrieval_metrics(x, y)
    assert_same_report(loo, retrieval_metrics(x, y, x, y, exclude_self_ids=np.arange(100)))
    with_self = retrieval_metrics(x, y, x, y)  # query-vs-gallery keeps the query's own image
    assert (with_self.n_relevant == loo.n_relevant + 1).all()


def test_all_queries_without_relevant_is_an_error():
    rng = np.random.default_rng(9)
    with pytest.raises(MetricsError, match="undefined"):
        retrieval_metrics(unit(rng, 5), np.arange(5))
    with pytest.raises(MetricsError, match="undefined"):
        retrieval_metrics(unit(rng, 5), np.zeros(5, int), np.zeros((0, 32), np.float32), np.zeros(0, int))


@pytest.mark.parametrize("kwargs, match", [
    (dict(query_feats=np.full((3, 4), np.nan, np.float32)), "NaN"),
    (dict(query_labels=[0, 1]), "one label per"),
    (dict(query_feats=np.full((3, 4), 1e30, np.float32)), "overflow"),
    (dict(gallery_feats=np.ones((3, 5), np.float32), gallery_labels=[0, 0, 1]), "dims differ"),
    (dict(gallery_feats=np.ones((3, 4), np.float32), gallery_labels=["a", "b", "c"]), "both be numbers"),
    (dict(gallery_feats=np.ones((3, 4), np.float32)), "gallery_labels is required"),
    (dict(ks=(0, 5)), "ks must be"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(query_feats=np.ones((0, 4), np.float32), query_labels=[]), "no queries"),
    (dict(exclude_self_ids=[0, 1, 2]), "need gallery_feats"),
])
def test_bad_input_errors(kwargs, match):
    args = dict(query_feats=np.ones((3, 4), np.float32), query_labels=[0, 0, 1])
    args.update(kwargs)
    with pytest.raises(MetricsError, match=match):
        retrieval_metrics(**args)


def test_report_helpers_against_simple_reference():
    rng = np.random.default_rng(10)
    x = unit(rng, 200, dim=8)
    names = np.array(["a", "b", "c", "d", "e"], dtype="<U8")
    y = names[rng.integers(0, 5, 200)]
    y[0] = "lonely"
    rep = retrieval_metrics(x, y)
    ref = brute_force(x, y)
    scored = [i for i, r in enumerate(ref) if r[4] > 0]

    curve = rep.rank_curve(20)
    assert len(curve) == 20 and np.all(np.diff(curve) >= 0)
    for k in (1, 5, 10):
        assert curve[k - 1] == rep.summary[f"rank-{k}"]

    per_class = rep.per_class()
    assert set(per_class) == set(names) and "lonely" not in per_class
    for lab, m in per_class.items():
        idx = [i for i in scored if y[i] == lab]
        assert m["count"] == len(idx)
        assert m["rank-1"] == pytest.approx(np.mean([ref[i][0] == 0 for i in idx]))
        assert m["mAP"] == pytest.approx(np.mean([ref[i][1] for i in idx]))
        assert m["MAP@R"] == pytest.approx(np.mean([ref[i][2] for i in idx]))

    counts = {}
    for i in scored:
        if ref[i][0] != 0:
            pair = (y[i], y[ref[i][3]])
            counts[pair] = counts.get(pair, 0) + 1
    pairs = rep.confused_pairs(top=100)
    assert {(a, b): n for a, b, n in pairs} == counts
    assert [n for _, _, n in pairs] == sorted(counts.values(), reverse=True)
    assert len(rep.confused_pairs(top=3)) == 3

    d = json.loads(json.dumps(rep.to_dict(per_query=True), allow_nan=False))
    assert d["summary"] == rep.summary and d["n_without_relevant"] == 1
    assert d["per_query"]["ap"][0] is None and d["per_query"]["query_label"][0] == "lonely"


def test_recall_at_k():
    true = np.array([[1, 2, 3], [4, 5, 6], [7, -1, -1]])
    found = np.array([[3, 9, 1], [0, 0, 0], [7, 8, 9]])
    assert recall_at_k(found, true, k=3) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert recall_at_k(found, true, k=1) == pytest.approx((0 + 0 + 1) / 3)
    assert recall_at_k(true, true, k=3) == 1.0
    with pytest.raises(MetricsError):
        recall_at_k(found, true, k=4)
    with pytest.raises(MetricsError):
        recall_at_k(found[:2], true, k=2)


def test_near_tie_bounds_bracket_the_engine_and_are_tight_without_ties():
    """tests/ranking.metric_bounds (used to compare code paths on any BLAS) brackets engine.metrics, widens
    only where ties are, and is exact on tie-free data."""
    from ranking import assert_same_hits, metric_bounds

    rng = np.random.default_rng(11)
    x, y = tie_heavy(rng, 120, 4)
    b = metric_bounds(x, y)
    rep = retrieval_metrics(x, y)
    assert all(b[k][0] <= rep.summary[k] + 1e-12 and rep.summary[k] <= b[k][1] + 1e-12 for k in b)
    assert b["mAP"][0] < b["mAP"][1]  # exact ties: the extremes differ
    u, yu = unit(rng, 120), rng.integers(0, 4, 120)
    b = metric_bounds(u, yu, tol=0.0)
    rep = retrieval_metrics(u, yu)
    for k, (lo, hi) in b.items():
        assert lo == pytest.approx(hi, abs=1e-12) and rep.summary[k] == pytest.approx(lo, abs=1e-9), k
    with pytest.raises(AssertionError):
        assert_same_hits([[(1, 0.9), (2, 0.5)]], [[(2, 0.9), (1, 0.5)]])  # a real swap is caught
    assert_same_hits([[(1, 0.9), (2, 0.9 - 1e-7)]], [[(2, 0.9), (1, 0.9 - 1e-7)]])  # a near-tie may swap
