"""Adapted indexes (indexer.adapt): the retrieval head fitted on the gallery, kept by add/remove, refitted by a
rebuild, guarded by the fingerprint, and searched the same way from a query image and from a stored vector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")

from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.encoder import create_encoder  # noqa: E402
from indexer import adapt as adapting  # noqa: E402
from indexer.build import add_to_index, build_index, remove_from_index  # noqa: E402
from indexer.errors import EncoderMismatchError, IndexError_, IndexFormatError  # noqa: E402
from indexer.index import Index  # noqa: E402
from indexer.options import EmbedOptions, Source  # noqa: E402
from ranking import assert_same_hits  # noqa: E402
from test_indexer import make_gallery  # noqa: E402

QUIET = EmbedOptions(num_workers=0, progress=lambda *_: None)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A 30-image gallery, a tinycnn checkpoint, and an index of it built with --adapt (shared, read-only)."""
    base = tmp_path_factory.mktemp("adapt")
    make_gallery(base / "gallery", classes=3, per_class=10)
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), base / "ckpt")
    rep = build_index(base / "idx", Source(images=base / "gallery"), str(base / "ckpt"), embed=QUIET, adapt=True)
    return {"base": base, "report": rep}


def copy_index(adapted, tmp_path) -> Path:
    shutil.copytree(adapted["base"] / "gallery", tmp_path / "gallery")
    build_index(tmp_path / "idx", Source(images=tmp_path / "gallery"), str(adapted["base"] / "ckpt"), embed=QUIET,
                adapt=True)
    return tmp_path / "idx"


def test_build_fits_the_head_on_the_gallery_and_searches_in_its_space(adapted):
    rep = adapted["report"]
    dim = 30 // adapting.PCA_PER  # the PCA width follows the gallery: n / 8 vectors per dimension
    assert rep.adapt["fitted_on"] == rep.adapt["of"] == 30 and rep.adapt["dim"] == rep.adapt["pca_dim"] == dim
    idx = Index.open(adapted["base"] / "idx")
    assert idx.dim == dim and idx.stored_dim == 256 and idx.faiss_index.d == dim
    # the searched vectors are the stored ones through the head: recompute with numpy from the adapter's tensors
    from safetensors.numpy import load_file

    t = load_file(str(adapted["base"] / "idx" / "adapter" / "model.safetensors"))
    raw = idx.stored_vectors()
    want = (raw - t["whiten.mean"]) @ t["whiten.proj"]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(idx.vectors(), want, atol=1e-5)
    # the fingerprint names the adapted encoder, not the building one
    assert idx.fingerprint != idx.adapted["base_fingerprint"]


def test_a_query_image_finds_what_its_stored_vector_finds(adapted):
    idx = Index.open(adapted["base"] / "idx")
    paths = [adapted["base"] / "gallery" / f"class{c}" / "img1.png" for c in range(3)]
    feats = idx.embed(paths)  # through the adapter encoder (ONNX Runtime or PyTorch)
    ids = [next(r["id"] for r in idx.records() if r["path"] == f"class{c}/img1.png") for c in range(3)]
    stored = idx.vectors(ids)
    np.testing.assert_allclose((feats * stored).sum(1), 1.0, atol=1e-4)
    by_image = [[((h.path, h.label), h.score) for h in hits] for hits in idx.search(paths, k=8)]
    by_vector = [[((h.path, h.label), h.score) for h in hits] for hits in idx.search(stored, k=8)]
    assert_same_hits(by_image, by_vector, tol=1e-4)


def test_add_and_remove_keep_the_head(adapted, tmp_path):
    index_dir = copy_index(adapted, tmp_path)
    before = Index.open(index_dir).adapted["head_sha256"]
    make_gallery(tmp_path / "more", classes=1, per_class=3, seed=7)
    shutil.move(str(tmp_path / "more" / "class0"), str(tmp_path / "gallery" / "class9"))
    add_to_index(index_dir, [tmp_path / "gallery" / "class9"], embed=QUIET)
    idx = Index.open(index_dir)
    assert idx.count == 33 and idx.adapted["head_sha256"] == before and idx.adapted["fitted_on"] == 30
    new = [r["id"] for r in idx.records() if r["label"] == "class9"]
    # the new items are stored in the encoder's own space and searched through the same head
    enc = create_encoder(str(adapted["base"] / "ckpt")).eval()
    from indexer.sources import embed_images

    raw = embed_images(enc, [tmp_path / "gallery" / "class9" / f"img{i}.{'png' if i % 2 else 'jpg'}"
                             for i in range(3)])
    np.testing.assert_allclose(idx.stored_vectors(new), raw, atol=1e-4)
    hits = idx.search(idx.vectors(new[:1]), k=1)
    assert hits[0][0].id == new[0]
    remove_from_index(index_dir, ids=new[:2])
    idx = Index.open(index_dir)
    assert idx.count == 31 and idx.adapted["head_sha256"] == before


def test_rebuild_refits_on_the_live_vectors_and_no_adapt_drops_the_head(adapted, tmp_path):
    index_dir = copy_index(adapted, tmp_path)
    before = Index.open(index_dir).adapted
    remove_from_index(index_dir, ids=[1, 2, 3])
    rep = build_index(index_dir, rebuild=True, adapt=True)
    after = Index.open(index_dir).adapted
    assert rep.adapt["fitted_on"] == after["fitted_on"] == 27 and after["head_sha256"] != before["head_sha256"]
    plain_fp = before["base_fingerprint"]
    build_index(index_dir, rebuild=True, adapt=False)
    idx = Index.open(index_dir)
    assert idx.adapted is None and idx.dim == 256 and idx.fingerprint == plain_fp
    assert not (index_dir / adapting.ADAPTER_DIR).exists()
    with pytest.raises(IndexError_, match="--rebuild"):  # dropping a head without a rebuild is refused
        build_index(copy_index(adapted, tmp_path / "again"), adapt=False)


def test_foreign_encoder_and_altered_head_are_refused(adapted, tmp_path):
    idx = Index.open(adapted["base"] / "idx")
    base_encoder = create_encoder(str(adapted["base"] / "ckpt"))  # the building encoder, without the head
    with pytest.raises(EncoderMismatchError):
        idx.search([adapted["base"] / "gallery" / "class0" / "img0.jpg"], encoder=base_encoder)
    index_dir = copy_index(adapted, tmp_path)
    header = json.loads((index_dir / "header.json").read_text())
    header["adapt"]["head_sha256"] = "sha256:" + "0" * 64
    (index_dir / "header.json").write_text(json.dumps(header))
    with pytest.raises(IndexFormatError, match="head"):
        Index.open(index_dir)


def test_default_skips_small_galleries_and_encoders_with_a_head(adapted, tmp_path):
    rep = build_index(tmp_path / "auto", Source(images=adapted["base"] / "gallery"), str(adapted["base"] / "ckpt"),
                      embed=QUIET)
    assert "skipped" in rep.adapt and str(adapting.MIN_GALLERY) in rep.adapt["skipped"]
    assert Index.open(tmp_path / "auto").adapted is None
    with_head = create_encoder(str(adapted["base"] / "ckpt"))
    with_head.set_whitening(torch.zeros(256), torch.eye(256, 16))
    save_checkpoint(with_head, tmp_path / "ckpt_head")
    rep = build_index(tmp_path / "headed", Source(images=adapted["base"] / "gallery"), str(tmp_path / "ckpt_head"),
                      embed=QUIET, adapt=True)
    assert "not adapted twice" in rep.adapt["skipped"] and Index.open(tmp_path / "headed").dim == 16


def test_plain_view_scores_the_stored_vectors(adapted):
    from engine.metrics import retrieval_metrics
    from indexer.evaluate import compare_plain

    res = compare_plain(adapted["base"] / "idx")
    idx = Index.open(adapted["base"] / "idx")
    labels = np.asarray(idx.labels(), dtype=object)
    for key, vecs in (("index", idx.vectors()), ("other", idx.stored_vectors())):
        ref = retrieval_metrics(vecs, labels).summary  # independent of the index's own search
        assert res[key]["summary"]["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    with pytest.raises(IndexError_, match="not adapted"):
        compare_plain(_plain_index(adapted))


def _plain_index(adapted) -> Path:
    out = adapted["base"] / "plain_idx"
    if not (out / "header.json").is_file():
        build_index(out, Source(images=adapted["base"] / "gallery"), str(adapted["base"] / "ckpt"), embed=QUIET,
                    adapt=False)
    return out


def test_fit_on_a_sample_projects_every_vector():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean, proj, info = adapting.fit_head(x, adapting.AdaptSettings(dim=8, k=5, sample=100, pca_dim=16))
    assert info["fitted_on"] == 100 and info["of"] == 400 and proj.shape == (32, 8)
    y = adapting.Projector(mean, proj)(x)
    assert y.shape == (400, 8)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    # the same seed gives the same head
    _, proj2, _ = adapting.fit_head(x, adapting.AdaptSettings(dim=8, k=5, sample=100, pca_dim=16))
    _, _, auto = adapting.fit_head(x, adapting.AdaptSettings(dim=8, k=5, sample=100))
    assert auto["pca_dim"] == 100 // adapting.PCA_PER
    np.testing.assert_array_equal(proj, proj2)


def test_dba_cache_follows_a_refit(adapted, tmp_path):
    from indexer.refine import dba_vectors

    index_dir = copy_index(adapted, tmp_path)
    first = dba_vectors(Index.open(index_dir), 2)
    remove_from_index(index_dir, ids=[5])
    build_index(index_dir, rebuild=True, adapt=True)
    idx = Index.open(index_dir)
    second = dba_vectors(idx, 2)
    assert second.shape == (29, idx.dim) and len(first) == 30
    from engine.rerank import augment_database
    from indexer.exact import ExactSearcher

    v = idx.vectors()
    scores, rows = ExactSearcher().search(v, v, 2)
    np.testing.assert_allclose(second, augment_database(v, rows, scores, 3.0), atol=1e-5)


def test_cli_builds_adapts_compares_and_reports(adapted, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    base = adapted["base"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "ppssl", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=repo)
    out = run("index", "build", "--checkpoint", str(base / "ckpt"), "--images", str(base / "gallery"), "--out",
              str(tmp_path / "idx"), "--adapt", "--workers", "0")
    assert out.returncode == 0, out.stderr
    dim = 30 // adapting.PCA_PER
    assert f"adapted: retrieval head 256 -> {dim} dims fitted on 30 of 30 vectors" in out.stdout
    info = json.loads(run("index", "info", "--index", str(tmp_path / "idx"), "--json").stdout)
    assert info["adapted"]["dim"] == dim and info["dim"] == dim
    cmp = run("index", "eval", "--index", str(tmp_path / "idx"), "--compare", "plain")
    assert cmp.returncode == 0, cmp.stderr
    assert "adapted" in cmp.stdout and "plain" in cmp.stdout and "mAP" in cmp.stdout
    plain = run("index", "build", "--checkpoint", str(base / "ckpt"), "--images", str(base / "gallery"), "--out",
                str(tmp_path / "plain"), "--no-adapt", "--workers", "0")
    assert plain.returncode == 0 and "adapted" not in plain.stdout
    bad = run("index", "eval", "--index", str(tmp_path / "plain"), "--compare", "plain")
    assert bad.returncode == 2 and "not adapted" in bad.stderr and "Traceback" not in bad.stderr
