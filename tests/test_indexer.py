"""Indexer: exact search vs brute force, stable ids (add/remove/add), bad files, fingerprints, paths, types."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.encoder import create_encoder  # noqa: E402
from indexer.build import add_to_index, add_vectors, build_index, create_index, remove_from_index  # noqa: E402
from indexer.errors import EncoderMismatchError, IndexError_, IndexFormatError, PathOutsideRootError  # noqa: E402
from indexer.index import Index  # noqa: E402
from indexer.options import EmbedOptions, Source  # noqa: E402
from indexer.store import LOCK_FILE, REPORT_FILE  # noqa: E402
from ranking import assert_same_hits  # noqa: E402

CLASSES = 3
PER_CLASS = 6


def make_gallery(folder: Path, classes: int = CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> list[Path]:
    """Small PNG/JPEG images, one colour cast per class, in class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        d = folder / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
            arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 120, 0, 255)
            p = d / f"img{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(arr).save(p)
            paths.append(p)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A gallery folder, a tinycnn checkpoint, and a flat index built from them (shared, read-only)."""
    base = tmp_path_factory.mktemp("world")
    make_gallery(base / "gallery")
    torch.manual_seed(0)
    enc = create_encoder("tinycnn")
    save_checkpoint(enc, base / "ckpt")
    rep = build_index(base / "flat", Source(images=base / "gallery"), str(base / "ckpt"),
                      embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    return {"base": base, "gallery": base / "gallery", "ckpt": base / "ckpt", "flat": base / "flat", "report": rep}


def copy_world(world, tmp_path) -> tuple[Path, Path]:
    gallery = tmp_path / "gallery"
    shutil.copytree(world["gallery"], gallery)
    return gallery, world["ckpt"]


def results(idx: Index, queries: np.ndarray, k: int = 10):
    """Per query, ``((path, label), score)``: compare with :func:`ranking.assert_same_hits` (near-ties swap)."""
    return [[((h.path, h.label), h.score) for h in hits] for hits in idx.search(queries, k=k)]


# --- exact search ------------------------------------------------------------------------------------

def test_exact_search_matches_numpy_brute_force(world):
    idx = Index.open(world["flat"])
    assert idx.count == CLASSES * PER_CLASS and idx.index_type == "flat" and not idx.repaired
    ids, vecs = idx.ids(), idx.vectors()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((7, idx.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q = np.concatenate([q, vecs[:3]])
    hits = idx.search(q, k=5)
    sims = q @ vecs.T
    want = [[(int(ids[j]), float(row[j])) for j in np.argsort(-row, kind="stable")[:5]] for row in sims]
    assert_same_hits([[(h.id, h.score) for h in hs] for hs in hits], want)
    # k larger than the gallery returns every item once
    assert len(idx.search(q[:1], k=100)[0]) == idx.count


@pytest.mark.parametrize("case", ["random", "ties", "best_first"])
def test_large_k_scan_equals_brute_force(case, monkeypatch):
    """One query with a large k takes the sampled-threshold path (indexer.exact._scan_one_large_k); it must give
    exactly the brute-force order (score descending, then row), with many tied scores, and when the guess falls
    short (the best rows all in the first block) the usual scan answers."""
    from indexer import exact

    rng = np.random.default_rng(3)
    n, d, k = 10000, 16, 150
    xb = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((1, d)).astype(np.float32)
    if case == "ties":  # integer vectors: a few dozen distinct scores, each shared by hundreds of rows
        xb = rng.integers(-1, 2, (n, d)).astype(np.float32)
        q = np.ones((1, d), np.float32)
    if case == "best_first":
        sc = (xb @ q[0]).astype(np.float64)
        xb = xb[np.argsort(-sc, kind="stable")]  # the k best rows lead: the first block's guess is too high
    calls = []
    real = exact._scan_one_large_k
    monkeypatch.setattr(exact, "_scan_one_large_k", lambda *a: calls.append(r := real(*a)) or r)
    s, rows = exact.exact_search(xb, q, k, threads=1)
    ref = (xb.astype(np.float64) @ q[0].astype(np.float64)).astype(np.float32)
    order = np.lexsort((np.arange(n), -ref))[:k]
    assert calls, "the large-k path was not taken"
    assert (calls[0] is None) == (case == "best_first")
    got = [list(zip(rows[0].tolist(), s[0].tolist()))]
    if case == "ties":  # integer vectors: every score is exact, so the order (score, then row) is too
        np.testing.assert_array_equal(rows[0], order)
    assert_same_hits(got, [list(zip(order.tolist(), ref[order].tolist()))])  # near-ties may swap elsewhere
    many = exact.exact_search(xb, np.concatenate([q, q]), k, threads=1)  # the multi-query path agrees
    assert_same_hits(got, [list(zip(many[1][0].tolist(), many[0][0].tolist()))])


def test_stored_vectors_are_the_encoders_features(world):
    """Vectors in the index equal the engine's own extraction (independent code path)."""
    from engine.checkpoint import load_checkpoint
    from engine.datasets import build_dataset
    from engine.embed import extract_features

    enc = load_checkpoint(world["ckpt"])
    ds = build_dataset("folder", world["gallery"], split="all", transform=enc.transform())
    feats, labels = extract_features(enc, ds, batch_size=8, num_workers=0, device="cpu", progress=False)
    idx = Index.open(world["flat"])
    by_path = {r["path"]: i for i, r in enumerate(idx.records())}
    order = [by_path[Path(p).relative_to(world["gallery"]).as_posix()] for p, _ in ds.samples]
    np.testing.assert_allclose(idx.vectors()[order], feats, atol=1e-5)
    assert [idx.labels()[i] for i in order] == [ds.classes[y] for y in labels]


def test_search_by_image_uses_recorded_encoder(world):
    idx = Index.open(world["flat"])
    q = world["gallery"] / "class2" / "img3.png"
    hits = idx.search([str(q)], k=3)[0]
    assert hits[0].path == "class2/img3.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert idx.resolve(hits[0].path) == q.resolve()
    assert Index.open(world["flat"]).record(hits[0].id)["label"] == "class2"


# --- stable ids ----------------------------------------------------------------------------------------

def test_add_remove_add_equals_fresh_build(world, tmp_path):
    gallery, ckpt = copy_world(world, tmp_path)
    fresh = Index.open(world["flat"])
    q = fresh.vectors()
    expected = results(fresh, q)

    build_index(tmp_path / "idx", Source(images=gallery), str(ckpt),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    before = {r["path"]: r["id"] for r in Index.open(tmp_path / "idx").records()}
    victims = ["class0/img1.png", "class1/img4.jpg", "class2/img0.jpg"]
    assert remove_from_index(tmp_path / "idx", paths=victims[:2]) == 2
    vid = before[victims[2]]
    assert remove_from_index(tmp_path / "idx", ids=[vid, 10**9]) == 1
    idx = Index.open(tmp_path / "idx")
    assert idx.count == fresh.count - 3
    after = {r["path"]: r["id"] for r in idx.records()}
    assert all(before[p] == i for p, i in after.items())  # surviving ids unchanged
    assert not any(h.path in victims for hits in idx.search(q, k=20) for h in hits)

    rep = add_to_index(tmp_path / "idx", [gallery / v for v in victims],
                       embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    assert rep.added == 3 and not rep.skipped
    idx = Index.open(tmp_path / "idx")
    assert_same_hits(results(idx, q), expected)
    readded = {r["path"]: r["id"] for r in idx.records() if r["path"] in victims}
    assert min(readded.values()) > max(before.values())  # new ids; none reused
    assert sorted(r["label"] for r in idx.records() if r["path"] in victims) == ["class0", "class1", "class2"]

    # re-adding files already present (a whole folder) is a no-op
    rep = add_to_index(tmp_path / "idx", [gallery], embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    assert rep.added == 0 and rep.already_present == fresh.count
    assert Index.open(tmp_path / "idx").count == fresh.count


def test_changed_file_is_replaced_and_outside_root_refused(world, tmp_path):
    gallery, ckpt = copy_world(world, tmp_path)
    build_index(tmp_path / "idx", Source(images=gallery), str(ckpt),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    old = {r["path"]: r for r in Index.open(tmp_path / "idx").records()}
    target = gallery / "class0" / "img0.jpg"
    shutil.copy(gallery / "class1" / "img2.jpg", target)
    rep = add_to_index(tmp_path / "idx", [target], embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    assert (rep.added, rep.replaced) == (1, 1)
    new = Index.open(tmp_path / "idx")
    rec = [r for r in new.records() if r["path"] == "class0/img0.jpg"][0]
    assert rec["id"] != old["class0/img0.jpg"]["id"] and rec["sha256"] != old["class0/img0.jpg"]["sha256"]
    assert new.count == len(old)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(gallery / "class1" / "img1.png", outside)
    with pytest.raises(IndexError_, match="outside the gallery root"):
        add_to_index(tmp_path / "idx", [outside])


# --- bad input --------------------------------------------------------------------------------------------

def test_bad_files_are_skipped_and_reported(world, tmp_path):
    gallery, ckpt = copy_world(world, tmp_path)
    good = (gallery / "class1" / "img0.jpg").read_bytes()
    (gallery / "class0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (gallery / "class1" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (gallery / "class2" / "notes.png").write_text("this is text, not a PNG")
    (gallery / "class2" / "empty.jpg").write_bytes(b"")
    (gallery / "README.txt").write_text("a gallery")
    (gallery / "class0" / "link.jpg").symlink_to(world["gallery"] / "class0" / "img0.jpg")  # points outside
    rep = build_index(tmp_path / "idx", Source(images=gallery), str(ckpt),
                      embed=EmbedOptions(batch_size=4, num_workers=0, progress=lambda *_: None))
    bad = {"class0/corrupt.jpg", "class1/truncated.jpg", "class2/notes.png", "class2/empty.jpg", "README.txt"}
    outside = [(p, r) for p, r in rep.skipped if "outside the gallery root" in r]
    assert [Path(p).name for p, _ in outside] == ["link.jpg"]
    rep.skipped = [s for s in rep.skipped if s not in outside]
    assert {p for p, _ in rep.skipped} == bad
    assert all(reason for _, reason in rep.skipped)
    assert rep.added == CLASSES * PER_CLASS
    on_disk = json.loads((tmp_path / "idx" / REPORT_FILE).read_text())
    assert {d["path"] for d in on_disk["skipped"]} == bad | {outside[0][0]}
    assert {d["path"] for d in on_disk["outstanding_skipped"]} == bad
    idx = Index.open(tmp_path / "idx")
    assert idx.count == CLASSES * PER_CLASS and not (set(r["path"] for r in idx.records()) & bad)
    # the same batches without the bad files give the same vectors (one bad file does not spoil a batch)
    ref = Index.open(world["flat"])
    by = {r["path"]: v for r, v in zip(ref.records(), ref.vectors())}
    for r, v in zip(idx.records(), idx.vectors()):
        np.testing.assert_allclose(v, by[r["path"]], atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_in_threads_or_processes_gives_the_same_batches(world, tmp_path, workers):
    """The CPU default (decoders as threads between forward passes) and DataLoader worker processes yield the
    same batches: same order, vectors, hashes and skip reasons, a bad file dropped from its batch only."""
    from indexer.sources import embed_items, scan_folder

    gallery, ckpt = copy_world(world, tmp_path)
    (gallery / "class1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    items = scan_folder(gallery, gallery)
    enc = create_encoder(str(ckpt))
    runs = {mode: list(embed_items(enc, items, batch_size=5, num_workers=workers, device="cpu", decode=mode,
                                   progress=lambda *_: None)) for mode in ("threads", "processes")}
    a, b = runs["threads"], runs["processes"]
    assert len(a) == len(b) == -(-len(items) // 5)
    for x, y in zip(a, b):
        assert x.done == y.done and x.failed == y.failed
        np.testing.assert_allclose(x.vectors, y.vectors, atol=1e-5)
    failed = [items[i].key for e in a for i, _ in e.failed]
    assert failed == ["class1/corrupt.jpg"]
    assert sum(len(e.done) for e in a) == CLASSES * PER_CLASS
    with pytest.raises(ValueError, match="decode"):
        next(embed_items(enc, items, device="cpu", decode="fibers"))


def test_large_jpeg_query_sees_the_galleries_pixels(world, tmp_path):
    """A camera-size JPEG is decoded at reduced scale in the build and in a query by path alike: the query's
    feature is the stored vector."""
    from PIL import Image

    from indexer.sources import embed_images

    gallery = tmp_path / "g" / "big"
    gallery.mkdir(parents=True)
    yy, xx = np.mgrid[0:900, 0:1200].astype(np.float32)
    arr = np.stack([np.sin(xx / 37) * 100 + 128, np.cos(yy / 53) * 100 + 128, (xx + yy) / 2100 * 255], -1)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(gallery / "photo.jpg", quality=90)
    build_index(tmp_path / "idx", Source(images=tmp_path / "g"), str(world["ckpt"]),
                embed=EmbedOptions(num_workers=1, progress=lambda *_: None))
    idx = Index.open(tmp_path / "idx")
    q = embed_images(create_encoder(str(world["ckpt"])), [str(gallery / "photo.jpg")])
    np.testing.assert_allclose(q[0], idx.vectors()[0], atol=1e-5)


def test_stopping_early_releases_the_decoder_threads(world, tmp_path):
    import threading

    from indexer.sources import embed_items, scan_folder

    items = scan_folder(world["gallery"], world["gallery"])
    gen = embed_items(create_encoder(str(world["ckpt"])), items, batch_size=2, num_workers=2, device="cpu",
                      progress=lambda *_: None)
    next(gen)
    assert any(t.name.startswith("ppssl-decode") for t in threading.enumerate())
    gen.close()
    assert not any(t.name.startswith("ppssl-decode") for t in threading.enumerate())


# --- encoder fingerprints -------------------------------------------------------------------------------

def test_foreign_encoder_is_refused_naming_both_fingerprints(world):
    idx = Index.open(world["flat"])
    torch.manual_seed(123)
    other = create_encoder("tinycnn")
    with pytest.raises(EncoderMismatchError) as err:
        idx.search([str(world["gallery"] / "class0" / "img0.jpg")], encoder=other)
    from indexer.encoders import feature_fingerprint

    msg = str(err.value)
    assert idx.fingerprint in msg and feature_fingerprint(other) in msg
    # same weights, different pooling: features differ, so also refused
    same = create_encoder(str(world["ckpt"]), pooling="attention")
    with pytest.raises(EncoderMismatchError, match="pooling=attention"):
        idx.check_encoder(same)
    idx.check_encoder(create_encoder(str(world["ckpt"])))  # the building encoder passes
    with pytest.raises(EncoderMismatchError):
        build_index(world["flat"], Source(images=world["gallery"]), other, embed=EmbedOptions(num_workers=0))


def test_random_init_encoder_cannot_be_rebuilt_but_can_be_passed(world, tmp_path):
    gallery, _ = copy_world(world, tmp_path)
    torch.manual_seed(5)
    enc = create_encoder("tinycnn")
    build_index(tmp_path / "idx", Source(images=gallery), enc,
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    idx = Index.open(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="cannot be rebuilt"):
        idx.load_encoder()
    assert idx.search([str(gallery / "class1" / "img1.png")], k=1, encoder=enc)[0][0].path == "class1/img1.png"


# --- paths ------------------------------------------------------------------------------------------------

def test_resolve_refuses_paths_outside_root(world, tmp_path):
    idx = Index.open(world["flat"])
    assert idx.resolve("class0/img0.jpg") == (world["gallery"] / "class0" / "img0.jpg").resolve()
    assert idx.resolve(str(world["gallery"] / "class0" / "img0.jpg")).is_file()
    for bad in ("../ckpt/config.json", "class0/../../ckpt/config.json", "/etc/passwd", str(world["ckpt"])):
        with pytest.raises(PathOutsideRootError):
            idx.resolve(bad)
    link = world["gallery"] / "escape.jpg"
    try:
        link.symlink_to(world["ckpt"] / "config.json")
        with pytest.raises(PathOutsideRootError):
            idx.resolve("escape.jpg")
    finally:
        link.unlink()


# --- consistency ----------------------------------------------------------------------------------------

def test_lagging_faiss_file_is_repaired_and_foreign_file_refused(world, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(world["flat"], d)
    ref = results(Index.open(d), Index.open(d).vectors())
    # a writer killed after the manifest commit but before index.faiss was rewritten
    stale = faiss.read_index(str(d / "index.faiss"))
    stale.remove_ids(faiss.IDSelectorBatch(np.asarray(Index.open(d).ids()[:4])))
    faiss.write_index(stale, str(d / "index.faiss"))
    idx = Index.open(d)
    assert idx.repaired and idx.count == world["report"].count
    assert_same_hits(results(idx, idx.vectors()), ref)
    (d / "index.faiss").unlink()
    assert Index.open(d).repaired
    assert_same_hits(results(Index.open(d), idx.vectors()), ref)
    # a FAISS file of another dimension is refused, not "repaired"
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(8)), str(d / "index.faiss"))
    with pytest.raises(IndexFormatError, match="dimension"):
        Index.open(d)
    (d / "header.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        Index.open(d)


def test_faiss_file_is_plain_faiss(world):
    index = faiss.read_index(str(world["flat"] / "index.faiss"))
    assert index.ntotal == world["report"].count and index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_writers_serialise_on_the_lock(world, tmp_path):
    from indexer.store import WriterLock

    d = tmp_path / "idx"
    shutil.copytree(world["flat"], d)
    lock = WriterLock(d)
    try:
        fd = os.open(d / LOCK_FILE, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        lock.release()
    assert remove_from_index(d, ids=[int(Index.open(d).ids()[0])]) == 1  # lock free again


# --- index types ------------------------------------------------------------------------------------------

def _clustered(n: int, dim: int, seed: int = 0, centers: int = 20, latent: int = 8) -> np.ndarray:
    """Normalised vectors with a few clusters and low intrinsic dimension, like real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, latent))
    z = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, latent))
    x = z @ rng.standard_normal((latent, dim)) + 0.05 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq", "ivfpq", "hnsw"])
def test_index_types_on_vectors(tmp_path, kind):
    x = _clustered(3000, 64)
    d = tmp_path / kind
    create_index(d, dim=64, fingerprint="test:random", index_type=kind,
                 params={"pq_m": 16} if kind == "ivfpq" else None)
    ids = add_vectors(d, x, [f"v{i}" for i in range(len(x))], [str(i % 7) for i in range(len(x))])
    assert ids == list(range(1, len(x) + 1))
    idx = Index.open(d)
    assert idx.index_type == kind and idx.count == len(x)
    q = x[:200]
    _, found = idx.search_vectors(q, 10)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10] + 1
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    floor = {"flat": 1.0, "ivf": 0.9, "ivfsq": 0.9, "hnsw": 0.9, "ivfpq": 0.5}[kind]
    assert recall >= floor, recall
    if kind == "ivf":
        p = idx.header.params
        assert p["nlist"] == min(round(4 * np.sqrt(len(x))), len(x) // 39) and p["nprobe"] >= 16
    # removal works for every type (HNSW by rebuilding from the stored vectors); ids stay put
    assert remove_from_index(d, ids=list(range(1, 11))) == 10
    idx = Index.open(d)
    assert idx.count == len(x) - 10 and idx.ids().min() == 11 and not idx.repaired
    _, found = idx.search_vectors(q[10:20], 1)
    self_found = np.mean(found[:, 0] == np.arange(11, 21))
    assert self_found >= (0.5 if kind == "ivfpq" else 0.9), self_found
    # re-adding an existing path is a no-op
    assert add_vectors(d, x[10:12], ["v10", "v11"]) == []


@pytest.mark.parametrize("kind", ["ivfsq", "ivfpq"])
def test_rerank_rescores_candidates_exactly(tmp_path, kind):
    """With every cell probed and enough candidates re-ranked, a lossy IVF index returns brute force's top-k
    with brute force's float64 scores; without the re-rank it returns its own approximate scores."""
    x = _clustered(2000, 32, seed=3)
    d = tmp_path / kind
    create_index(d, dim=32, fingerprint="test:random", index_type=kind,
                 params={"nlist": 16, "nprobe": 16, "rerank": 200, **({"pq_m": 8} if kind == "ivfpq" else {})})
    add_vectors(d, x, [f"v{i}" for i in range(len(x))])
    idx = Index.open(d)
    assert idx.header.params["rerank"] == 200
    q = _clustered(50, 32, seed=4)
    scores, found = idx.search_vectors(q, 10)
    exact = q.astype(np.float64) @ x.astype(np.float64).T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    want = [[(int(j) + 1, float(row[j])) for j in t] for row, t in zip(exact, truth)]
    assert_same_hits([list(zip(f.tolist(), s.tolist())) for f, s in zip(found, scores)], want, tol=1e-6)
    idx.params.rerank = 0  # the codes' own scores: close, not exact
    raw, _ = idx.search_vectors(q, 10)
    assert not np.allclose(raw, scores, rtol=0, atol=1e-6)
    # fewer gallery items than k: missing slots are -1, never a wrong id
    small = tmp_path / "small"
    create_index(small, dim=32, fingerprint="test:random", index_type=kind,
                 params={"nlist": 1, "nprobe": 1, **({"pq_m": 8, "pq_nbits": 4} if kind == "ivfpq" else {})})
    add_vectors(small, x[:40], [f"s{i}" for i in range(40)])
    s, i = Index.open(small).search_vectors(q[:3], 50)
    assert (i[:, 40:] == -1).all() and all(set(r[:40]) == set(range(1, 41)) for r in i)


def test_auto_picks_ivfsq_for_large_galleries():
    from indexer.faiss_index import AUTO_FLAT_MAX, IndexParams, resolve_params

    assert resolve_params(IndexParams(index_type="auto"), AUTO_FLAT_MAX, 64).index_type == "flat"
    big = resolve_params(IndexParams(index_type="auto"), AUTO_FLAT_MAX + 1, 64)
    assert big.index_type == "ivfsq" and big.rerank == 4 and big.nprobe >= 16


def test_rebuild_changes_type_without_reembedding(world, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(world["flat"], d)
    ref = Index.open(d)
    with pytest.raises(IndexError_, match="--rebuild"):
        build_index(d, index_type="hnsw")
    build_index(d, index_type="hnsw", rebuild=True)  # no encoder, no images: stored vectors only
    idx = Index.open(d)
    assert idx.index_type == "hnsw" and idx.header.params["hnsw_m"] == 32
    np.testing.assert_array_equal(idx.vectors(), ref.vectors())
    assert_same_hits(results(idx, ref.vectors()), results(ref, ref.vectors()))
    assert faiss.read_index(str(d / "index.faiss")).ntotal == ref.count


def test_gpu_path_is_taken_when_faiss_sees_gpus(world, monkeypatch):
    calls = []

    class Opts:
        shard = False
        useFloat16 = False

    def to_gpus(index, co=None, ngpu=-1):
        calls.append((co.shard, ngpu))
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Opts, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus)
    idx = Index.open(world["flat"])
    assert calls == [(True, 2)]
    assert len(idx.search(idx.vectors()[:2], k=3)[0]) == 3
    Index.open(world["flat"], use_gpu=False)
    assert len(calls) == 1


def test_backbone_spec_with_weights_is_rebuilt_from_the_header(world, tmp_path):
    """A backbone + weights + GAP encoder (like ImageNet lite0) is rebuilt from the header; its unused
    attention head does not enter the fingerprint."""
    from safetensors.torch import save_file

    from indexer.encoders import EncoderSpec, feature_fingerprint

    gallery, _ = copy_world(world, tmp_path)
    torch.manual_seed(3)
    body = create_encoder("tinycnn").backbone.body
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(tmp_path / "w.safetensors"))
    spec = EncoderSpec.parse("tinycnn", str(tmp_path / "w.safetensors"), "gap")
    a, b = spec.create(), spec.create()
    with torch.no_grad():
        b.head.conv.weight.add_(1.0)  # another head: same GAP features, same fingerprint
    assert feature_fingerprint(a) == feature_fingerprint(b)
    b.config.pooling = "attention"  # now the head shapes the features
    assert feature_fingerprint(b).split("|")[0] != feature_fingerprint(a).split("|")[0]
    build_index(tmp_path / "idx", Source(images=gallery), spec,
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    idx = Index.open(tmp_path / "idx")
    assert idx.encoder_ref.startswith("tinycnn:") and idx.header.encoder.spec["pooling"] == "gap"
    assert idx.search([str(gallery / "class1" / "img1.png")], k=1)[0][0].path == "class1/img1.png"
    # the same weights with (random, untrained) attention pooling are neither comparable nor rebuildable
    with pytest.raises(EncoderMismatchError):
        idx.check_encoder(EncoderSpec.parse("tinycnn", str(tmp_path / "w.safetensors"), "attention").create())


def test_resume_and_rebuild_entry_points(world, tmp_path):
    """``resume_index`` finishes from the recorded sources (nothing left: a no-op), ``rebuild_index`` changes the
    type from the stored vectors without re-embedding (same ids and vectors)."""
    from indexer import Index, rebuild_index, resume_index

    d = tmp_path / "idx"
    build_index(d, Source(images=world["gallery"]), str(world["ckpt"]),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    before = Index.open(d)
    rep = resume_index(d, embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    assert rep.added == 0 and rep.already_present == before.count
    rebuild_index(d, "hnsw")
    after = Index.open(d)
    assert after.index_type == "hnsw" and np.array_equal(after.ids(), before.ids())
    np.testing.assert_array_equal(after.vectors(), before.vectors())
