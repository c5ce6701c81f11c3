"""AIS teachers: open_clip models built from a config, the teacher-dir round trip, ``teacher fit``, corpora."""

from __future__ import annotations

import pytest
import torch

from training.ais import BUILTIN_CORPORA, builtin_corpus_path, read_corpus, resolve_corpus, teacher_view
from training.teacher import TeacherError, load_teacher, save_teacher_dir

from tiny_clip import TINY_CLIP  # noqa: E402


@pytest.fixture()
def tiny_clip():
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**TINY_CLIP).eval()


def test_teacher_dir_round_trip(tiny_clip, tmp_path):
    import open_clip

    save_teacher_dir(tiny_clip, TINY_CLIP, tmp_path / "t", image_size=32, info={"k": 1})
    t = load_teacher(str(tmp_path / "t"))
    assert (t.image_size, t.embed_dim) == (32, 32)
    assert all(not p.requires_grad for p in t.model.parameters())
    x = torch.randn(3, 3, 32, 32)
    emb = t.encode_image(x)
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny_clip.encode_image(x), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)  # the same weights came back
    txt = t.encode_text(["a photo of a bird", "a photo of a fish"])
    tok = open_clip.SimpleTokenizer(context_length=24)
    with torch.no_grad():
        ref_t = torch.nn.functional.normalize(tiny_clip.encode_text(tok(["a photo of a bird", "a photo of a fish"])), dim=-1)
    assert torch.allclose(txt, ref_t, atol=1e-5)
    # open_clip itself reads the directory as a local-dir model
    m = open_clip.create_model(f"local-dir:{tmp_path / 't'}")
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in tiny_clip.parameters())


def test_tampered_teacher_refused(tiny_clip, tmp_path):
    from safetensors.torch import load_file, save_file

    save_teacher_dir(tiny_clip, TINY_CLIP, tmp_path / "t", image_size=32)
    w = tmp_path / "t" / "open_clip_model.safetensors"
    state = load_file(str(w))
    state["logit_scale"] = state["logit_scale"] + 1
    save_file(state, str(w))
    with pytest.raises(TeacherError, match="hash"):
        load_teacher(str(tmp_path / "t"))


def test_teacher_spec_errors(tmp_path):
    with pytest.raises(TeacherError, match="unknown open_clip model"):
        load_teacher("NoSuchModel-B-99")
    with pytest.raises(TeacherError, match="could not load weights"):
        load_teacher("ViT-B-32:no_such_tag")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TeacherError, match="not a teacher directory"):
        load_teacher(str(tmp_path / "plain"))


def test_teacher_view_renormalises_and_resizes():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    img = torch.rand(2, 3, 16, 16)
    x = (img - 0.5) / 0.25
    tv = teacher_view(x, mean, std, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 16)
    assert torch.allclose(tv, img, atol=1e-6)
    assert teacher_view(x, mean, std, (0.0,) * 3, (1.0,) * 3, 8).shape == (2, 3, 8, 8)


def test_builtin_corpora_have_eight_descriptions():
    for name in BUILTIN_CORPORA:
        lines = read_corpus(builtin_corpus_path(name))
        assert len(lines) == 8 and len(set(lines)) == 8, name
    birds, src = resolve_corpus("cub200")
    assert src == "builtin:birds" and "feathers" in birds[0]


def test_corpus_file_errors(tmp_path):
    from training.ais import CorpusError

    with pytest.raises(CorpusError):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("# comment\nonly one\n")
    with pytest.raises(CorpusError):
        read_corpus(tmp_path / "one.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CorpusError):
        read_corpus(tmp_path / "bin.txt")
    with pytest.raises(CorpusError):
        resolve_corpus("folder")


def test_zero_shot_maps_corpus_lines_to_families(tmp_path):
    """With an oracle model (image -> its family's text direction) the zero-shot accuracy must be 1."""
    from engine.synth import generate_world
    from training.teacher_fit import SYNTHETIC_CORPUS_FAMILIES, zero_shot

    world = tmp_path / "w"
    generate_world(world, classes=2, per_class=2, size=16, coarse_per_family=5, progress=False)
    from engine.datasets import build_dataset

    ds = build_dataset("cub200", world / "coarse", split="test")
    fam = [c.split(".", 1)[-1].lower() for c in ds.classes]
    corpus = read_corpus(builtin_corpus_path("synthetic"))

    class Oracle(torch.nn.Module):
        calls = 0

        def encode_image(self, images):
            labels = [SYNTHETIC_CORPUS_FAMILIES.index(fam[y]) for _, y in ds.samples]
            return torch.eye(8)[labels]

        def encode_text(self, tokens):
            return torch.eye(8)

    res = zero_shot(Oracle(), lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), corpus,
                    world / "coarse", 16)
    assert res["accuracy"] == 1.0 and res["images"] == len(ds)
    assert set(res["per_family"]) == set(fam)


def test_teacher_fit_small(tmp_path):
    from engine.synth import generate_world
    from training.teacher_fit import TeacherFitConfig, fit_teacher

    world = tmp_path / "w"
    generate_world(world, classes=3, per_class=4, size=32, coarse_per_family=4, progress=False)
    cfg = TeacherFitConfig(data=str(world), out=str(tmp_path / "teacher"), image_size=32, patch_size=8,
                           vision_width=64, vision_layers=1, text_width=64, text_layers=1, context_length=24,
                           embed_dim=32, epochs=2, batch_size=8, progress=False)
    summary = fit_teacher(cfg)
    assert summary["steps"] > 0
    # the reported zero-shot accuracy against open_clip's own model and preprocessing of the saved teacher
    import open_clip

    from engine.datasets import build_dataset
    from training.teacher_fit import SYNTHETIC_CORPUS_FAMILIES

    ident = f"local-dir:{cfg.out}"
    model, _, preprocess = open_clip.create_model_and_transforms(ident)
    model.eval()
    ds = build_dataset("cub200", str(world / "coarse"), split="test")
    corpus = read_corpus(builtin_corpus_path("synthetic"))
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(ds[i][0])
                                                                            for i in range(len(ds))])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer(ident)(corpus)), dim=-1)
    pred = (img @ txt.t()).argmax(1).tolist()
    truth = [ds.classes[y].split(".", 1)[-1].lower() for _, y in ds.samples]
    ref = sum(SYNTHETIC_CORPUS_FAMILIES[p] == f for p, f in zip(pred, truth)) / len(truth)
    assert summary["zero_shot"]["images"] == len(truth)
    assert summary["zero_shot"]["accuracy"] == pytest.approx(ref, abs=1 / len(truth) + 1e-9)  # one near-tie
    t = load_teacher(cfg.out)
    assert t.image_size == 32 and t.encode_text(["a photo of a small bird"]).shape == (1, 32)
    with pytest.raises(Exception):
        fit_teacher(TeacherFitConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "x")))
