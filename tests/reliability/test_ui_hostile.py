"""The UI under hostile input: every corpus file uploaded to the Search page (a message or results, the app
keeps working), manifests pointing outside the gallery root (never served), Build-page paths outside
``--allow-root`` (refused)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from reliability.conftest import REPO

pytest.importorskip("streamlit")
APP = REPO / "ui" / "app.py"


def _app(monkeypatch, index_dir: Path, allow_root: Path | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PPSSL_UI_INDEX", str(index_dir))
    monkeypatch.setenv("PPSSL_UI_ALLOW_ROOTS", str(allow_root) if allow_root else "")
    monkeypatch.delenv("PPSSL_UI_MAX_UPLOAD_MB", raising=False)
    monkeypatch.delenv("PPSSL_UI_MAX_PIXELS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _results(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def test_every_hostile_upload_gives_a_message_or_results_and_the_app_keeps_working(monkeypatch, clean_index,
                                                                                   hostile):
    at = _app(monkeypatch, clean_index["index"])
    failures = []
    names = hostile.names(kinds=("file",))
    from ui.uploads import UPLOAD_TYPES

    for name in names:
        # Streamlit itself refuses other suffixes (.heic, .avif, .tif) before the app sees them: send those
        # bytes under an accepted suffix, as a renamed file would arrive.
        sent = name if name.lower().endswith(tuple("." + t for t in UPLOAD_TYPES)) else name + ".jpg"
        at.file_uploader(key="search_upload").set_value((sent, (hostile.root / name).read_bytes(),
                                                         "application/octet-stream"))
        at.run()
        errors = [e.value for e in at.error]
        if at.exception:
            failures.append(f"{name!r}: exception {at.exception}")
        elif hostile[name].verdict == "reject":
            if len(errors) != 1 or sent not in errors[0] or _results(at):
                failures.append(f"{name!r}: errors {errors}, {len(_results(at))} results")
        elif errors or len(_results(at)) != 10:
            failures.append(f"{name!r} (valid): errors {errors}, {len(_results(at))} results")
    assert not failures, "\n".join(failures)
    # still working: a clean gallery photo gives results and clears the last message
    photo = next(clean_index["gallery"].rglob("*.png"))
    at.file_uploader(key="search_upload").set_value((photo.name, photo.read_bytes(), "image/png"))
    at.run()
    assert not at.exception and not at.error and len(_results(at)) == 10
    assert not hostile.payload_marker.exists()
    assert len(names) >= 35


def _tamper_manifest(index_dir: Path, new_paths: dict[int, str]) -> None:
    con = sqlite3.connect(index_dir / "manifest.sqlite")
    with con:
        for rid, path in new_paths.items():
            con.execute("UPDATE records SET path=? WHERE id=?", (path, rid))
    con.close()


def test_manifest_paths_outside_the_gallery_root_are_never_served(tmp_path, monkeypatch, clean_index):
    """Rows rewritten to ``../``, an absolute path and a symlink leaving the root: searches still work, but
    none of those files is ever opened by the UI (nor by ``Index.resolve``)."""
    from PIL import Image

    from indexer import Index
    from indexer.errors import PathOutsideRootError

    base = tmp_path / "copy"
    shutil.copytree(clean_index["base"], base, symlinks=True)
    index_dir, gallery = base / "index", base / "gallery"
    header = index_dir / "header.json"
    header.write_text(header.read_text().replace(str(clean_index["base"]), str(base)))
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (30, 30), (255, 0, 0)).save(secret / "private.png")
    os.symlink(secret / "private.png", gallery / "class0" / "link.png")
    ids = [int(i) for i in Index.open(index_dir).ids()]
    evil = {ids[0]: "../../secret/private.png", ids[1]: str(secret / "private.png"), ids[2]: "class0/link.png",
            ids[3]: "class0/../../../secret/private.png"}
    _tamper_manifest(index_dir, evil)
    idx = Index.open(index_dir)
    for path in evil.values():
        with pytest.raises(PathOutsideRootError):
            idx.resolve(path)
    opened: list[str] = []
    import engine.imageio

    real_open = engine.imageio.open_image

    def spy(source, *a, **kw):
        if isinstance(source, (str, os.PathLike)):
            opened.append(os.path.realpath(source))
        return real_open(source, *a, **kw)

    monkeypatch.setattr(engine.imageio, "open_image", spy)
    at = _app(monkeypatch, index_dir)
    # a query identical to a tampered row's vector: the top hits are the tampered rows
    at.radio(key="search_source").set_value("Pick from the gallery").run()
    for rid in ids:
        at.selectbox(key="search_pick").set_value(rid).run()
        at.button(key="search_pick_go").click().run()
        assert not at.exception, at.exception
        for hit_id in evil:
            if f"open_{hit_id}" in [b.key for b in at.button]:
                at.button(key=f"open_{hit_id}").click().run()
                assert not at.exception, at.exception
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, at.exception
    assert opened, "the spy saw no gallery image being opened"
    leaked = [p for p in opened if not p.startswith(os.path.realpath(gallery) + os.sep)]
    assert not leaked, f"files outside the gallery root were opened: {leaked}"


def test_build_page_refuses_every_path_outside_the_allowed_root(tmp_path, monkeypatch, clean_index):
    allowed = tmp_path / "allowed"
    shutil.copytree(clean_index["gallery"], allowed / "photos")
    outside = tmp_path / "outside"
    shutil.copytree(clean_index["gallery"], outside / "photos")
    os.symlink(outside / "photos", allowed / "sneaky")
    shutil.copytree(clean_index["ckpt"], allowed / "ckpt")
    shutil.copytree(clean_index["ckpt"], outside / "ckpt")
    ckpt = str(allowed / "ckpt")
    at = _app(monkeypatch, clean_index["index"], allow_root=allowed)
    at.switch_page("views/build.py").run()
    at.radio(key="build_mode").set_value("Create a new index").run()
    at.checkbox(key="build_new_same_encoder").set_value(False).run()
    cases = [  # (folder, checkpoint, out): each has exactly one path leaving the allowed root
        (str(outside / "photos"), ckpt, "new1"),
        ("../outside/photos", ckpt, "new2"),
        ("sneaky", ckpt, "new3"),
        ("photos/\x00", ckpt, "new4"),
        ("photos", str(outside / "ckpt"), "new5"),
        ("photos", "../outside/ckpt", "new6"),
        ("photos", ckpt, str(outside / "new7")),
        ("photos", ckpt, "../outside/new8"),
        ("photos", ckpt, "sneaky/new9"),
    ]
    for folder, ckpt_text, out in cases:
        at.text_input(key="build_new_folder").set_value(folder)
        at.text_input(key="build_new_ckpt").set_value(ckpt_text)
        at.text_input(key="build_new_out").set_value(out)
        at.button(key="build_new_go").click().run()
        assert not at.exception, at.exception
        assert at.error, (folder, ckpt_text, out)
    created = [p for p in list(allowed.rglob("header.json")) + list(outside.rglob("header.json"))]
    assert not created, created
    # and a legitimate build under the root works
    at.text_input(key="build_new_folder").set_value("photos")
    at.text_input(key="build_new_ckpt").set_value(ckpt)
    at.text_input(key="build_new_out").set_value("good")
    at.button(key="build_new_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (allowed / "good" / "header.json").is_file()
