"""Untrusted files: pickle payloads planted in checkpoints, weights, teachers, resume states and index
directories are refused without being executed; an index whose header, manifest, vectors and FAISS file
disagree is refused with a clear error (or, for a FAISS file that merely lags or leads its manifest after a
crash, rebuilt from the stored vectors so that no foreign vector is ever served)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reliability.hostile import pickle_payload

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a planted payload would create; every test asserts it never appears."""
    m = tmp_path / "PAYLOAD-RAN"
    yield m
    assert not m.exists(), "a pickle payload was executed"


def torch_pickle(marker: Path) -> bytes:
    """A torch.save-style zip whose data.pkl runs the payload when unpickled by a permissive loader."""
    import io

    buf = io.BytesIO()

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Evil()}, buf)
    return buf.getvalue()


def _one_line(capsys, rc: int, prefix: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


# --- checkpoints, weights, teachers, resume states -------------------------------------------------------

@pytest.mark.parametrize("payload", ["raw-pickle", "torch-zip"])
def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path, encoder_ckpt, marker, payload, capsys):
    from engine.checkpoint import CheckpointError, load_checkpoint
    from engine.encoder import create_encoder
    from ppssl.cli import main

    evil = tmp_path / "evil_ckpt"
    shutil.copytree(encoder_ckpt, evil)
    data = pickle_payload(marker) if payload == "raw-pickle" else torch_pickle(marker)
    (evil / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        create_encoder(str(evil))
    rc = main(["index", "build", "--checkpoint", str(evil), "--images", str(tmp_path), "--out",
               str(tmp_path / "idx"), "--workers", "0"])
    _one_line(capsys, rc, "ppssl index: error: ")
    assert not (tmp_path / "idx" / "header.json").exists()


def test_pickle_files_beside_a_valid_checkpoint_are_never_read(tmp_path, encoder_ckpt, marker):
    from engine.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(encoder_ckpt, ckpt)
    for name in ("pytorch_model.bin", "model.pt", "optimizer.pt", "config.pkl"):
        (ckpt / name).write_bytes(torch_pickle(marker))
    assert load_checkpoint(ckpt).fingerprint == json.loads((ckpt / "config.json").read_text())["fingerprint"]


def test_backbone_weights_file_with_a_pickle_payload_is_refused(tmp_path, marker):
    from engine.backbones import WeightsError
    from engine.encoder import create_encoder

    for name, data in (("evil.pt", torch_pickle(marker)), ("evil.pth", pickle_payload(marker))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=name):
            create_encoder("tinycnn", weights=str(tmp_path / name))


def test_teacher_weights_with_a_pickle_payload_are_refused(tmp_path, marker):
    pytest.importorskip("open_clip")
    from training.teacher import TeacherError, load_teacher

    (tmp_path / "evil.pt").write_bytes(torch_pickle(marker))
    with pytest.raises(TeacherError):
        load_teacher(f"RN50:{tmp_path / 'evil.pt'}")


def test_resume_state_with_a_pickle_payload_is_refused(tmp_path, marker):
    from training.state import ResumeError, load_state, save_state

    state = tmp_path / "resume"
    save_state(state, {"x": torch.zeros(2)}, {"epoch": 1})
    (state / "state.safetensors").write_bytes(torch_pickle(marker))
    with pytest.raises(ResumeError):
        load_state(state)


# --- index directories ---------------------------------------------------------------------------------

@pytest.fixture
def index_copy(tmp_path, clean_index) -> Path:
    d = tmp_path / "index"
    shutil.copytree(clean_index["index"], d)
    return d


@pytest.mark.parametrize("victim", ["index.faiss", "header.json", "manifest.sqlite", "vectors.f32"])
def test_index_file_replaced_by_a_pickle_is_refused(index_copy, marker, victim, capsys):
    from indexer import Index
    from indexer.errors import IndexFormatError
    from ppssl.cli import main

    (index_copy / victim).write_bytes(pickle_payload(marker))
    for extra in ("manifest.sqlite-wal", "manifest.sqlite-shm"):
        (index_copy / extra).unlink(missing_ok=True)
    with pytest.raises(IndexFormatError):
        Index.open(index_copy)
    line = _one_line(capsys, main(["index", "info", "--index", str(index_copy)]), "ppssl index: error: ")
    assert victim in line or str(index_copy) in line, line


def _edit_header(d: Path, **changes) -> None:
    h = json.loads((d / "header.json").read_text())
    for key, value in changes.items():
        target = h
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    (d / "header.json").write_text(json.dumps(h))


def _sql(d: Path, *statements: str) -> None:
    con = sqlite3.connect(d / "manifest.sqlite")
    with con:
        for s in statements:
            con.execute(s)
    con.close()


DISAGREEMENTS = {
    # header vs FAISS / vectors / itself
    "header dim 128": (lambda d, o: _edit_header(d, dim=128), "dimension"),
    "header dim 0": (lambda d, o: _edit_header(d, dim=0), "dim"),
    "header dim not a number": (lambda d, o: _edit_header(d, dim="many"), "dim"),
    "header metric L2": (lambda d, o: _edit_header(d, metric="l2"), "metric"),
    "header newer format": (lambda d, o: _edit_header(d, format_version=99), "newer"),
    "header of another format": (lambda d, o: _edit_header(d, format="something-else"), "header"),
    "header without encoder": (lambda d, o: _edit_header(d, encoder=None), "encoder"),
    # FAISS file of another dimension
    "faiss of dim 32": (lambda d, o: faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(32)),
                                                       str(d / "index.faiss")), "dimension"),
    "faiss with L2 metric": (lambda d, o: faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatL2(o)),
                                                            str(d / "index.faiss")), "metric"),
    "faiss truncated": (lambda d, o: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]),
                        "FAISS"),
    # manifest vs vectors
    "vectors truncated": (lambda d, o: (d / "vectors.f32").write_bytes((d / "vectors.f32").read_bytes()[:-8]),
                          "truncated"),
    "manifest commits more rows": (lambda d, o: _sql(d, "UPDATE meta SET value='999' WHERE key='vec_rows'"),
                                   "truncated"),
    "record points past the vectors": (lambda d, o: _sql(d, "UPDATE records SET vec_row=5000 WHERE id=1"),
                                       "vector"),
    "record with a negative row": (lambda d, o: _sql(d, "UPDATE records SET vec_row=-3 WHERE id=2"), "vector"),
    "manifest without records table": (lambda d, o: _sql(d, "DROP TABLE records"), "manifest"),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_index_whose_parts_disagree_is_refused_with_a_clear_error(index_copy, case, capsys):
    from indexer import Index
    from ppssl.cli import main

    dim = json.loads((index_copy / "header.json").read_text())["dim"]
    tamper, words = DISAGREEMENTS[case]
    tamper(index_copy, dim)
    rc = main(["index", "info", "--index", str(index_copy)])
    line = _one_line(capsys, rc, "ppssl index: error: ")
    assert words.lower() in line.lower(), line
    from engine.errors import PPSSLError

    with pytest.raises(PPSSLError):
        Index.open(index_copy)


def test_fingerprint_disagreement_is_refused_naming_both(index_copy, clean_index, capsys):
    from indexer import Index
    from indexer.errors import EncoderMismatchError
    from ppssl.cli import main

    _edit_header(index_copy, encoder__fingerprint="sha256:" + "0" * 64 + "|pooling=gap|input=64")
    idx = Index.open(index_copy)  # vectors are still searchable by vector
    with pytest.raises(EncoderMismatchError):
        idx.load_encoder()
    query = next(clean_index["gallery"].rglob("*.png"))
    line = _one_line(capsys, main(["search", "--index", str(index_copy), "--device", "cpu", str(query)]),
                     "ppssl search: error: ")
    assert "sha256:" + "0" * 64 in line and line.count("sha256:") >= 2, line


@pytest.mark.parametrize("case", ["foreign faiss, same dim", "faiss lagging (rows removed)", "empty faiss"])
def test_faiss_file_that_disagrees_in_count_is_never_served(index_copy, case):
    """A FAISS file holding other ids (another index of the same dimension, or one a killed writer left
    behind) is rebuilt from the stored vectors: searches return exactly the manifest's records."""
    from indexer import Index

    idx = Index.open(index_copy)
    ids, vecs = idx.ids(), idx.vectors()
    rng = np.random.default_rng(0)
    if case == "foreign faiss, same dim":
        other = faiss.IndexIDMap2(faiss.IndexFlatIP(idx.dim))
        junk = rng.standard_normal((40, idx.dim)).astype(np.float32)
        other.add_with_ids(junk / np.linalg.norm(junk, axis=1, keepdims=True), np.arange(1000, 1040))
    elif case == "faiss lagging (rows removed)":
        other = faiss.read_index(str(index_copy / "index.faiss"))
        other.remove_ids(np.asarray(ids[:5], dtype=np.int64))
    else:
        other = faiss.IndexIDMap2(faiss.IndexFlatIP(idx.dim))
    faiss.write_index(other, str(index_copy / "index.faiss"))
    reopened = Index.open(index_copy)
    assert reopened.repaired
    hits = reopened.search(vecs, k=len(ids))
    for q, row in enumerate(hits):
        assert sorted(h.id for h in row) == sorted(ids.tolist())
        np.testing.assert_allclose([h.score for h in row], np.sort(vecs @ vecs[q])[::-1], atol=1e-4)
