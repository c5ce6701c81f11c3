"""The HTTP API (``ppssl api``), started for real on a free port and spoken to over HTTP: search equals
``ppssl search --json``, batch equals single, by-id equals the upload, token rules, every hostile input's status,
a client that disconnects, paging, result controls, and searches running while another client writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from test_ui_apptest import build_tiny_index, make_gallery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "ppssl", "api", "--index", str(index), "--port",
                                      str(self.port), *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        end = time.time() + 120
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ppssl api exited: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("ppssl api did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = build_tiny_index(tmp_path_factory.mktemp("api"))
    (t["base"] / "token").write_text(TOKEN)
    return t


@pytest.fixture(scope="module")
def server(tiny):
    s = Server(tiny["index"], "--token-file", str(tiny["base"] / "token"), "--allow-root", str(tiny["base"]))
    yield s
    s.stop()


def _upload(path: Path):
    return {"image": (path.name, path.read_bytes(), "image/png")}


def _hits(body) -> list:
    return [((h["id"], h["path"]), h["score"]) for h in body["results"]]


def test_search_equals_the_cli_and_carries_scores_and_fingerprint(server, tiny):
    from ranking import assert_same_hits

    make_gallery(tiny["base"] / "queries", classes=2, per_class=2, seed=11)  # photos not in the gallery
    for q in sorted((tiny["base"] / "queries").rglob("*.png")):
        r = httpx.post(server.url + "/v1/search", files=_upload(q), params={"k": 5}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["excluded"] == []
        cli = subprocess.run([sys.executable, "-m", "ppssl", "search", "--index", str(tiny["index"]), str(q), "-k",
                              "5", "--json"], capture_output=True, text=True, cwd=REPO, check=True)
        want = [((h["id"], h["path"]), h["score"]) for h in json.loads(cli.stdout)[0]["results"]]
        assert_same_hits([_hits(body)], [want], tol=1e-4)  # both re-rank with alpha-QE (top 1) by default
    from indexer import Index

    assert body["index"]["fingerprint"] == Index.open(tiny["index"]).fingerprint
    assert all(-1.0 <= h["score"] <= 1.0001 for h in body["results"])


def test_batch_equals_single_and_by_id_equals_the_upload(server, tiny):
    from ranking import assert_same_hits

    paths = [tiny["gallery"] / f"class_{c}" / "img_0.png" for c in range(3)]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
    batch = httpx.post(server.url + "/v1/search/batch", files=files, params={"k": 4}, timeout=60).json()
    for p, res in zip(paths, batch["results"]):
        single = httpx.post(server.url + "/v1/search", files=_upload(p), params={"k": 4}, timeout=60).json()
        assert_same_hits([_hits(res)], [_hits(single)], tol=1e-4)
        item_id = single["excluded"][0]  # the upload is a gallery file: that item is left out
        by_id = httpx.post(server.url + f"/v1/search/by-id/{item_id}", params={"k": 4}, timeout=60).json()
        assert_same_hits([_hits(by_id)], [_hits(single)], tol=1e-4)
        item = httpx.get(server.url + f"/v1/items/{item_id}").json()
        assert item["path"] == p.relative_to(tiny["gallery"]).as_posix()
        img = httpx.get(server.url + f"/v1/items/{item_id}/image")
        assert img.status_code == 200 and img.content == p.read_bytes()


def test_paging_min_score_and_collapse(server, tiny):
    q = tiny["gallery"] / "class_2" / "img_1.png"
    full = httpx.post(server.url + "/v1/search", files=_upload(q), params={"k": 12, "refine": "none"}).json()
    page = httpx.post(server.url + "/v1/search", files=_upload(q),
                      params={"k": 12, "refine": "none", "limit": 5}).json()
    assert page["results"] == full["results"][:5] and page["total"] == 12
    nxt = httpx.get(server.url + f"/v1/pages/{page['page_token']}", params={"offset": 5, "limit": 5}).json()
    assert nxt["results"] == full["results"][5:10]
    cut = full["results"][4]["score"]
    above = httpx.post(server.url + "/v1/search", files=_upload(q),
                       params={"k": 12, "refine": "none", "min_score": cut}).json()
    assert [h["id"] for h in above["results"]] == [h["id"] for h in full["results"] if h["score"] >= cut]
    assert above["dropped"]["below_min_score"] == 12 - len(above["results"])
    # collapse against an independent brute force over the stored vectors
    from indexer import Index

    idx = Index.open(tiny["index"])
    thr = 0.9
    col = httpx.post(server.url + "/v1/search", files=_upload(q),
                     params={"k": 12, "refine": "none", "collapse": True, "collapse_cosine": thr}).json()
    ranked = [h["id"] for h in httpx.post(server.url + "/v1/search", files=_upload(q),
                                          params={"k": 23, "refine": "none"}).json()["results"]]
    kept = []
    for i in ranked:
        v = idx.vectors([i])[0]
        if all(float(v @ idx.vectors([j])[0]) < thr for j in kept):
            kept.append(i)
    assert [h["id"] for h in col["results"]] == kept[:12]


def test_writes_need_the_token_and_go_through_the_index(tiny, tmp_path):
    import shutil

    base = tmp_path / "w"
    shutil.copytree(tiny["base"], base, ignore=shutil.ignore_patterns("eval"))
    from indexer import Index

    s = Server(base / "index", "--token-file", str(base / "token"))
    try:
        new = tmp_path / "new.png"
        make_gallery(tmp_path / "g", classes=1, per_class=1, seed=9)
        shutil.copy(tmp_path / "g" / "class_0" / "img_0.png", new)
        assert httpx.post(s.url + "/v1/items", files=_upload(new)).status_code == 401
        assert httpx.post(s.url + "/v1/items", files=_upload(new),
                          headers={"Authorization": "Bearer wrong"}).status_code == 403
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(s.url + "/v1/items", files=_upload(new), data={"label": "class_9"}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        added = r.json()
        assert added["added"] == 1 and added["label"] == "class_9" and added["index"]["count"] == 25
        assert Index.open(base / "index").count == 25
        hits = httpx.post(s.url + "/v1/search/by-id/1", params={"k": 30}).json()
        assert added["id"] in [h["id"] for h in hits["results"]]  # searches see the new item at once
        assert httpx.delete(s.url + f"/v1/items/{added['id']}").status_code == 401
        assert httpx.delete(s.url + f"/v1/items/{added['id']}", headers=auth).json()["removed"] == 1
        assert httpx.delete(s.url + f"/v1/items/{added['id']}", headers=auth).status_code == 404
        assert Index.open(base / "index").count == 24
        assert httpx.get(s.url + "/v1/items/1/image").status_code == 403  # no --allow-root
        assert httpx.post(s.url + "/v1/items", files=_upload(new), data={"label": "../x"},
                          headers=auth).status_code == 400
    finally:
        s.stop()


def test_every_hostile_input_gets_a_status_never_a_500(server, tiny, tmp_path):
    from benchmarks.reliability.hostile import make_hostile_corpus

    corpus = make_hostile_corpus(tmp_path / "hostile")
    seen = {}
    for name, exp in corpus.cases.items():
        path = corpus.root / name
        if exp.kind != "file" or not path.is_file():
            continue
        data = path.read_bytes()
        for endpoint in ("/v1/search", "/v1/search/batch"):
            field = "image" if endpoint == "/v1/search" else "images"
            r = httpx.post(server.url + endpoint, files={field: (name, data, "application/octet-stream")}, timeout=60)
            assert r.status_code < 500, (name, endpoint, r.status_code, r.text)
            assert "error" in r.json() or r.status_code == 200
            if exp.verdict == "accept":
                assert r.status_code == 200, (name, r.text)
            else:
                assert r.status_code in (400, 413, 415), (name, r.status_code, r.text)
            seen[name] = r.status_code
        if exp.verdict == "reject":  # the write endpoint refuses it before anything is stored or indexed
            r = httpx.post(server.url + "/v1/items", files={"image": (name, data, "application/octet-stream")},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            assert r.status_code in (400, 413, 415), (name, r.status_code, r.text)
    assert len(seen) >= 20
    assert httpx.get(server.url + "/v1/index").json()["count"] == 24  # nothing was added
    big = b"\xff\xd8" + b"0" * (21 * 2**20)
    assert httpx.post(server.url + "/v1/search", files={"image": ("big.jpg", big, "image/jpeg")}).status_code == 413
    q = tiny["gallery"] / "class_0" / "img_0.png"
    for k in (0, 10**9, -1):
        r = httpx.post(server.url + "/v1/search", files=_upload(q), params={"k": k})
        assert r.status_code == 422 and "error" in r.json()
    assert httpx.post(server.url + "/v1/search", files=_upload(q), params={"refine": "nope"}).status_code == 422
    assert httpx.get(server.url + "/v1/items/99999").status_code == 404
    assert httpx.post(server.url + "/v1/search/by-id/99999").status_code == 404
    assert httpx.get(server.url + "/v1/pages/nope").status_code == 404
    assert httpx.post(server.url + "/v1/search").status_code == 422  # no image
    assert httpx.get(server.url + "/docs").status_code == 200 and httpx.get(server.url + "/openapi.json").json()


def test_a_client_that_disconnects_mid_upload_leaves_the_server_serving(server, tiny):
    head = (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 100000\r\n\r\n--zz\r\nContent-Disposition: form-data; name=\"image\"; "
            b"filename=\"a.png\"\r\n\r\n" + b"\x89PNG" + b"0" * 500)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head)
    time.sleep(0.5)
    q = tiny["gallery"] / "class_0" / "img_0.png"
    assert httpx.post(server.url + "/v1/search", files=_upload(q), timeout=60).status_code == 200
    assert httpx.get(server.url + "/healthz").json()["ok"]


def test_concurrent_searches_are_batched_and_see_whole_commits_while_another_client_writes(tiny, tmp_path):
    import shutil

    base = tmp_path / "w"
    shutil.copytree(tiny["base"], base, ignore=shutil.ignore_patterns("eval"))
    make_gallery(tmp_path / "more", classes=1, per_class=6, seed=3)
    s = Server(base / "index", "--token-file", str(base / "token"), "--max-wait-ms", "20")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    errors, counts = [], []
    stop = threading.Event()

    def searcher(i):
        q = base / "gallery" / f"class_{i % 4}" / "img_3.png"
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(s.url + "/v1/search", files=_upload(q), params={"k": 30, "refine": "none"})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                body = r.json()
                counts.append(body["index"]["count"])
                ids = [h["id"] for h in body["results"]]
                if len(ids) != len(set(ids)) or len(ids) != min(30, body["index"]["count"] - len(body["excluded"])):
                    errors.append(f"half a commit? {len(ids)} hits of {body['index']['count']}")
    try:
        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        added = []
        with httpx.Client(timeout=120) as c:
            for p in sorted((tmp_path / "more" / "class_0").iterdir()):
                r = c.post(s.url + "/v1/items", files=_upload(p), data={"label": "class_new"}, headers=auth)
                assert r.status_code == 200, r.text
                added.append(r.json()["id"])
            for i in added[:3]:
                assert c.delete(s.url + f"/v1/items/{i}", headers=auth).status_code == 200
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        info = httpx.get(s.url + "/v1/index").json()
        assert not errors, errors[:3]
        assert info["count"] == 24 + 6 - 3 and len(set(added)) == 6
        assert set(counts) <= set(range(24, 31))
        assert info["batching"]["batches"] < info["batching"]["items"]  # requests shared forward passes
    finally:
        stop.set()
        s.stop()


def test_an_int8_index_is_served_at_int8(tmp_path):
    """`ppssl api` on an int8 index says so and embeds uploads with the index's own int8 model: a gallery photo
    uploaded scores its stored vector at cosine 1 (an fp32 query would land ~1e-4 away), as `ppssl search` does."""
    pytest.importorskip("onnxruntime")
    from engine.checkpoint import save_checkpoint
    from indexer import EmbedOptions, Index, Source, build_index
    from test_ort import _tiny

    make_gallery(tmp_path / "gallery", classes=3, per_class=6)
    save_checkpoint(_tiny(0), tmp_path / "ckpt")
    build_index(tmp_path / "idx", Source(images=tmp_path / "gallery"), str(tmp_path / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None), precision="int8")
    idx = Index.open(tmp_path / "idx")
    rec = idx.records()[4]
    photo = idx.resolve(rec["path"])
    stored = idx.vectors([rec["id"]])[0]
    s = Server(tmp_path / "idx")
    try:
        info = httpx.get(s.url + "/v1/index", timeout=30).json()
        assert info["precision"] == "int8" and info["fingerprint"] == idx.fingerprint
        body = httpx.post(s.url + "/v1/search", files=_upload(photo), params={"k": 3, "refine": "none"},
                          timeout=60).json()
    finally:
        s.stop()
    assert body["excluded"] == [rec["id"]]  # the upload is that gallery photo
    others = idx.vectors([h["id"] for h in body["results"]])
    np.testing.assert_allclose([h["score"] for h in body["results"]], others @ stored, atol=2e-5)


def test_a_features_only_service_answers_stored_vector_queries(tmp_path):
    """``SearchService(features_only=True)`` serves an index of precomputed vectors (no rebuildable encoder):
    feature queries give the index's own hits, and an upload is refused with a one-line error."""
    from api.service import Query, SearchService
    from engine.errors import PPSSLError
    from indexer import Index
    from indexer.build import add_vectors, create_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    create_index(tmp_path / "v", dim=8, fingerprint="sha256:test|vectors")
    add_vectors(tmp_path / "v", x, [f"{i}.jpg" for i in range(40)])
    service = SearchService(tmp_path / "v", max_wait_ms=0.0, features_only=True)
    try:
        got = service.search(Query(x=None, feature=x[3], k=5))["hits"]
        want = Index.open(tmp_path / "v").search(x[3:4], k=5)[0]
        assert [h.id for h in got] == [h.id for h in want]
        with pytest.raises(PPSSLError, match="feature"):
            service.preprocess(b"not an image", 10_000)
    finally:
        service.close()
