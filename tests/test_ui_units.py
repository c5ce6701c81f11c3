"""Unit tests of the app's plumbing: allowed roots, upload validation, settings, server command, CLI options."""

from __future__ import annotations

import argparse
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ui.paths import PathNotAllowedError, allowed_path
from ui.settings import Settings, load_settings
from ui.uploads import UploadError, read_upload


# --- allowed roots -------------------------------------------------------------------------------

def test_allowed_path_accepts_inside_and_refuses_everything_else(tmp_path):
    root = tmp_path / "root"
    (root / "photos" / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "photos", target_is_directory=True)
    roots = [root.resolve()]

    assert allowed_path(str(root / "photos"), roots) == (root / "photos").resolve()
    assert allowed_path("photos/a", roots) == (root / "photos" / "a").resolve()  # relative to the first root
    assert allowed_path("link_in", roots) == (root / "photos").resolve()
    assert allowed_path("new_dir", roots, must_exist=False) == (root / "new_dir").resolve()
    for bad in [str(outside), "link_out", "../outside", "photos/../../outside", "/etc", "~"]:
        with pytest.raises(PathNotAllowedError, match="outside the allowed roots"):
            allowed_path(bad, roots)
    # A sibling whose name merely starts with the root's name is not inside it.
    (tmp_path / "root2").mkdir()
    with pytest.raises(PathNotAllowedError, match="outside"):
        allowed_path(str(tmp_path / "root2"), roots)
    with pytest.raises(PathNotAllowedError, match="does not exist"):
        allowed_path("missing", roots)
    with pytest.raises(PathNotAllowedError, match="enter a folder"):
        allowed_path("  ", roots, kind="folder")
    with pytest.raises(PathNotAllowedError, match="disabled"):
        allowed_path(str(root / "photos"), [])
    with pytest.raises(PathNotAllowedError, match="invalid"):
        allowed_path("photos\x00", roots)


# --- uploads -------------------------------------------------------------------------------------

def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_read_upload_decodes_and_hashes():
    data = _png(Image.new("RGBA", (40, 30), (10, 200, 30, 128)))
    q = read_upload("a.png", data, max_bytes=10_000, max_pixels=10_000)
    assert q.image.mode == "RGB" and q.image.size == (40, 30)
    import hashlib

    assert q.sha256 == hashlib.sha256(data).hexdigest() and q.nbytes == len(data)


@pytest.mark.parametrize("data, limit_bytes, limit_px, match", [
    (b"", 10_000, 10_000, "is empty"),
    (b"GIF89a" + b"\x00" * 5, 10_000, 10_000, "could not be decoded|not an image"),
    (b"%PDF-1.4 not an image", 10_000, 10_000, "not an image"),
    (_png_header_only(100_000, 100_000), 10_000, 10**8, "too large to decode safely"),
    (_png_header_only(200, 200), 10_000, 100, "too large to decode safely"),
    (b"\x00" * 3_000_000, 2 * 2**20, 10**8, "the limit is 2 MiB"),
])
def test_read_upload_refuses_bad_input_with_a_clear_message(data, limit_bytes, limit_px, match):
    with pytest.raises(UploadError, match=match) as info:
        read_upload("x.jpg", data, max_bytes=limit_bytes, max_pixels=limit_px)
    assert "'x.jpg'" in str(info.value)


def test_read_upload_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    with pytest.raises(UploadError, match="could not be decoded"):
        read_upload("t.jpg", data[: len(data) // 3], max_bytes=10**6, max_pixels=10**6)


# --- settings, server, CLI ------------------------------------------------------------------------

def test_settings_roundtrip_through_the_environment(tmp_path):
    s = Settings(index_dir=tmp_path / "idx", allow_roots=(tmp_path / "a", tmp_path / "b"), max_upload_mb=7,
                 max_pixels=1234)
    back = load_settings(s.to_env())
    assert back == Settings(index_dir=(tmp_path / "idx").resolve(),
                            allow_roots=((tmp_path / "a").resolve(), (tmp_path / "b").resolve()),
                            max_upload_mb=7, max_pixels=1234)
    assert back.max_upload_bytes == 7 * 2**20
    junk = load_settings({"PPSSL_UI_MAX_UPLOAD_MB": "lots", "PPSSL_UI_MAX_PIXELS": "-5"})
    assert junk.index_dir is None and junk.allow_roots == () and junk.max_upload_mb == 20
    assert junk.max_pixels == 40_000_000


def test_server_validates_and_builds_the_streamlit_command(tmp_path):
    from ui.server import APP, ServeError, make_settings, streamlit_command

    with pytest.raises(ServeError, match="not an index directory"):
        make_settings(tmp_path)
    (tmp_path / "header.json").write_text("{}")
    with pytest.raises(ServeError, match="--allow-root"):
        make_settings(tmp_path, allow_roots=[tmp_path / "nope"])
    with pytest.raises(ServeError, match="positive"):
        make_settings(tmp_path, max_upload_mb=0)
    s = make_settings(tmp_path, allow_roots=[tmp_path], max_upload_mb=5)
    cmd = streamlit_command(s, port=8600, host="127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP)
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert opts["--server.maxUploadSize"] == "5" and opts["--server.port"] == "8600"
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.headless"] == "true"  # never prompts
    assert opts["--browser.gatherUsageStats"] == "false"
    env = s.to_env()
    assert env["PPSSL_UI_INDEX"] == str(tmp_path.resolve()) and env["PPSSL_UI_ALLOW_ROOTS"] == str(tmp_path.resolve())


def test_cli_serve_arguments():
    from ui import cli

    parser = argparse.ArgumentParser()
    cli.add_serve_arguments(parser)
    a = parser.parse_args(["--index", "idx", "--allow-root", "/a", "--allow-root", "/b", "--port", "9000",
                           "--max-upload-mb", "3", "--no-browser"])
    assert (a.index, a.allow_root, a.port, a.max_upload_mb, a.no_browser, a.host) == (
        "idx", ["/a", "/b"], 9000, 3, True, "127.0.0.1")
    d = parser.parse_args([])
    assert d.index is None and d.allow_root == [] and d.port == 8501 and not d.no_browser
    for action in parser._actions:
        assert action.help, action.dest


def test_ui_imports_neither_training_nor_ppssl():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ui"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.split(".")[0] in ("training", "ppssl"), f"{path}: imports {name}"


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ui.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(__import__('pathlib').Path(__file__).parents[1])})
    assert out.stdout.strip() == "False"


def test_preview_bounds_size_and_aspect():
    from ui.images import preview

    for size in [(20000, 10), (10, 20000), (3000, 2000), (50, 40)]:
        img = preview(Image.new("RGB", size, (10, 20, 30)), max_side=640, max_aspect=4.0)
        w, h = img.size
        assert max(w, h) <= 640 and max(w, h) <= 4 * min(w, h) + 1 and min(w, h) >= 1, (size, img.size)
    small = Image.new("RGB", (50, 40), (1, 2, 3))
    assert preview(small).size == (50, 40) and small.size == (50, 40)  # the original is untouched


def test_terminating_serve_stops_the_streamlit_child(tmp_path):
    """SIGTERM to the process running ``serve(block=True)`` must not leave the app listening."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from ui.server import wait_until_ready

    (tmp_path / "header.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from ui.server import serve; serve({str(tmp_path)!r}, port={port}, quiet=True)"
    repo = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": repo})
    try:
        wait_until_ready(port, timeout=90, proc=parent)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            except OSError:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the Streamlit child still answers after its parent was terminated")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_serve_on_a_held_port_says_so_in_one_line(tmp_path):
    """A second ``ppssl serve`` on a port in use is refused before Streamlit starts, in one line."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from ui.server import ServeError, serve

    (tmp_path / "header.json").write_text("{}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve(str(tmp_path), port=port, quiet=True)
        repo = Path(__file__).resolve().parents[1]
        out = subprocess.run([sys.executable, "-m", "ppssl", "serve", "--index", str(tmp_path), "--port", str(port),
                              "--no-browser"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already in use" in lines[0], out.stderr
