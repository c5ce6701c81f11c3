"""Contract tests: every search backend and every registered re-ranker pass the same tests.

A new backend is added to ``BACKENDS`` (one builder over the shared vectors); a new re-ranker is picked up from
the registry by itself. What the UI, the CLI, the API and the re-rankers rely on is checked here once for all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ranking import assert_same_hits  # noqa: E402

N, DIM, CLASSES = 48, 16, 4


def _data():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((CLASSES, DIM))
    labels = np.arange(N) % CLASSES
    x = centres[labels] + 0.7 * rng.standard_normal((N, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, [f"c{c}/{i}.jpg" for i, c in enumerate(labels)], [f"c{c}" for c in labels]


def _flat(d: Path, x, paths, labels, **kw):
    from indexer.build import add_vectors, create_index

    create_index(d, dim=DIM, fingerprint="sha256:test|pooling=gap|input=32", **kw)
    add_vectors(d, x, paths, labels)
    return d


def _index(tmp):
    from indexer import Index

    return Index.open(_flat(tmp / "flat", *_data()), use_gpu=False)


def _ivf_rerank(tmp):
    from indexer import Index, IndexParams

    d = _flat(tmp / "ivf", *_data(), index_type="ivfsq", params=IndexParams(index_type="ivfsq", nlist=2, nprobe=2,
                                                                               rerank=4))
    return Index.open(d, use_gpu=False)


def _sharded(tmp):
    from indexer import ShardedIndex

    x, paths, labels = _data()
    h = N // 2
    _flat(tmp / "s1", x[:h], paths[:h], labels[:h])
    _flat(tmp / "s2", x[h:], paths[h:], labels[h:], id_offset=h)
    return ShardedIndex([tmp / "s1", tmp / "s2"])


def _sharded_ivfsq_rerank(tmp):
    """Lossy shards (8-bit codes) with exact re-scoring: the merged hits must be exact, as one index's are."""
    from indexer import IndexParams, ShardedIndex

    x, paths, labels = _data()
    h = N // 2
    params = IndexParams(index_type="ivfsq", nlist=2, nprobe=2, rerank=4)
    _flat(tmp / "s1", x[:h], paths[:h], labels[:h], index_type="ivfsq", params=params)
    _flat(tmp / "s2", x[h:], paths[h:], labels[h:], index_type="ivfsq", params=params, id_offset=h)
    return ShardedIndex([tmp / "s1", tmp / "s2"])


def _qdrant(tmp):
    pytest.importorskip("qdrant_client")
    from indexer.vectordb import VectorDBIndex, publish

    d = _flat(tmp / "flat", *_data())
    publish(d, str(tmp / "qdrant"))
    return VectorDBIndex(str(tmp / "qdrant"), "flat")


def _array(tmp):
    from indexer.backend import ArrayBackend

    x, paths, labels = _data()
    return ArrayBackend(x, ids=np.arange(1, N + 1), paths=paths, labels=labels)


BACKENDS = {"index": _index, "index-ivfsq-rerank": _ivf_rerank, "sharded": _sharded,
            "sharded-ivfsq-rerank": _sharded_ivfsq_rerank, "qdrant": _qdrant, "array": _array}


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, tmp_path_factory):
    b = BACKENDS[request.param](tmp_path_factory.mktemp(request.param))
    yield b
    if hasattr(b, "close"):
        b.close()


def _brute(backend, q, k):
    """Exact top-k by numpy over the backend's own vectors: the reference every backend must match."""
    ids, v = backend.ids(), backend.vectors().astype(np.float64)
    s = q.astype(np.float64) @ v.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [list(zip(ids[o].tolist(), s[r, o].tolist())) for r, o in enumerate(order)]


def test_is_a_search_backend(backend):
    from indexer.backend import SearchBackend

    assert isinstance(backend, SearchBackend)
    assert backend.count == N and backend.dim == DIM and isinstance(backend.fingerprint, str)
    assert isinstance(backend.index_type, str) and backend.dir is not None


def test_ids_vectors_and_records_agree(backend):
    ids = backend.ids()
    v = backend.vectors()
    assert len(ids) == len(v) == N and len(set(ids.tolist())) == N
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    pick = ids[[5, 0, 30]]
    assert np.allclose(backend.vectors(pick), v[[5, 0, 30]], atol=1e-6)
    recs = backend.records()
    assert [r["id"] for r in recs] == sorted(ids.tolist())
    for r in recs[:6]:
        assert backend.record(r["id"]) == r and {"path", "label", "sha256", "added_at"} <= set(r)
    x, paths, labels = _data()
    by_path = {r["path"]: r for r in recs}
    for i in (0, 17, N - 1):  # the vector stored under each path is the one given for it
        assert np.allclose(backend.vectors([by_path[paths[i]]["id"]])[0], x[i], atol=1e-6)
        assert by_path[paths[i]]["label"] == labels[i]


def test_search_vectors_matches_brute_force(backend):
    q = backend.vectors()[::7]
    s, i = backend.search_vectors(q, 5)
    assert s.shape == i.shape == (len(q), 5) and s.dtype == np.float32
    assert np.all(np.diff(s, axis=1) <= 1e-6)  # best first
    assert_same_hits([list(zip(a.tolist(), b.tolist())) for a, b in zip(i, s)], _brute(backend, q, 5))


def test_more_than_count_pads_with_minus_one(backend):
    s, i = backend.search_vectors(backend.vectors()[:2], N + 3)
    assert i.shape == (2, N + 3) and (i[:, N:] == -1).all() and (i[:, :N] >= 0).all()


def test_search_builds_hits_from_records(backend):
    q = backend.vectors()[:3]
    hits = backend.search(q, k=4)
    s, i = backend.search_vectors(q, 4)
    assert [[h.id for h in row] for row in hits] == i.tolist()
    assert np.allclose([[h.score for h in row] for row in hits], s, atol=1e-6)
    for row in hits:
        for h in row:
            r = backend.record(h.id)
            assert (h.path, h.label) == (r["path"], r["label"])


def test_exclude_drops_ids_from_results(backend):
    q = backend.vectors()[:3]
    own = backend.ids()[:3]
    hits = backend.search(q, k=5, exclude=[[int(j)] for j in own])
    for row, j in zip(hits, own):
        assert len(row) == 5 and int(j) not in [h.id for h in row]


def test_wrong_dimension_is_refused(backend):
    from indexer.errors import IndexError_

    with pytest.raises(IndexError_, match="dimension"):
        backend.search(np.ones((1, DIM + 1), np.float32), k=3)


def test_exact_scan_matches_brute_force(backend):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((20, DIM)).astype(np.float32)
    q = rng.standard_normal((3, DIM)).astype(np.float32)
    s, rows = backend.exact_scan(g, q, 4)
    ref = q.astype(np.float64) @ g.T.astype(np.float64)
    assert_same_hits([list(zip(r.tolist(), x.tolist())) for r, x in zip(rows, s)],
                     [list(zip(o.tolist(), ref[n, o].tolist())) for n, o in enumerate(np.argsort(-ref, 1)[:, :4])])


def test_state_is_json(backend):
    import json

    json.dumps(backend.state())


# --- every re-ranker over every backend -----------------------------------------------------------------------

def _rerankers():
    from indexer.refine import RERANKERS

    return list(RERANKERS)


@pytest.mark.parametrize("method", _rerankers())
def test_every_reranker_serves_every_backend(backend, method):
    """A re-ranker either answers (valid ids, best first, exclusions kept, k results) or, when it needs a cache
    the backend cannot hold, is refused with a message that names what to do."""
    from indexer.errors import IndexError_
    from indexer.refine import Refine, refined_search

    refine = Refine(method=method)
    q = backend.vectors()[:4]
    own = [[int(j)] for j in backend.ids()[:4]]
    if refine.reranker.needs_cache and backend.cache_dir is None:
        with pytest.raises(IndexError_, match="--refine"):
            refined_search(backend, q, 5, refine, exclude=own)
        return
    s, i = refined_search(backend, q, 5, refine, exclude=own)
    live = set(backend.ids().tolist())
    assert i.shape == (4, 5) and all(int(j) in live for j in i.ravel())
    assert all(own[r][0] not in i[r] for r in range(4))
    assert np.all(np.diff(s, axis=1) <= 1e-5)
    hits = backend.search(q, k=5, refine=refine, exclude=own)
    assert [[h.id for h in row] for row in hits] == i.tolist()


@pytest.mark.parametrize("method", _rerankers())
def test_every_reranker_has_a_leave_one_out_form(method):
    """The leave-one-out form (index eval, the benchmark): a score per (query, gallery item), and a query never
    helped by itself — duplicating the query into the gallery must not change another item's score."""
    from indexer.refine import Refine

    x, _, _ = _data()
    refine = Refine(method=method)
    s = refine.reranker.leave_one_out(x, x, np.arange(N), refine).scores()
    assert s.shape == (N, N) and np.isfinite(s[~np.eye(N, dtype=bool)]).all()
    for i in (3, 20):  # move query i's own gallery item next to another item: its ranking must not notice
        g = x.copy()
        g[i] = x[(i + 1) % N]
        s2 = refine.reranker.leave_one_out(x, g, np.arange(N), refine).scores()
        others = np.arange(N) != i
        assert np.allclose(s2[i, others], s[i, others], atol=1e-5), method
    r = refine.reranker
    assert r.name == method and r.label and r.summary


def test_cli_refine_choices_are_the_registry():
    """`--refine` offers exactly the registered re-rankers, in registry order (the Search page and the API read
    the same registry: ui/views/search.py REFINE_CHOICES, api/app.py reranker_names())."""
    from indexer.refine import RERANKERS, reranker_names
    from ppssl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    search = sub.choices["search"]
    refine = next(a for a in search._actions if a.dest == "refine")
    assert list(refine.choices) == list(reranker_names()) == list(RERANKERS)
