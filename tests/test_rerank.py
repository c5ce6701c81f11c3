"""Re-ranking: engine.rerank against literal re-implementations, and its use by the index, eval and CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engine.rerank import alpha_qe, augment_database, k_reciprocal_scores

sys.path.insert(0, str(Path(__file__).parent))


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clusters(n_per=12, classes=4, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    x = np.concatenate([centres[c] + noise * rng.standard_normal((n_per, dim)) for c in range(classes)])
    return _unit(x), np.repeat(np.arange(classes), n_per)


def test_alpha_qe_and_dba_follow_their_formulas():
    x, _ = _clusters()
    q = x[:3]
    nb = x[[[5, 6], [7, 8], [9, 10]]]
    s = np.einsum("qd,qkd->qk", q, nb)
    want = q.astype(np.float64) + (np.maximum(s, 0) ** 3)[..., None].__mul__(nb).sum(1)
    np.testing.assert_allclose(alpha_qe(q, nb, s, 3.0), _unit(want), atol=1e-6)
    avg = alpha_qe(q, nb, s, 0.0)  # alpha 0: plain average query expansion
    np.testing.assert_allclose(avg, _unit(q + nb.sum(1)), atol=1e-6)
    rows = np.argsort(-(x @ x.T), axis=1)[:, :3]  # self first
    sc = np.take_along_axis(x @ x.T, rows, 1)
    got = augment_database(x, rows, sc, 3.0)
    for i in (0, 17):
        ref = sum(max(sc[i, j], 0) ** 3 * x[rows[i, j]].astype(np.float64) for j in range(3))
        np.testing.assert_allclose(got[i], _unit(ref), atol=1e-6)
    # an item missing from its own neighbour list still counts once
    got = augment_database(x[:2], np.array([[1], [0]]), np.array([[0.5], [0.5]]), 1.0)
    np.testing.assert_allclose(got[0], _unit(x[0] + 0.5 * x[1]), atol=1e-6)


def _reference_re_ranking(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al.'s published re_ranking (CVPR 2017 code), transcribed loop by loop: the independent
    reference (inputs are squared-free distances; the code squares them itself)."""
    original = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    original = np.power(original, 2).astype(np.float64)
    original = np.transpose(1.0 * original / np.max(original, axis=0))
    v = np.zeros_like(original)
    rank = np.argsort(original, kind="stable").astype(np.int32)
    nq, n = q_g.shape[0], original.shape[0]
    for i in range(n):
        forward = rank[i, :k1 + 1]
        backward = rank[forward, :k1 + 1]
        kr = forward[np.where(backward == i)[0]]
        exp = kr
        for c in kr:
            cf = rank[c, :int(np.around(k1 / 2.0)) + 1]
            cb = rank[cf, :int(np.around(k1 / 2.0)) + 1]
            ckr = cf[np.where(cb == c)[0]]
            if len(np.intersect1d(ckr, kr)) > 2.0 / 3 * len(ckr):
                exp = np.append(exp, ckr)
        exp = np.unique(exp)
        w = np.exp(-original[i, exp])
        v[i, exp] = w / np.sum(w)
    original = original[:nq]
    if k2 != 1:
        v = np.array([np.mean(v[rank[i, :k2]], axis=0) for i in range(n)])
    jac = np.zeros((nq, n))
    for i in range(nq):
        tmin = np.zeros(n)
        for j in np.where(v[i] != 0)[0]:
            rows = np.where(v[:, j] != 0)[0]
            tmin[rows] += np.minimum(v[i, j], v[rows, j])
        jac[i] = 1 - tmin / (2 - tmin)
    final = jac * (1 - lam) + original * lam
    return final[:nq, nq:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (8, 1, 0.0)])
def test_k_reciprocal_matches_the_published_algorithm(k1, k2, lam):
    x, labels = _clusters(n_per=10, classes=5, seed=k1)
    q, g = x[0], x[1:]
    dist = lambda a, b: np.sqrt(np.maximum(2 - 2 * (a.astype(np.float64) @ b.T.astype(np.float64)), 0))  # noqa: E731
    ref = _reference_re_ranking(dist(q[None], g), dist(q[None], q[None]), dist(g, g), k1, k2, lam)[0]
    np.testing.assert_allclose(k_reciprocal_scores(q, g, k1, k2, lam), 1 - ref, atol=1e-5)


def test_k_reciprocal_lifts_the_query_cluster():
    x, labels = _clusters(n_per=15, classes=3, noise=0.9, seed=3)
    q, g, gl = x[0], x[1:], labels[1:]
    plain = np.argsort(-(g @ q))[:10]
    new = np.argsort(-k_reciprocal_scores(q, g, 10, 3, 0.3))[:10]
    assert (gl[new] == labels[0]).sum() >= (gl[plain] == labels[0]).sum()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return _cluster_index(tmp_path_factory.mktemp("rr") / "idx", n_per=20, classes=5, noise=0.9, seed=11)


def _cluster_index(d, **clusters):
    """A flat index of :func:`_clusters` vectors (32-d), labelled by cluster."""
    from indexer.build import add_vectors, create_index

    x, labels = _clusters(dim=32, **clusters)
    create_index(d, dim=32, fingerprint="sha256:test|pooling=gap|input=32", index_type="flat")
    add_vectors(d, x, [f"c{c}/{i}.jpg" for i, c in enumerate(labels)], [f"c{c}" for c in labels])
    return d


def test_refined_search_equals_its_definition(index_dir):
    from indexer import Index
    from indexer.refine import Refine, dba_vectors, refined_search

    idx = Index.open(index_dir, use_gpu=False)
    v, ids = idx.vectors(), idx.ids()
    q = v[:4]
    s0, i0 = refined_search(idx, q, 5, Refine())
    assert np.array_equal(i0, idx.search_vectors(q, 5)[1])
    # qe: search again with the expanded query built from the 2 best (the query's own record excluded)
    s, i = refined_search(idx, q, 5, Refine(method="qe", k=2), exclude=[[int(j)] for j in ids[:4]])
    from ranking import assert_same_hits

    for r in range(4):
        sims = v @ q[r]
        sims[r] = -np.inf
        nb = np.argsort(-sims, kind="stable")[:2]
        q2 = alpha_qe(q[r][None], v[nb][None], sims[nb][None], 3.0)[0]
        s2 = v @ q2
        s2[r] = -np.inf
        top = np.argsort(-s2, kind="stable")[:5]
        assert_same_hits([list(zip(i[r].tolist(), s[r].tolist()))], [list(zip(ids[top].tolist(), s2[top].tolist()))])
        assert ids[r] not in i[r]
    # dba: cached beside the vectors, reused, and recomputed after the index changes
    gal = dba_vectors(idx, 2)
    assert (index_dir / "dba_k2.f32").is_file() and np.array_equal(dba_vectors(idx, 2), gal)
    s, i = refined_search(idx, q, 3, Refine(method="dba", k=2))
    np.testing.assert_allclose(s, np.sort(q @ gal.T, axis=1)[:, ::-1][:, :3], atol=1e-5)
    from indexer import remove_from_index

    remove_from_index(index_dir, ids=[int(ids[-1])])
    idx2 = Index.open(index_dir, use_gpu=False)
    assert dba_vectors(idx2, 2).shape[0] == len(ids) - 1
    for method in ("dba+qe", "kr"):
        s, i = refined_search(idx2, q, 5, Refine(method=method), exclude=[[int(j)] for j in ids[:4]])
        assert (i >= 0).all() and all(ids[r] not in i[r] for r in range(4))
        assert np.all(np.diff(s, axis=1) <= 1e-6)  # best first


def _ref_topk(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(s, rows, 1)


def _reference_scores(v: np.ndarray, method: str, cfg: dict) -> np.ndarray:
    """(N, N) scores of every item (as a query) against every item, self to be excluded by the caller: each
    re-ranker written out literally, independently of indexer.refine (the reference its leave-one-out form is
    checked against)."""
    n = len(v)
    eye = np.eye(n, dtype=bool)
    s0 = v @ v.T
    s0_noself = np.where(eye, -np.inf, s0)
    if method == "none":
        return s0
    if method == "qe":
        rows, sc = _ref_topk(s0_noself, cfg["k"])
        return alpha_qe(v, v[rows], sc, cfg["alpha"]) @ v.T
    if method in ("dba", "dba+qe"):
        # Literally: for each query, the database is every other item, augmented among themselves (the query
        # held out of every neighbourhood), then searched (expanded first for dba+qe).
        k = cfg["k"]
        order = np.argsort(-s0, axis=1, kind="stable")[:, :k + 1]  # self first: k neighbours + one spare
        base = augment_database(v, order[:, :k], np.take_along_axis(s0, order[:, :k], 1), cfg["alpha"])
        out = np.empty_like(s0)
        for i in range(n):
            vd = base.copy()
            changed = np.nonzero((order[:, :k] == i).any(axis=1) & (np.arange(n) != i))[0]
            if len(changed):  # only these items had the query among their neighbours
                nb = np.array([[c for c in order[j] if c != i][:k] for j in changed])
                vd[changed] = augment_database(v, nb, np.take_along_axis(s0[changed], nb, 1), cfg["alpha"],
                                               items=changed)
            row = vd @ v[i]
            if method == "dba+qe":
                row[i] = -np.inf
                top = np.argsort(-row, kind="stable")[:k]
                row = vd @ alpha_qe(v[i][None], vd[top][None], row[top][None], cfg["alpha"])[0]
            out[i] = row
        return out
    if method == "kr":
        out = s0.copy()
        rows, _ = _ref_topk(s0_noself, min(cfg["n"], n - 1))
        for i in range(n):
            out[i, rows[i]] = 10.0 + k_reciprocal_scores(v[i], v[rows[i]], cfg["k1"], cfg["k2"], cfg["lam"])
        return out
    raise ValueError(method)


def test_eval_refine_agrees_with_an_independent_scoring(index_dir):
    """index eval --refine and the benchmark's matrices (both the registered leave-one-out forms) against each
    re-ranker written out literally, scored by scikit-learn."""
    from benchmarks.rerank import leave_one_out, score_matrix
    from indexer import Index
    from indexer.evaluate import evaluate_index
    from indexer.refine import Refine

    pytest.importorskip("sklearn")
    idx = Index.open(index_dir, use_gpu=False)
    recs = idx.records()
    v = idx.vectors([r["id"] for r in recs])
    labels = np.asarray([r["label"] for r in recs], dtype=object)
    for method, cfg in (("qe", {"k": 2, "alpha": 3.0}), ("dba", {"k": 2, "alpha": 3.0}),
                        ("dba+qe", {"k": 2, "alpha": 3.0}), ("kr", {"k1": 20, "k2": 6, "lam": 0.3, "n": 100})):
        ours = evaluate_index(index_dir, refine=Refine(method=method, k=cfg.get("k"))).summary
        ref = leave_one_out(_reference_scores(v, method, cfg), labels)
        settings = {("candidates" if key == "n" else key): val for key, val in cfg.items()}
        bench = leave_one_out(score_matrix(v, method, settings), labels)
        for got in (100 * ours["mAP"], bench["mAP"]):  # ties may order differently
            assert got == pytest.approx(ref["mAP"], abs=0.3), method
        for got in (100 * ours["rank-1"], bench["rank-1"]):
            assert got == pytest.approx(ref["rank-1"], abs=100 / len(v) + 1e-6), method


@pytest.fixture(scope="module")
def hard_index_dir(tmp_path_factory):
    """Overlapping clusters (mAP ~0.45): letting the query into the augmented gallery changes several rank-1s."""
    return _cluster_index(tmp_path_factory.mktemp("rr_hard") / "idx", n_per=15, classes=6, noise=2.5, seed=3)


@pytest.mark.parametrize("method", ["dba", "dba+qe"])
def test_eval_dba_equals_brute_force_leave_one_out(hard_index_dir, method):
    """The reference for DBA under leave-one-out, by brute force: for every query the gallery *without it* is
    augmented from scratch (its own neighbours, its own top-k), the query (expanded over that gallery for dba+qe)
    ranks it, and scikit-learn scores the ranking. index eval's held-out shortcut must give the same figures."""
    pytest.importorskip("sklearn")
    from sklearn.metrics import average_precision_score

    from indexer import Index
    from indexer.evaluate import evaluate_index
    from indexer.refine import Refine

    index_dir = hard_index_dir
    k, alpha = 2, 3.0
    idx = Index.open(index_dir, use_gpu=False)
    recs = idx.records()
    v = idx.vectors([r["id"] for r in recs]).astype(np.float64)
    labels = np.asarray([r["label"] for r in recs])
    aps, top1 = [], []
    for i in range(len(v)):
        rest = np.delete(np.arange(len(v)), i)
        g = v[rest]
        sims = g @ g.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        gal = augment_database(g, order, np.take_along_axis(sims, order, 1), alpha)
        q = v[i:i + 1]
        if method == "dba+qe":
            s0 = (q @ gal.T)[0]
            nb = np.argsort(-s0, kind="stable")[:k]
            q = alpha_qe(q, gal[nb][None], s0[nb][None], alpha)
        scores = (q @ gal.T)[0]
        rel = labels[rest] == labels[i]
        aps.append(average_precision_score(rel, scores))
        top1.append(rel[np.argmax(scores)])
    ours = evaluate_index(index_dir, refine=Refine(method=method, k=k, alpha=alpha)).summary
    assert ours["mAP"] == pytest.approx(np.mean(aps), abs=5e-4)  # float32 vs float64 may swap a near-tie
    assert ours["rank-1"] == pytest.approx(np.mean(top1), abs=1 / len(v) + 1e-9)


def test_cli_search_and_eval_take_refine(index_dir, tmp_path, capsys):
    from ppssl.cli import main

    assert main(["index", "eval", "--index", str(index_dir), "--refine", "kr", "--out", str(tmp_path / "e")]) == 0
    assert "re-ranked (kr)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["index", "eval", "--index", str(index_dir), "--refine", "bogus"])
    assert exc.value.code == 2


def test_large_indexes_prepare_dba_once(index_dir, monkeypatch, capsys):
    """Inside a query DBA is computed only for small indexes; `ppssl index dba` prepares it for any size."""
    import indexer.refine as refine
    from indexer import Index
    from indexer.errors import IndexError_
    from ppssl.cli import main

    for f in index_dir.glob("dba_k3.*"):
        f.unlink()
    monkeypatch.setattr(refine, "LAZY_DBA_MAX", 10)
    idx = Index.open(index_dir, use_gpu=False)
    with pytest.raises(IndexError_, match="ppssl index dba"):
        refine.refined_search(idx, idx.vectors()[:1], 3, refine.Refine(method="dba", k=3))
    assert main(["index", "dba", "--index", str(index_dir), "--k", "3"]) == 0
    assert "DBA vectors (k=3)" in capsys.readouterr().out
    s, i = refine.refined_search(idx, idx.vectors()[:1], 3, refine.Refine(method="dba", k=3))
    assert (i >= 0).all()


def test_each_method_has_its_own_default_k():
    """``--refine-k`` unset: each method averages its own number of neighbours (chosen on cub100's validation
    part, benchmarks/results/rerank_val.md): alpha-QE 1, DBA 5; an explicit k wins."""
    from indexer.refine import Refine

    assert Refine(method="qe").neighbours == 1 and Refine(method="dba").neighbours == 5
    assert Refine(method="dba+qe").neighbours == 2 and Refine(method="qe", k=3).neighbours == 3
