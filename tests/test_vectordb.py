"""Serving from Qdrant (embedded mode): same top-k as the FAISS flat index, add/remove kept in step, a foreign
encoder refused, and a crash between the manifest commit and the database write repaired on the next open."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

sys.path.insert(0, str(Path(__file__).parent))
from ranking import assert_same_hits  # noqa: E402
from test_indexer import make_gallery  # noqa: E402


@pytest.fixture
def built(tmp_path):
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    make_gallery(tmp_path / "gallery", classes=4, per_class=6)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    build_index(tmp_path / "idx", Source(images=tmp_path / "gallery"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    return tmp_path


def _hits(h):
    return [[(x.id, x.score) for x in row] for row in h]


def test_published_collection_answers_like_the_flat_index(built):
    from indexer import Index
    from indexer.vectordb import VectorDBIndex, publish

    res = publish(built / "idx", str(built / "qdrant"))
    idx = Index.open(built / "idx")
    assert res["count"] == idx.count == 24 and res["upserted"] == 24
    q = idx.vectors()[::5]
    with VectorDBIndex(str(built / "qdrant"), "idx") as vdb:
        assert vdb.count == 24 and vdb.fingerprint == idx.fingerprint and not vdb.repaired
        assert_same_hits(_hits(vdb.search(q, k=5)), _hits(idx.search(q, k=5)))
        photo = built / "gallery" / "class1" / "img2.jpg"
        a, b = vdb.search([photo], k=3)[0], idx.search([photo], k=3)[0]
        assert_same_hits(_hits([a]), _hits([b]))
        where = {h.id: (h.path, h.label) for h in b}
        assert all(where[h.id] == (h.path, h.label) for h in a if h.id in where)  # payloads: path and label


def test_add_and_remove_keep_the_collection_in_step(built):
    import shutil

    from indexer import EmbedOptions, Index, add_to_index, remove_from_index
    from indexer.vectordb import VectorDBIndex, publish

    publish(built / "idx", str(built / "qdrant"))
    new = built / "gallery" / "class0" / "extra.jpg"
    shutil.copy(built / "gallery" / "class2" / "img0.jpg", new)
    add_to_index(built / "idx", [new], embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    idx = Index.open(built / "idx")
    removed = idx.records()[3]["id"]
    remove_from_index(built / "idx", ids=[removed])
    idx = Index.open(built / "idx")
    with VectorDBIndex(str(built / "qdrant"), "idx") as vdb:
        assert not vdb.repaired  # kept in step by add/remove themselves
        assert vdb.count == idx.count == 24
        got = {h.id for h in vdb.search(idx.vectors(), k=30)[0]}
        assert got == set(idx.ids().tolist()) and removed not in got


def test_a_foreign_encoder_is_refused(built):
    import torch

    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index
    from indexer.errors import EncoderMismatchError
    from indexer.vectordb import VectorDBIndex, publish

    publish(built / "idx", str(built / "qdrant"), "birds")
    torch.manual_seed(7)
    save_checkpoint(create_encoder("tinycnn"), built / "other")
    build_index(built / "idx2", Source(images=built / "gallery"), str(built / "other"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    with pytest.raises(EncoderMismatchError):
        publish(built / "idx2", str(built / "qdrant"), "birds")  # another encoder into the same collection
    with VectorDBIndex(str(built / "qdrant"), "birds") as vdb:
        with pytest.raises(EncoderMismatchError):
            vdb.search([built / "gallery" / "class0" / "img0.jpg"], encoder=load_checkpoint(built / "other"))


def test_a_crash_between_manifest_and_database_is_repaired_on_open(built, monkeypatch):
    import shutil

    import indexer.vectordb as vectordb
    from indexer import EmbedOptions, Index, add_to_index

    vectordb.publish(built / "idx", str(built / "qdrant"))

    def crash(*a, **k):
        raise RuntimeError("killed before the database write")

    monkeypatch.setattr(vectordb, "sync", crash)
    new = built / "gallery" / "class3" / "late.png"
    shutil.copy(built / "gallery" / "class1" / "img1.png", new)
    # committed locally only
    add_to_index(built / "idx", [new], embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    monkeypatch.undo()
    idx = Index.open(built / "idx")
    assert idx.count == 25
    with vectordb.VectorDBIndex(str(built / "qdrant"), "idx") as vdb:
        assert vdb.repaired and vdb.count == 25
        late = next(r["id"] for r in idx.records() if r["path"] == "class3/late.png")
        top = vdb.search(idx.vectors([late]), k=2)[0]
        assert late in [h.id for h in top]  # (its twin class1/img1.png scores the same)


def test_cli_publish_and_search(built, capsys):
    from ppssl.cli import main

    assert main(["index", "publish", "--index", str(built / "idx"), "--qdrant", str(built / "qdrant")]) == 0
    assert "published 24 items" in capsys.readouterr().out
    q = built / "gallery" / "class2" / "img2.jpg"
    assert main(["search", "--qdrant", str(built / "qdrant"), "--index", str(built / "idx"), str(q), "-k", "2"]) == 0
    assert "class2/img2.jpg" in capsys.readouterr().out


def test_index_eval_on_the_qdrant_copy_equals_the_local_index(built, capsys):
    """`index eval --qdrant`: the exact figures from the collection's own vectors equal the local index's, and
    the collection's search (HNSW) is scored against exact search (the ann rows)."""
    from indexer import Index
    from indexer.evaluate import evaluate_index
    from indexer.vectordb import VectorDBIndex, publish
    from ppssl.cli import main

    publish(built / "idx", str(built / "qdrant"))
    local = evaluate_index(built / "idx")
    with VectorDBIndex(str(built / "qdrant"), "idx") as vdb:
        idx = Index.open(built / "idx")
        assert [(r["id"], r["path"], r["label"]) for r in vdb.records()] == \
            [(r["id"], r["path"], r["label"]) for r in idx.records()]
        np.testing.assert_allclose(vdb.vectors(), idx.vectors(), atol=1e-6)
        served = evaluate_index(built / "idx", index=vdb)
    for k, v in local.summary.items():
        assert served.summary[k] == pytest.approx(v, abs=1e-6)
    assert served.ann is not None and served.ann["recall@10"] == pytest.approx(1.0)  # 24 points: HNSW is exact
    assert main(["index", "eval", "--index", str(built / "idx"), "--qdrant", str(built / "qdrant"),
                 "--out", str(built / "ev")]) == 0
    assert "via the index's own search (approximate)" in capsys.readouterr().out
