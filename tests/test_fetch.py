"""``ppssl data fetch`` offline: a local HTTP server on 127.0.0.1 serves small archives made here, good and
hostile; downloads resume with Range requests, checksums are enforced, nothing escapes the destination."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.datasets.fetch import DatasetSource, FetchError, Remote, fetch_dataset


class _Files(BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) with Range support; records each request."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        name = self.path.lstrip("/")
        self.server.log.append((name, self.headers.get("Range")))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    httpd.files, httpd.log = {}, []
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _tgz(members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None) -> bytes:
    """A .tar.gz of regular files, plus links {name: (target, type)} (tarfile.SYMTYPE / LNKTYPE)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _catalogue(server, archive: bytes, extra: bytes = b"labels") -> dict:
    server.files.update({"set.tgz": archive, "labels.mat": extra})
    return {"toy": DatasetSource(
        files=(Remote(f"{server.url}/set.tgz", "set.tgz", _md5(archive), unpack_into="toy"),
               Remote(f"{server.url}/labels.mat", "labels.mat", _md5(extra), unpack_into=None, move_to="toy")),
        reader="folder", root="toy", about="a toy")}


def test_fetch_verifies_unpacks_and_is_idempotent(server, tmp_path):
    archive = _tgz({"images/a/1.jpg": b"x" * 100, "images/b/2.jpg": b"y" * 50})
    cat = _catalogue(server, archive)
    root = fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False)
    assert root == (tmp_path / "out" / "toy").resolve()
    assert (root / "images" / "a" / "1.jpg").read_bytes() == b"x" * 100
    assert (root / "labels.mat").read_bytes() == b"labels"
    assert (tmp_path / "out" / "set.tgz").is_file() and not list((tmp_path / "out").glob("*.part"))
    n = len(server.log)
    assert fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False) == root
    assert len(server.log) == n  # done before: nothing fetched again


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    import os

    archive = _tgz({"images/a/1.jpg": os.urandom(100_000)})  # incompressible: the archive is ~100 kB
    cat = _catalogue(server, archive)
    out = tmp_path / "out"
    out.mkdir()
    (out / "set.tgz.part").write_bytes(archive[:1000])  # what a killed download left
    fetch_dataset("toy", out, catalogue=cat, progress=False)
    assert ("set.tgz", "bytes=1000-") in server.log
    assert (out / "set.tgz").read_bytes() == archive


def test_checksum_mismatch_is_refused_and_nothing_is_unpacked(server, tmp_path):
    archive = _tgz({"images/a/1.jpg": b"x"})
    cat = _catalogue(server, archive)
    server.files["set.tgz"] = _tgz({"images/a/1.jpg": b"tampered"})
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False)
    assert not (tmp_path / "out" / "toy").exists() and not list((tmp_path / "out").glob("set.tgz*"))


@pytest.mark.parametrize("members,links,why", [
    ({"/etc/evil": b"x"}, None, "absolute path"),
    ({"images/../../evil": b"x"}, None, "'..'"),
    ({"ok.jpg": b"x"}, {"images/link": ("/etc/passwd", tarfile.SYMTYPE)}, "outside the destination"),
    ({"ok.jpg": b"x"}, {"images/up": ("../../../etc", tarfile.SYMTYPE)}, "outside the destination"),
    ({"ok.jpg": b"x"}, {"images/hard": ("../../outside", tarfile.LNKTYPE)}, "outside the destination"),
])
def test_hostile_archives_are_refused_before_anything_is_written(server, tmp_path, members, links, why):
    cat = _catalogue(server, _tgz(members, links))
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(FetchError, match="refusing to unpack member") as exc:
        fetch_dataset("toy", out, catalogue=cat, progress=False)
    assert why in str(exc.value)
    assert not (out / "toy").exists() or not any((out / "toy").iterdir())
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a" / "evil").exists()


def test_hostile_zip_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.txt", b"x")
    data = buf.getvalue()
    server.files["set.zip"] = data
    cat = {"toy": DatasetSource(files=(Remote(f"{server.url}/set.zip", "set.zip", _md5(data)),),
                                reader="folder", root=".", about="")}
    with pytest.raises(FetchError, match="'..'"):
        fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_no_network_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cat = {"toy": DatasetSource(files=(Remote(f"http://127.0.0.1:{port}/x.tgz", "x.tgz", "0" * 32),),
                                reader="folder", root=".", about="")}
    with pytest.raises(FetchError, match="cannot reach 127.0.0.1") as exc:
        fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False)
    assert "\n" not in str(exc.value) and "by hand" in str(exc.value)


def test_a_file_placed_by_hand_is_verified_and_used(tmp_path):
    archive = _tgz({"images/a/1.jpg": b"x"})
    cat = {"toy": DatasetSource(files=(Remote("http://127.0.0.1:9/set.tgz", "set.tgz", _md5(archive),
                                              unpack_into="toy"),), reader="folder", root="toy", about="")}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "set.tgz").write_bytes(archive)
    assert (fetch_dataset("toy", tmp_path / "out", catalogue=cat, progress=False) / "images/a/1.jpg").is_file()


def test_cli_lists_and_explains_what_cannot_be_fetched(capsys):
    from ppssl.cli import main

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "cub200" in out and "flowers102" in out and "aircraft" in out
    assert main(["data", "fetch", "cars", "--out", "/nonexistent-unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no longer serves" in err[0]
    assert main(["data", "fetch", "nope", "--out", "/nonexistent-unused"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_the_catalogue_points_at_official_https_addresses_with_md5s():
    from engine.datasets import list_datasets
    from engine.datasets.fetch import CATALOGUE

    for name, src in CATALOGUE.items():
        assert src.reader in list_datasets()
        for r in src.files:
            assert r.url.startswith("https://") and len(r.md5) == 32 and int(r.md5, 16) >= 0
            assert Path(r.filename).name == r.filename
