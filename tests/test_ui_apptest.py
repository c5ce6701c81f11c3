"""Streamlit AppTest of every page of the search app, on a tiny tinycnn index built with the indexer API.

The app runs in-process (``streamlit.testing.v1.AppTest``): uploads go through the real
``st.file_uploader`` path, pages are switched with ``switch_page``. Numbers shown on the pages are
checked against independent numpy computations on the index's stored vectors.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ranking import assert_same_hits, metric_bounds

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "ui" / "app.py"
CLASSES = 4
PER_CLASS = 6


def make_gallery(folder: Path, classes: int = CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Class folders of small images whose colour and stripe frequency depend on the class."""
    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (150, 60, 200), (20, 200, 200)]
    yy, xx = np.mgrid[0:100, 0:120]
    for c in range(classes):
        d = folder / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = np.zeros((100, 120, 3), np.float32) + np.array(colours[c % len(colours)]) * 0.6
            a += 40 * np.sin(xx / (4 + c * 3) + i)[..., None] + 30 * np.cos(yy / (3 + c))[..., None]
            a += rng.normal(0, 15, a.shape)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"img_{i}.png")
    return folder


def build_tiny_index(base: Path) -> dict:
    """gallery/ (class folders), ckpt/ (a seeded tinycnn checkpoint) and index/ under ``base``."""
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    make_gallery(base / "gallery")
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), base / "ckpt")
    build_index(base / "index", Source(images=base / "gallery"), str(base / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda done, total: None))
    return {"base": base, "gallery": base / "gallery", "ckpt": base / "ckpt", "index": base / "index"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    return build_tiny_index(tmp_path_factory.mktemp("ui_tiny"))


@pytest.fixture
def app(tiny, monkeypatch):
    """An AppTest of ui/app.py serving the tiny index; building allowed under the tiny base folder."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PPSSL_UI_INDEX", str(tiny["index"]))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tiny["base"]))
    monkeypatch.delenv("PPSSL_UI_MAX_UPLOAD_MB", raising=False)
    monkeypatch.delenv("PPSSL_UI_MAX_PIXELS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _brute_force(index_dir: Path, query: np.ndarray, exclude: set[int]) -> list[tuple[int, float]]:
    """``(id, score)`` by decreasing score: compare with :func:`ranking.assert_same_hits` (near-ties swap)."""
    from indexer import Index

    idx = Index.open(index_dir)
    ids = [r["id"] for r in idx.records()]
    sims = idx.vectors(ids) @ query
    order = [(ids[i], float(sims[i])) for i in np.argsort(-sims, kind="stable")]
    return [(i, s) for i, s in order if i not in exclude]


def _result_captions(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def _upload(at, name: str, data: bytes, mime: str = "image/png"):
    at.file_uploader(key="search_upload").set_value((name, data, mime))
    at.run()
    assert not at.exception, at.exception
    return at


# --- Search --------------------------------------------------------------------------------------

def test_search_upload_shows_topk_matching_brute_force(app, tiny):
    from ui import state

    path = tiny["gallery"] / "class_1" / "img_2.png"
    _upload(app, "query.png", _png_bytes(path))
    q = app.session_state[state.KEY_QUERY]
    # The upload is byte-identical to a gallery file: its label is known and its record left out.
    assert q["label"] == "class_1" and len(q["exclude"]) == 1
    assert "left out of the results" in q["note"]
    hits = q["hits"]
    assert len(hits) == 10
    # The default re-ranking, alpha query expansion over the best one (qe's default k, rerank_val.md): the
    # expanded query against brute force.
    from engine.rerank import alpha_qe
    from indexer import Index

    plain = _brute_force(tiny["index"], q["feature"], set(q["exclude"]))
    top = plain[:1]
    nb = Index.open(tiny["index"]).vectors([i for i, _ in top])
    q2 = alpha_qe(q["feature"][None], nb[None], np.array([[s for _, s in top]]), 3.0)[0]
    assert q["refine"] == "qe"
    assert_same_hits([[(h.id, h.score) for h in hits]], [_brute_force(tiny["index"], q2, set(q["exclude"]))[:10]])
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    captions = _result_captions(app)
    assert len(captions) == 10
    # No re-ranking: plain brute force (re-searched with the stored feature).
    app.selectbox(key="search_refine").set_value("none").run()
    assert not app.exception, app.exception
    q = app.session_state[state.KEY_QUERY]
    hits = q["hits"]
    assert_same_hits([[(h.id, h.score) for h in hits]], [plain[:10]])
    captions = _result_captions(app)
    assert len(captions) == 10
    assert all(("same class" in c) == (h.label == "class_1") for c, h in zip(captions, hits))
    assert any("same class" in c for c in captions)
    assert app.metric[0].label.startswith("Query latency") and app.metric[0].value.endswith(" ms")
    assert len(app.image) == 11  # the query + 10 results
    # The stored feature equals an independent embedding of the same photo.
    from engine.checkpoint import load_checkpoint
    from engine.imageio import open_image
    from ui.query import embed_image

    ref = embed_image(load_checkpoint(tiny["ckpt"]).eval(), open_image(path))
    np.testing.assert_allclose(q["feature"], ref, atol=1e-5)


def test_k_slider_and_reruns_never_reembed(app, tiny, monkeypatch):
    import indexer.sources
    import ui.query

    _upload(app, "q.png", _png_bytes(tiny["gallery"] / "class_0" / "img_0.png"))
    calls = {"embed": 0}
    real = ui.query.embed_image

    def counting(*a, **kw):
        calls["embed"] += 1
        return real(*a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("the gallery was re-embedded on a rerun")

    monkeypatch.setattr(ui.query, "embed_image", counting)
    monkeypatch.setattr(indexer.sources, "embed_items", forbidden)
    app.number_input(key="search_k").set_value(3).run()
    assert not app.exception, app.exception
    assert len(_result_captions(app)) == 3
    app.run()
    app.switch_page("views/evaluate.py").run()
    app.switch_page("views/search.py").run()
    assert not app.exception, app.exception
    assert len(_result_captions(app)) == 3
    assert calls["embed"] == 0


def test_search_pick_from_gallery_and_open_result(app, tiny):
    from ui import state

    app.radio(key="search_source").set_value("Pick from the gallery").run()
    pick = app.selectbox(key="search_pick")
    target = pick.options[7]
    pick.select_index(7).run()
    app.button(key="search_pick_go").click().run()
    assert not app.exception, app.exception
    q = app.session_state[state.KEY_QUERY]
    picked = q["exclude"][0]
    assert str(picked) in target and picked not in [h.id for h in q["hits"]]
    assert q["label"] is not None and q["embed_ms"] == 0.0
    first = q["hits"][0]
    app.button(key=f"open_{first.id}").click().run()
    assert not app.exception, app.exception
    assert any(s.value.startswith("Result #1") for s in app.subheader)
    assert any(m.value == "**Its own nearest neighbours**" for m in app.markdown)
    assert len(app.image) == 1 + len(q["hits"]) + 1 + 6  # query, grid, large view, 6 neighbours


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge image, with a tiny IDAT: refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _truncated_png(tiny) -> bytes:
    data = (tiny["gallery"] / "class_2" / "img_1.png").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("case, message", [
    ("empty", "is empty"),
    ("text", "not an image"),
    ("truncated", "could not be decoded"),
    ("bomb", "too large to decode safely"),
    ("oversize", "the limit is 1 MiB"),
])
def test_bad_uploads_show_a_message_and_the_app_keeps_working(app, tiny, monkeypatch, case, message):
    from ui import state

    monkeypatch.setenv("PPSSL_UI_MAX_UPLOAD_MB", "1")
    payload = {
        "empty": b"",
        "text": b"this is not a photo\n" * 10,
        "truncated": _truncated_png(tiny),
        "bomb": _png_bomb(),
        "oversize": np.random.default_rng(0).bytes(1_600_000),
    }[case]
    _upload(app, f"bad_{case}.jpg", payload, "image/jpeg")
    assert [e.value for e in app.error] and message in app.error[0].value, [e.value for e in app.error]
    assert state.KEY_QUERY not in app.session_state or app.session_state[state.KEY_QUERY] is None
    assert not _result_captions(app)
    # A good upload afterwards works and clears the message.
    _upload(app, "good.png", _png_bytes(tiny["gallery"] / "class_3" / "img_4.png"))
    assert not app.error
    assert len(_result_captions(app)) == 10


def test_unusual_but_valid_uploads_are_accepted(app, tiny):
    src = Image.open(tiny["gallery"] / "class_2" / "img_3.png")
    frames = [src, src.transpose(Image.FLIP_LEFT_RIGHT)]
    cases = {}
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    cases["anim.gif"] = buf.getvalue()
    buf = io.BytesIO()
    src.convert("L").save(buf, "PNG")
    cases["grey.png"] = buf.getvalue()
    buf = io.BytesIO()
    src.convert("CMYK").save(buf, "JPEG")
    cases["cmyk.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    src.save(buf, "WEBP")
    cases["photo.webp"] = buf.getvalue()
    for name, size in (("wide.png", (20000, 10)), ("tall.png", (10, 20000))):
        buf = io.BytesIO()
        src.resize(size).save(buf, "PNG")  # Streamlit would draw these 0 px high without a letterbox
        cases[name] = buf.getvalue()
    for name, data in cases.items():
        _upload(app, name, data, "application/octet-stream")
        assert not app.error, (name, [e.value for e in app.error])
        assert len(_result_captions(app)) == 10, name
    app.switch_page("views/attention.py").run()  # the overlays of the last (10 x 20000) query
    assert not app.exception, app.exception
    assert len(app.image) == 18


# --- Attention -----------------------------------------------------------------------------------

def test_attention_page_needs_a_query(app):
    app.switch_page("views/attention.py").run()
    assert not app.exception, app.exception
    assert any("Search first" in i.value for i in app.info)


def test_attention_page_draws_overlays_and_opacity_only_reblends(app, tiny, monkeypatch):
    """Overlays for the query and top-5; the opacity slider re-blends cached maps."""
    import engine.gradcam

    _upload(app, "q.png", _png_bytes(tiny["gallery"] / "class_0" / "img_3.png"))
    app.switch_page("views/attention.py").run()
    assert not app.exception, app.exception
    assert len(app.image) == 3 * (1 + 5)  # image, A overlay, GradCAM overlay for the query and top-5
    assert any(c.value.startswith("GradCAM for the top-5:") for c in app.caption)
    before = [img.value[0] for img in app.image]

    def forbidden(*a, **kw):
        raise AssertionError("GradCAM recomputed for an opacity change")

    with monkeypatch.context() as mp:
        mp.setattr(engine.gradcam, "retrieval_gradcam", forbidden)
        app.slider(key="cam_alpha").set_value(0.9).run()
        assert not app.exception, app.exception
    after = [img.value[0] for img in app.image]
    assert after[0] == before[0]  # the plain crop is unchanged
    assert after[1] != before[1] and after[2] != before[2]  # overlays re-blended
    app.slider(key="cam_n").set_value(2).run()
    assert not app.exception, app.exception
    assert len(app.image) == 3 * (1 + 2)


# --- Evaluate ------------------------------------------------------------------------------------

def test_evaluate_page_shows_the_comparison_index_side_by_side(tiny, tmp_path, monkeypatch):
    """With ``ppssl serve --compare OTHER`` the page shows both indexes over the same images: each column is that
    index's own leave-one-out figure, the difference is theirs."""
    import torch
    from streamlit.testing.v1 import AppTest

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index, evaluate_index

    torch.manual_seed(5)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt2")
    other = tmp_path / "other_index"
    build_index(other, Source(images=tiny["gallery"]), str(tmp_path / "ckpt2"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    monkeypatch.setenv("PPSSL_UI_INDEX", str(tiny["index"]))
    monkeypatch.setenv("PPSSL_UI_COMPARE", str(other))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tiny["base"]))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, at.exception
    assert any(s.value == "index vs other_index" for s in at.subheader)
    assert any("the index given with --compare" in c.value for c in at.caption)
    table = at.dataframe[0].value
    mine, theirs = evaluate_index(tiny["index"]).summary, evaluate_index(other).summary
    for _, row in table.iterrows():
        assert row["index (%)"] == pytest.approx(100 * mine[row["metric"]], abs=0.051)
        assert row["other_index (%)"] == pytest.approx(100 * theirs[row["metric"]], abs=0.051)
        assert row["difference (points)"] == pytest.approx(row["index (%)"] - row["other_index (%)"], abs=0.11)
    assert any("points vs other_index" in (m.delta or "") for m in at.metric)


def test_evaluate_page_matches_independent_leave_one_out(app, tiny):
    from indexer import Index

    app.switch_page("views/evaluate.py").run()
    assert not app.exception, app.exception
    shown = {m.label: m.value for m in app.metric}
    assert set(shown) == {"rank-1", "rank-5", "rank-10", "mAP", "MAP@R"}
    idx = Index.open(tiny["index"])
    recs = idx.records()
    v = idx.vectors([r["id"] for r in recs])
    labels = np.array([r["label"] for r in recs])
    bounds = metric_bounds(v, labels, ks=(1, 5))
    for key in ("rank-1", "rank-5", "mAP"):  # shown to 0.1 %, brute force with near-ties allowed to swap
        lo, hi = bounds[key]
        assert 100 * lo - 0.05 - 1e-9 <= float(shown[key].rstrip(" %")) <= 100 * hi + 0.05 + 1e-9, key
    table = app.dataframe[0].value
    assert len(table) == CLASSES and list(table["mAP"]) == sorted(table["mAP"])  # worst first
    assert app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")  # the rank-k curve
    assert any(s.value == "Most-confused class pairs" for s in app.subheader)


def test_evaluate_page_explains_unlabelled_index(tmp_path, monkeypatch):
    import torch
    from streamlit.testing.v1 import AppTest

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 30, 200 - 40 * i)).save(flat / f"{i}.png")
    torch.manual_seed(1)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    build_index(tmp_path / "index", Source(images=flat), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda d, t: None))
    monkeypatch.setenv("PPSSL_UI_INDEX", str(tmp_path / "index"))
    monkeypatch.delenv("PPSSL_UI_ALLOW_ROOTS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, at.exception
    assert any("no class labels" in i.value for i in at.info)


# --- Build ---------------------------------------------------------------------------------------

def test_build_page_is_disabled_without_allowed_roots(app, monkeypatch):
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", "")
    app.switch_page("views/build.py").run()
    assert not app.exception, app.exception
    assert any("Building is disabled" in i.value for i in app.info)
    assert not app.button


def test_build_page_refuses_paths_outside_the_roots(app, tiny, tmp_path):
    outside = tmp_path / "outside"
    make_gallery(outside, classes=1, per_class=1)
    link = tiny["base"] / "sneaky_link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    app.switch_page("views/build.py").run()
    for typed, msg in [(str(outside), "outside the allowed roots"), ("sneaky_link", "outside the allowed roots"),
                       ("../../../etc", "outside the allowed roots"), ("", "enter a folder"),
                       ("no_such_dir", "does not exist")]:
        app.text_input(key="build_extend_folder").set_value(typed)
        app.button(key="build_extend_go").click().run()
        assert not app.exception, app.exception
        assert app.error and msg in app.error[0].value, (typed, [e.value for e in app.error])


def test_build_page_creates_opens_and_extends(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from indexer import Index
    from ui import state

    t = build_tiny_index(tmp_path)
    monkeypatch.setenv("PPSSL_UI_INDEX", str(t["index"]))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/build.py").run()
    # Create a new index from a sub-folder with the current index's encoder.
    at.radio(key="build_mode").set_value("Create a new index").run()
    at.text_input(key="build_new_folder").set_value(str(t["gallery"] / "class_1"))
    at.text_input(key="build_new_out").set_value("new_index")
    at.button(key="build_new_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.success and "added 6" in at.success[0].value
    assert Index.open(tmp_path / "new_index").count == PER_CLASS
    at.button(key="build_open").click().run()
    assert not at.exception, at.exception
    assert at.session_state[state.KEY_INDEX] == str(tmp_path / "new_index")
    assert any("Upload a photo" in i.value and f"({PER_CLASS} images)" in i.value for i in at.info)
    # Back to the served index and extend it with a new class folder under its gallery root.
    at.session_state[state.KEY_INDEX] = None
    make_gallery(tmp_path / "extra", classes=1, per_class=3, seed=5)
    (tmp_path / "extra" / "class_0").rename(t["gallery"] / "class_new")
    (t["gallery"] / "class_new" / "broken.jpg").write_bytes(b"not a jpeg")
    at.switch_page("views/build.py").run()
    at.radio(key="build_mode").set_value("Extend the current index").run()
    at.text_input(key="build_extend_folder").set_value(str(t["gallery"] / "class_new"))
    at.button(key="build_extend_go").click().run()
    assert not at.exception, at.exception
    assert at.success and "added 3" in at.success[0].value and "skipped 1" in at.success[0].value
    assert at.warning and "skipped" in at.warning[0].value
    # The Search page sees the new version without a restart.
    at.switch_page("views/search.py").run()
    assert any(f"({CLASSES * PER_CLASS + 3} images)" in i.value for i in at.info)


def test_app_without_an_index_says_how_to_start(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("PPSSL_UI_INDEX", raising=False)
    monkeypatch.delenv("PPSSL_UI_ALLOW_ROOTS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.error and "ppssl serve --index" in at.error[0].value


def test_evaluate_page_draws_confused_pairs_with_examples(app, tiny, monkeypatch):
    import ui.state
    from indexer import Index

    recs = Index.open(tiny["index"]).records()
    by_label = {}
    for r in recs:
        by_label.setdefault(r["label"], r["path"])
    a, b, c = sorted(by_label)[:3]
    fake = {"summary": {"rank-1": 0.5, "rank-5": 0.75, "rank-10": 1.0, "mAP": 0.4, "MAP@R": 0.3},
            "rank_curve": [0.5, 0.6, 0.75], "per_class": [{"label": a, "count": 6, "rank-1": 0.5, "mAP": 0.4}],
            "confused_pairs": [[a, b, 3, by_label[a], by_label[b]], [b, c, 1, by_label[b], "missing/file.png"]]}
    monkeypatch.setattr(ui.state, "eval_report", lambda index_dir=None: fake)
    app.switch_page("views/evaluate.py").run()
    assert not app.exception, app.exception
    assert {m.label: m.value for m in app.metric}["rank-1"] == "50.0 %"
    assert any(f"**{a}** → **{b}**" in m.value and "3 queries" in m.value for m in app.markdown)
    assert len(app.image) == 3  # two examples for the first pair, one for the second
    assert app.warning and "missing/file.png" in app.warning[0].value  # a gone file is a placeholder


def test_search_page_served_from_the_qdrant_copy(tiny, tmp_path, monkeypatch):
    """`ppssl serve --qdrant`: the Search page's results come from the collection and equal the local index's
    (same re-ranking), with labels and paths from the collection's payloads."""
    pytest.importorskip("qdrant_client")
    import shutil

    from streamlit.testing.v1 import AppTest

    from indexer import Index
    from indexer.refine import Refine
    from indexer.vectordb import VectorDBIndex, publish
    from ui import state

    index_dir = tmp_path / "index"
    shutil.copytree(tiny["index"], index_dir)
    publish(index_dir, str(tmp_path / "qdrant"))
    monkeypatch.setenv("PPSSL_UI_INDEX", str(index_dir))
    monkeypatch.setenv("PPSSL_UI_QDRANT", str(tmp_path / "qdrant"))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(tiny["base"]))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    assert isinstance(state._open_index(str(index_dir), state.index_stamp(index_dir)), VectorDBIndex)
    _upload(at, "query.png", _png_bytes(tiny["gallery"] / "class_1" / "img_2.png"))
    q = at.session_state[state.KEY_QUERY]
    want = Index.open(index_dir).search(q["feature"][None], k=10, refine=Refine(method="qe"),
                                        exclude=[list(q["exclude"])])[0]
    assert_same_hits([[(h.id, h.score) for h in q["hits"]]], [[(h.id, h.score) for h in want]])
    assert all(h.path and h.label for h in q["hits"]) and q["label"] == "class_1"


def test_result_controls_threshold_collapse_paging_and_search_with_a_result(app, tiny):
    """Scores on every card, a minimum score, near-duplicate collapse, pages of a large k without a new search,
    and 'Search' on a result making it the query (its stored vector; it is left out)."""
    from indexer import Index
    from indexer.controls import ResultControls, apply_controls
    from ui import state

    _upload(app, "q.png", _png_bytes(tiny["gallery"] / "class_1" / "img_1.png"))
    app.selectbox(key="search_refine").set_value("none").run()
    app.number_input(key="search_k").set_value(23).run()
    assert not app.exception, app.exception
    caps = _result_captions(app)
    assert len(caps) == 23 - 0 and all("·" in c for c in caps[:1])  # page 1 of 1 (25 per page)
    query = app.session_state[state.KEY_QUERY]
    scores = [h.score for h in query["hits"]]
    cut = scores[5]
    app.slider(key="search_min_score").set_value(round(cut, 2)).run()
    idx = Index.open(tiny["index"])
    want, _ = apply_controls(idx, query["hits"], ResultControls(min_score=round(cut, 2)))
    assert len(_result_captions(app)) == len(want[:23])
    app.slider(key="search_min_score").set_value(-1.0).run()
    app.checkbox(key="search_collapse").check().run()
    assert not app.exception, app.exception
    fetched = app.session_state[state.KEY_QUERY]["hits"]
    kept, _ = apply_controls(idx, fetched, ResultControls(collapse=True))
    assert len(_result_captions(app)) == min(23, len(kept))
    app.checkbox(key="search_collapse").uncheck().run()
    # search with the third result
    third = app.session_state[state.KEY_QUERY]["hits"][2]
    app.button(key=f"again_{third.id}").click().run()
    assert not app.exception, app.exception
    q2 = app.session_state[state.KEY_QUERY]
    assert q2["exclude"] == (third.id,) and third.id not in [h.id for h in q2["hits"]]
    np.testing.assert_allclose(q2["feature"], idx.vectors([third.id])[0], atol=1e-6)


def _registered_pages() -> list[str]:
    """The page files ui/app.py registers (read from its source: importing it would start Streamlit)."""
    import re

    return re.findall(r'st\.Page\("([^"]+)"', APP.read_text())


@pytest.mark.parametrize("page", _registered_pages())
def test_every_registered_page_renders_without_error(app, page):
    """The page contract: every page in ui/app.py's list opens on a served index with a title and no exception
    (a new page is one file in ui/views plus one line in PAGES, and is covered here by that line)."""
    assert (APP.parent / page).is_file()
    app.run()
    app.switch_page(page).run()
    assert not app.exception, app.exception
    assert app.title, page
