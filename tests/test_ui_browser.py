"""Real-browser test: headless Debian Chromium driven by Playwright against a served app.

Starts the app with ``ui.server.serve`` (what ``ppssl serve`` calls) on a free loopback port over a small
index of cub100 photos, uploads a photo through the file input, and waits for the result images and the
attention/GradCAM overlays to render, then visits Evaluate and Build.

``PPSSL_UPDATE_SCREENSHOTS=1`` also writes ``docs/images/ui_{search,attention,evaluate,build}.png``; it then
indexes 300 cub100 test photos with ImageNet EfficientNet-Lite0 (GAP) so the pictures are meaningful.
``PPSSL_UI_TEST_INDEX=DIR`` serves an existing index instead.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.cub100, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "images"
UPDATE = os.environ.get("PPSSL_UPDATE_SCREENSHOTS") == "1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_subset(cub100: Path, dest: Path, classes: int, per_class: int) -> Path:
    """Copy a few cub100 test photos into class folders (the index's gallery root must hold real files)."""
    from engine.datasets import build_dataset

    ds = build_dataset("cub200", str(cub100), split="test")
    taken: dict[int, int] = {}
    for path, label in ds.samples:
        if label >= classes or taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        d = dest / ds.classes[label]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, d / Path(path).name)
    return dest


@pytest.fixture(scope="module")
def served(cub100_root, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    from indexer import EmbedOptions, Index, Source, build_index
    from ui.server import serve, wait_until_ready

    base = tmp_path_factory.mktemp("ui_browser")
    if os.environ.get("PPSSL_UI_TEST_INDEX"):
        index_dir = Path(os.environ["PPSSL_UI_TEST_INDEX"])
    elif UPDATE:
        from engine.checkpoint import save_checkpoint
        from engine.encoder import create_encoder

        gallery = _copy_subset(cub100_root, base / "gallery", classes=30, per_class=10)
        index_dir = base / "index"
        # Saved as a checkpoint so the index records a rebuildable encoder (a fresh encoder's
        # untrained attention head is random, which changes its fingerprint from one process to the next).
        save_checkpoint(create_encoder("efficientnet_lite0", "imagenet"), base / "lite0_imagenet")
        build_index(index_dir, Source(images=gallery), str(base / "lite0_imagenet"),
                    embed=EmbedOptions(num_workers=0, progress=lambda d, t: None))
    else:
        import torch

        from engine.checkpoint import save_checkpoint
        from engine.encoder import create_encoder

        gallery = _copy_subset(cub100_root, base / "gallery", classes=8, per_class=5)
        torch.manual_seed(0)
        save_checkpoint(create_encoder("tinycnn"), base / "ckpt")
        index_dir = base / "index"
        build_index(index_dir, Source(images=gallery), str(base / "ckpt"),
                    embed=EmbedOptions(num_workers=0, progress=lambda d, t: None))
    idx = Index.open(index_dir)
    rec = next(r for r in idx.records() if r["label"] is not None)
    query_photo = cub100_root / "images" / rec["path"]  # the cub100 original of an indexed copy
    assert query_photo.is_file(), query_photo
    port = _free_port()
    proc = serve(index_dir, allow_roots=[idx.root], port=port, block=False, quiet=True, max_upload_mb=5)
    try:
        wait_until_ready(port, timeout=120, proc=proc)
        yield {"url": f"http://127.0.0.1:{port}", "index": index_dir, "query": query_photo,
               "gallery": Path(idx.root), "count": idx.count}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except Exception:  # noqa: BLE001
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    """One Playwright and one Chromium for the module (Playwright's sync API cannot be nested)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(served, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(180_000)
    pg.goto(served["url"])
    pg.get_by_role("heading", name="Search").wait_for()
    yield pg
    context.close()


def _loaded_images(pg) -> int:
    """Main-area images that finished loading with real pixels."""
    return pg.evaluate("""() => Array.from(
        document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img'))
        .filter(i => i.complete && i.naturalWidth > 0).length""")


def _wait_images(pg, n: int, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = _loaded_images(pg)
        # stale: elements of the previous run not yet redrawn (a new query's caption can show above the old hits)
        if (got >= n and not pg.locator('[data-testid="stStatusWidget"]').is_visible()
                and pg.locator('[data-stale="true"]').count() == 0):
            return got
        time.sleep(0.2)
    raise AssertionError(f"only {_loaded_images(pg)} of {n} images rendered")


def _nav(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    pg.get_by_role("heading", name=title).wait_for()


def _shot(pg, name: str) -> None:
    """Screenshot the whole page: Streamlit scrolls inside its main block, so grow the viewport to fit."""
    if not UPDATE:
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = pg.evaluate("""() => { const m = document.querySelector('[data-testid="stMain"]');
                                   return m ? m.scrollHeight : document.body.scrollHeight; }""")
    pg.set_viewport_size({"width": 1400, "height": int(min(max(height, 900), 4000))})
    time.sleep(1.5)  # let charts and images re-layout
    png = pg.screenshot()
    pg.set_viewport_size({"width": 1400, "height": 1000})
    # 256-colour palette: a quarter of the bytes in the repository, hardly visible on these pages.
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        SHOTS / f"ui_{name}.png", optimize=True)


def test_browser_search_attention_evaluate_build(page, served, tmp_path):
    pg = page
    # A bad upload shows a message, and the app keeps working.
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_bytes(b"definitely not a jpeg\n" * 20)
    pg.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    pg.locator('[data-testid="stAlert"]', has_text="not an image").wait_for()

    # Cold query (first forward pass of this server process): a cub100 photo that is not in the gallery.
    uploader = pg.locator('[data-testid="stFileUploaderDropzoneInput"]')
    other = next(p for p in sorted(served["query"].parent.glob("*.jpg")) if p != served["query"])
    k = min(10, served["count"] - 1)
    t0 = time.perf_counter()
    uploader.set_input_files(str(other))
    _wait_images(pg, 1 + k)
    shown = pg.locator('[data-testid="stMetricValue"]').first.inner_text()
    print(f"\nbrowser: upload -> {1 + k} images drawn in {(time.perf_counter() - t0) * 1e3:.0f} ms (cold); "
          f"the page's query latency: {shown}")
    assert pg.locator('[data-testid="stAlert"]', has_text="not an image").count() == 0
    assert pg.get_by_text("Query latency").is_visible()
    # Warm query: the indexed photo itself, so its class is known and badges show.
    t0 = time.perf_counter()
    uploader.set_input_files(str(served["query"]))
    pg.locator('[data-testid="stImageCaption"]', has_text=served["query"].name).wait_for()
    _wait_images(pg, 1 + k)
    shown = pg.locator('[data-testid="stMetricValue"]').first.inner_text()
    print(f"browser: upload -> {1 + k} images drawn in {(time.perf_counter() - t0) * 1e3:.0f} ms (warm); "
          f"the page's query latency: {shown}")
    assert pg.get_by_text("same class").count() >= 1
    _shot(pg, "search")

    # Result controls: a score on every card, a minimum score, and 'Search' with a result.
    card = pg.locator('[data-testid="stMarkdownContainer"]', has_text="#2 ·").first.inner_text()
    assert 0.0 < float(card.split("·")[1]) <= 1.0001
    pg.get_by_text("Result controls").click()
    slider = pg.get_by_role("slider").first
    slider.focus()
    slider.press("End")  # minimum score 1.0: every result is hidden, and the page says so
    pg.get_by_text(f"hidden: {k} below the minimum score").wait_for()
    slider.press("Home")
    _wait_images(pg, 1 + k)
    pg.get_by_role("button", name="Search", exact=True).nth(1).click()  # search with the second result
    pg.get_by_text("stored vector; left out of the results").wait_for()
    _wait_images(pg, 1 + k)

    _nav(pg, "Attention")
    n = _wait_images(pg, 3 * (1 + min(5, k)))
    assert n == 3 * (1 + min(5, k))
    assert pg.get_by_text("GradCAM for the top-").is_visible()
    _shot(pg, "attention")

    _nav(pg, "Evaluate")
    pg.locator('[data-testid="stMetric"]', has_text="MAP@R").wait_for()
    pg.locator('[data-testid="stVegaLiteChart"], [data-testid="stArrowVegaLiteChart"]').first.wait_for()
    _wait_images(pg, 2, timeout_s=60)  # confused-pair examples
    _shot(pg, "evaluate")

    _nav(pg, "Build")
    pg.get_by_text("Allowed roots").wait_for()
    folder = sorted(p for p in served["gallery"].iterdir() if p.is_dir())[0]  # already indexed: a no-op add
    pg.get_by_label("Image folder on the server").fill(str(folder))
    pg.get_by_role("button", name="Add images").click()
    pg.locator('[data-testid="stAlert"]', has_text="already present").wait_for()
    _shot(pg, "build")


def test_default_app_finds_the_same_species(tmp_path, browser):
    """``ppssl serve`` with no arguments on a fresh home: builds the embedded demo, serves it, and a person who
    uploads demo test photos gets a top hit of the photo's own species for most of them; the Evaluate page
    shows the trained encoder beside the ImageNet-only one."""
    import signal
    import subprocess
    import sys

    from indexer import Index
    from ui.server import wait_until_ready

    port = _free_port()
    env = {**os.environ, "PPSSL_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "ppssl", "serve", "--port", str(port), "--no-browser"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(port, timeout=900, proc=proc)  # first start: the demo is built (about 2 minutes)
        index = Index.open(tmp_path / "home" / "demo" / "index")
        by_species: dict[str, list] = {}
        for rec in index.records():
            by_species.setdefault(rec["label"], []).append(rec)
        queries = [r for recs in by_species.values() for r in recs[:4]]  # 4 test photos of each species
        from indexer.refine import Refine

        expected = {}  # the index's own answer for each photo (itself left out, the page's default re-ranking)
        for r in queries:
            hits = index.search(index.vectors([r["id"]]), k=2, refine=Refine(method="qe"), exclude=[[r["id"]]])[0]
            tied = abs(hits[0].score - hits[1].score) < 1e-4  # a near-tie may come out either way on the page
            expected[r["id"]] = {hits[0].label, hits[1].label} if tied else {hits[0].label}
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            pg = context.new_page()
            pg.set_default_timeout(180_000)
            pg.goto(f"http://127.0.0.1:{port}")
            pg.get_by_role("heading", name="Search").wait_for()
            uploader = pg.locator('[data-testid="stFileUploaderDropzoneInput"]')
            right = 0
            for r in queries:
                photo = Path(index.root) / r["path"]  # the gallery's own file: the page leaves it out of its results
                uploader.set_input_files(str(photo))
                pg.locator('[data-testid="stImageCaption"]', has_text=photo.name).wait_for()
                _wait_images(pg, 1 + 10)
                top = pg.locator('[data-testid="stMarkdownContainer"]', has_text="#1 ·").first.inner_text()
                shown = next(lab for lab in by_species if lab in top.split("·")[-1])
                assert shown in expected[r["id"]], (photo.name, top, expected[r["id"]])
                right += shown == r["label"]
            assert right > len(queries) / 2, \
                f"the top hit had the query's species for only {right} of {len(queries)} photos"
            _nav(pg, "Evaluate")
            pg.get_by_role("heading", name="index vs baseline_index").wait_for()
        finally:
            context.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("ppssl serve did not stop on SIGTERM")
