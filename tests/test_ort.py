"""The ONNX Runtime inference path (engine/ort.py): same neighbours as PyTorch, stale/foreign exports refused
and rebuilt, failures fall back to PyTorch cleanly."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from engine.embed import embed_batch  # noqa: E402
from engine.encoder import create_encoder  # noqa: E402
from engine import ort  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ranking import assert_same_hits  # noqa: E402
from test_indexer import make_gallery  # noqa: E402


def _tiny(seed: int, pooling: str = "attention"):
    torch.manual_seed(seed)
    enc = create_encoder("tinycnn", pooling=pooling).eval()
    with torch.no_grad():  # a non-trivial attention head
        for p in enc.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc


def test_ort_index_has_the_neighbours_of_the_pytorch_index(tmp_path, monkeypatch):
    from engine.checkpoint import save_checkpoint
    from indexer import EmbedOptions, Index, Source, build_index

    make_gallery(tmp_path / "gallery", classes=4, per_class=6)
    save_checkpoint(_tiny(0), tmp_path / "ckpt")
    monkeypatch.setenv(ort.ENV, "onnxruntime")  # required: a failure would raise, not fall back silently
    build_index(tmp_path / "ort", Source(images=tmp_path / "gallery"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    monkeypatch.setenv(ort.ENV, "torch")
    build_index(tmp_path / "pt", Source(images=tmp_path / "gallery"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    a, b = Index.open(tmp_path / "ort"), Index.open(tmp_path / "pt")
    assert [r["path"] for r in a.records()] == [r["path"] for r in b.records()]
    np.testing.assert_allclose(a.vectors(), b.vectors(), rtol=0, atol=1e-5)
    q = b.vectors()[:6]
    hits = lambda idx: [[(h.id, h.score) for h in hs] for hs in idx.search(q, k=5)]  # noqa: E731
    assert_same_hits(hits(a), hits(b))
    assert list((tmp_path / "ckpt" / "onnx").glob("*.onnx"))  # cached beside the checkpoint


def test_stale_foreign_or_altered_exports_are_refused_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PPSSL_HOME", str(tmp_path / "home"))
    a, b = _tiny(1), _tiny(2)
    pa = ort.load_or_export(a)
    pb = ort.load_or_export(b)
    assert pa != pb and pa.parent == pb.parent == tmp_path / "home" / "onnx"
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        want_b = b(x).numpy()
    # foreign: b's export file replaced by a's (with a's record): refused by the record's key
    pb.write_bytes(pa.read_bytes())
    pb.with_suffix(".json").write_text(pa.with_suffix(".json").read_text())
    assert ort.load_or_export(b) == pb
    np.testing.assert_allclose(ort.OrtRunner(pb, 1).run(x), want_b, atol=1e-5)
    # altered: the file changed after its record was written (checksum mismatch)
    meta = json.loads(pb.with_suffix(".json").read_text())
    pb.write_bytes(pa.read_bytes())
    assert json.loads(pb.with_suffix(".json").read_text()) == meta
    ort.load_or_export(b)
    np.testing.assert_allclose(ort.OrtRunner(pb, 1).run(x), want_b, atol=1e-5)
    # stale: the weights changed in place -> another key, another export, and the runner is prepared again
    first = ort.runner_for(b, x)
    with torch.no_grad():
        b.head.proj.weight.mul_(0.5) if hasattr(b.head, "proj") else next(b.head.parameters()).mul_(0.5)
    second = ort.runner_for(b, x)
    assert second is not None and second is not first
    with torch.inference_mode():
        np.testing.assert_allclose(second.run(x), b(x).numpy(), atol=1e-5)


def test_a_failing_export_falls_back_to_pytorch_with_the_reason_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PPSSL_HOME", str(tmp_path / "home"))
    enc = _tiny(3)

    def broken(*a, **k):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(ort, "export_onnx", broken)
    x = torch.randn(4, 3, 96, 96)
    with caplog.at_level(logging.WARNING, logger="engine.ort"):
        got = embed_batch(enc, x)
        again = embed_batch(enc, x)  # decided once: no second attempt, no second warning
    with torch.inference_mode():
        want = enc(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got, again)
    warned = [r for r in caplog.records if "PyTorch instead of ONNX Runtime" in r.getMessage()]
    assert len(warned) == 1 and "exporter exploded" in warned[0].getMessage()
    with pytest.raises(ort.OrtError, match="exporter exploded"):
        embed_batch(enc, x, backend="onnxruntime")


def test_an_export_that_disagrees_with_pytorch_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("PPSSL_HOME", str(tmp_path / "home"))
    enc = _tiny(4)
    monkeypatch.setattr(ort.OrtRunner, "run", lambda self, x: np.ones((len(x), enc.feature_dim), np.float32))
    x = torch.randn(4, 3, 96, 96)
    assert ort.runner_for(enc, x) is None
    with torch.inference_mode():
        np.testing.assert_allclose(embed_batch(enc, x), enc(x).numpy(), atol=1e-6)
    assert "min cosine" in ort.fallback_reason(enc)


def test_backend_option_is_scoped_to_its_command(tmp_path, monkeypatch):
    """`--backend torch` embeds with PyTorch (no export is made) and leaves no trace on the process: the next
    call is back to the environment's choice (it used to be written into os.environ)."""
    import os

    from engine.checkpoint import save_checkpoint
    from ppssl.cli import main

    monkeypatch.delenv(ort.ENV, raising=False)
    make_gallery(tmp_path / "gallery", classes=2, per_class=3)
    save_checkpoint(_tiny(0), tmp_path / "ckpt")
    seen = []
    real = ort.backend_choice
    monkeypatch.setattr(ort, "backend_choice", lambda requested=None: seen.append(real(requested)) or seen[-1])
    assert main(["index", "build", "--checkpoint", str(tmp_path / "ckpt"), "--images", str(tmp_path / "gallery"),
                 "--out", str(tmp_path / "idx"), "--backend", "torch", "--workers", "0", "--no-adapt"]) == 0
    assert seen and set(seen) == {"torch"}
    assert not list((tmp_path / "ckpt" / "onnx").glob("*.onnx"))
    assert ort.ENV not in os.environ and real() == "auto"
    with ort.inference_backend("torch"):
        assert real() == "torch" and real("onnxruntime") == "onnxruntime"  # a call's own choice wins
    assert real() == "auto"
    with pytest.raises(ort.OrtError):
        with ort.inference_backend("tensorrt"):
            pass
