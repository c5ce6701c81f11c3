"""Beyond one machine: IVF shards sharing one training merge into the single-build index; IndexShards search."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from indexer.build import add_vectors, build_index, create_index  # noqa: E402
from indexer.errors import IndexError_  # noqa: E402
from indexer.index import Index  # noqa: E402
from indexer.options import EmbedOptions, Source  # noqa: E402
from indexer.shards import ShardedIndex, merge_ivf_shards  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ranking import assert_same_hits  # noqa: E402
from test_indexer import _clustered, make_gallery  # noqa: E402

DIM = 32
N = 4000


def _hits(idx, q, k=10):
    """Per query, ``((id, path, label), score)``: compared with near-ties allowed to swap."""
    return [[((h.id, h.path, h.label), h.score) for h in hs] for hs in idx.search(q, k=k)]


@pytest.fixture(scope="module")
def data():
    x = _clustered(N, DIM, seed=3)
    paths = [f"img/{i:05d}.jpg" for i in range(N)]
    labels = [f"c{i % 13}" for i in range(N)]
    return x, paths, labels


def test_merged_ivf_shards_equal_a_single_build(tmp_path, data):
    x, paths, labels = data
    half = N // 2
    a, b = tmp_path / "a", tmp_path / "b"
    create_index(a, dim=DIM, fingerprint="test:vectors", index_type="ivf", root=tmp_path)
    add_vectors(a, x[:half], paths[:half], labels[:half])  # trains the shared IVF cells on its half
    create_index(b, dim=DIM, fingerprint="test:vectors", index_type="ivf", root=tmp_path, trained_from=a)
    add_vectors(b, x[half:], paths[half:], labels[half:])
    single = tmp_path / "single"
    create_index(single, dim=DIM, fingerprint="test:vectors", index_type="ivf", root=tmp_path, trained_from=a)
    add_vectors(single, x, paths, labels)

    merged = merge_ivf_shards([a, b], tmp_path / "merged")
    ref = Index.open(single)
    assert merged.count == ref.count == N and merged.index_type == "ivf"
    assert merged.records() == [dict(r, added_at=m["added_at"]) for r, m in zip(ref.records(), merged.records())]
    np.testing.assert_array_equal(merged.vectors(), ref.vectors())
    q = x[::40]
    assert_same_hits(_hits(merged, q), _hits(ref, q))
    assert merged.header.params["nprobe"] == ref.header.params["nprobe"]
    plain = faiss.read_index(str(tmp_path / "merged" / "index.faiss"))
    assert plain.ntotal == N

    # shards trained apart have different cells and cannot be merged
    c = tmp_path / "c"
    create_index(c, dim=DIM, fingerprint="test:vectors", index_type="ivf", root=tmp_path)
    add_vectors(c, x[half:], [p + ".c" for p in paths[half:]])
    with pytest.raises(IndexError_, match="trained apart"):
        merge_ivf_shards([a, c], tmp_path / "bad")


def test_index_shards_search_equals_single_index(tmp_path, data):
    x, paths, labels = data
    half = N // 2
    s1, s2, one = tmp_path / "s1", tmp_path / "s2", tmp_path / "one"
    create_index(s1, dim=DIM, fingerprint="test:vectors")
    add_vectors(s1, x[:half], paths[:half], labels[:half])
    create_index(s2, dim=DIM, fingerprint="test:vectors", id_offset=half)  # disjoint ids
    assert add_vectors(s2, x[half:], paths[half:], labels[half:])[0] == half + 1
    create_index(one, dim=DIM, fingerprint="test:vectors")
    add_vectors(one, x, paths, labels)
    sharded = ShardedIndex([s1, s2])
    assert sharded.count == N
    q = x[::50]
    assert_same_hits(_hits(sharded, q), _hits(Index.open(one), q))
    clash = tmp_path / "clash"
    create_index(clash, dim=DIM, fingerprint="test:vectors")
    add_vectors(clash, x[:5], ["z1", "z2", "z3", "z4", "z5"])
    with pytest.raises(IndexError_, match="disjoint"):
        ShardedIndex([s1, clash])


def test_sharded_image_build_via_cli_and_merge(tmp_path):
    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from ppssl.cli import main
    import torch

    make_gallery(tmp_path / "g", classes=3, per_class=4)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    common = ["--checkpoint", str(tmp_path / "ckpt"), "--images", str(tmp_path / "g"), "--workers", "0",
              "--index", "ivf"]
    assert main(["index", "build", *common, "--out", str(tmp_path / "s0"), "--shard", "0/2"]) == 0
    assert main(["index", "build", *common, "--out", str(tmp_path / "s1"), "--shard", "1/2",
                 "--trained-from", str(tmp_path / "s0")]) == 0
    assert main(["index", "merge", "--out", str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    merged = Index.open(tmp_path / "m")
    assert merged.count == 12 and len({r["path"] for r in merged.records()}) == 12
    single = tmp_path / "single"
    build_index(single, Source(images=tmp_path / "g"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None), index_type="ivf",
                trained_from=tmp_path / "s0")
    ref = Index.open(single)
    q = ref.vectors()
    strip = lambda hs: [[(h.path, h.score) for h in row] for row in hs]  # noqa: E731
    got, want = strip(merged.search(q, k=5)), strip(ref.search(q, k=5))
    assert [[p for p, _ in r] for r in got] == [[p for p, _ in r] for r in want]
    np.testing.assert_allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want], atol=1e-5)
