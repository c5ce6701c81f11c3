"""Bad input: the hostile corpus through the image opener, the dataset readers, ``index build`` and
``ppssl search`` (in-process ``ppssl.cli.main``, whose return value is the process exit status). Every file is either rejected with a clear error naming it, or accepted and decoded (and
embedded) exactly as an independent reference says."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reliability.hostile import Expectation, make_hostile_corpus
from engine.imageio import ImageLoadError, open_image, printable
from reliability.conftest import INPUT_SIZE

torch = pytest.importorskip("torch")


def _check_open(name: str, exp: Expectation, source, label: str) -> str | None:
    """Open ``source`` and compare with ``exp``; returns a failure description or None."""
    try:
        img = open_image(source)
    except ImageLoadError as exc:
        if exp.verdict != "reject":
            return f"{label}: rejected an acceptable file ({exc})"
        if exp.reason and exp.reason not in exc.reason:
            return f"{label}: reason {exc.reason!r} lacks {exp.reason!r}"
        if isinstance(source, (str, os.PathLike)) and printable(str(source)) not in str(exc):
            return f"{label}: message does not name the file: {exc}"
        if "\n" in str(exc):
            return f"{label}: message spans several lines: {str(exc)!r}"
        return None
    except Exception as exc:  # noqa: BLE001 - this is what the test is looking for
        return f"{label}: unhandled {type(exc).__name__}: {exc}"
    if exp.verdict != "accept":
        return f"{label}: accepted a file that must be rejected ({img.mode} {img.size})"
    if img.mode != "RGB" or img.size != exp.size:
        return f"{label}: decoded to {img.mode} {img.size}, expected RGB {exp.size}"
    for (x, y), want in exp.probes:
        got = img.getpixel((x, y))
        if max(abs(int(a) - int(b)) for a, b in zip(got, want)) > exp.tol:
            return f"{label}: pixel ({x},{y}) is {got}, expected {want} +- {exp.tol}"
    return None


def test_image_opener_meets_every_expectation(hostile):
    failures = [f for name, exp in hostile.items()
                if (f := _check_open(name, exp, hostile.root / name, repr(name)))]
    assert not failures, "\n".join(failures)
    assert not hostile.payload_marker.exists(), "a pickle in the corpus was unpickled"
    assert sum(e.verdict == "reject" for e in hostile.cases.values()) >= 18
    assert sum(e.verdict == "accept" for e in hostile.cases.values()) >= 20


def test_image_opener_reads_bytes_and_streams_the_same_way(hostile):
    failures = []
    for name in hostile.names(kinds=("file",)):
        data = (hostile.root / name).read_bytes()
        exp = hostile[name]
        for label, source in (("bytes", data), ("stream", io.BytesIO(data))):
            if (f := _check_open(name, exp, source, f"{name!r} as {label}")):
                failures.append(f)
    assert not failures, "\n".join(failures)


def test_bomb_between_one_and_two_times_the_limit_is_refused_by_our_own_check(hostile):
    """Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; the opener must still refuse, and honour a
    stricter ``max_pixels`` on an otherwise harmless image."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a caller that silenced Pillow's warning is still protected
        with pytest.raises(ImageLoadError, match="bomb"):
            open_image(hostile.root / "bomb_1_5x.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 100"):
        open_image(hostile.root / "photo.bmp", max_pixels=100)  # 32x16 = 512 pixels


def test_exif_rotation_matches_an_independent_rotation(hostile):
    from PIL import Image

    with Image.open(hostile.root / "exif_rotated.jpg") as raw:
        stored = np.asarray(raw.convert("RGB"))
    upright = np.asarray(open_image(hostile.root / "exif_rotated.jpg"))
    assert np.array_equal(upright, np.rot90(stored, k=-1))  # orientation 6 = rotate 90 degrees clockwise


# --- dataset readers -------------------------------------------------------------------------------

def test_folder_dataset_over_the_corpus_names_each_bad_file(tmp_path):
    from engine.datasets import build_dataset
    from engine.imageio import is_image_file

    corpus = make_hostile_corpus(tmp_path / "root" / "birds")
    ds = build_dataset("folder", tmp_path / "root", split="all")
    listed = {Path(p).name for p, _ in ds.samples if Path(p).parent.name == "birds"}
    regular = {n for n, e in corpus.items()
               if is_image_file(n) and (corpus.root / n).is_file() and e.kind in ("file", "symlink")}
    assert listed == regular  # FIFOs, directories and broken links are not listed as images
    failures = []
    for i, (path, _) in enumerate(ds.samples):
        name = Path(path).name
        if Path(path).parent.name != "birds":
            continue
        exp = corpus[name]
        try:
            image, label, got_path = ds[i]
        except ImageLoadError as exc:
            if exp.verdict == "accept" or printable(path) not in str(exc):
                failures.append(f"{name!r}: {exc}")
            continue
        if exp.verdict == "reject" or image.size != exp.size or got_path != path:
            failures.append(f"{name!r}: accepted as {image.size}")
    assert not failures, "\n".join(failures)


def _cub(root: Path, names: list[str]) -> Path:
    """A one-class CUB layout listing ``names`` under images/c/ (files created by the caller)."""
    (root / "images" / "c").mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text("".join(f"{i} c/{n}\n" for i, n in enumerate(names, 1)))
    (root / "image_class_labels.txt").write_text("".join(f"{i} 1\n" for i in range(1, len(names) + 1)))
    (root / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, len(names) + 1)))
    (root / "classes.txt").write_text("1 c\n")
    return root


def test_cub_listing_special_files_names_file_and_line(tmp_path):
    from PIL import Image

    from engine.datasets import AnnotationError, build_dataset

    root = _cub(tmp_path / "cub", ["ok.jpg", "fifo.jpg", "dir.jpg", "loop.jpg"])
    img = root / "images" / "c"
    Image.new("RGB", (8, 8)).save(img / "ok.jpg")
    os.mkfifo(img / "fifo.jpg")
    (img / "dir.jpg").mkdir()
    os.symlink("loop.jpg", img / "loop.jpg")
    with pytest.raises(AnnotationError) as info:
        build_dataset("cub200", root, split="all")
    assert info.value.file.endswith("images.txt") and info.value.line == 2, str(info.value)
    assert "fifo.jpg is not a regular file" in str(info.value) and "3 of 4" in str(info.value)


@pytest.mark.parametrize("file, content, line, match", [
    ("images.txt", b"1 c/a.jpg\n2 c/b\x00.jpg\n", 2, "control character U+0000"),
    ("images.txt", b"1 c/a.jpg\n2 c/\xff\xfe.jpg\n", 2, "not UTF-8"),
    ("image_class_labels.txt", b"1 1\n2 " + b"9" * 100_000 + b"\n", 2, "class id"),
    ("classes.txt", b"1 c\n1\x1b[2J c\n", 2, "control character U+001B"),
    ("train_test_split.txt", b"1 1\n2 \xef\xbc\x91\n", 2, "must be 1 (train) or 0 (test)"),  # fullwidth '1'
], ids=["nul-in-path", "invalid-utf8", "100k-digit-class-id", "terminal-escape", "fullwidth-digit"])
def test_cub_adversarial_bytes_name_file_and_line(tmp_path, file, content, line, match):
    from PIL import Image

    from engine.datasets import AnnotationError, build_dataset

    root = _cub(tmp_path / "cub", ["a.jpg", "b.jpg"])
    for n in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(root / "images" / "c" / n)
    (root / file).write_bytes(content)
    with pytest.raises(AnnotationError) as info:
        build_dataset("cub200", root, split="all")
    err = info.value
    assert err.file.endswith(file) and err.line == line and match in str(err), str(err)
    assert len(str(err)) < 400 and "\n" not in str(err) and "\x1b" not in str(err), repr(str(err))


def test_cub_tolerates_crlf_and_bom(tmp_path):
    from PIL import Image

    from engine.datasets import build_dataset

    root = _cub(tmp_path / "cub", ["a.jpg", "b.jpg"])
    for n in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(root / "images" / "c" / n)
    for f in ("images.txt", "classes.txt"):
        (root / f).write_bytes(b"\xef\xbb\xbf" + (root / f).read_bytes().replace(b"\n", b"\r\n"))
    ds = build_dataset("cub200", root, split="all")
    assert [Path(p).name for p, _ in ds.samples] == ["a.jpg", "b.jpg"] and ds.classes == ["c"]


# --- index build -----------------------------------------------------------------------------------

def _run_with_fifo_watch(fn, fifos: list[Path], timeout: float = 120.0):
    """Run ``fn()`` in a thread; if it blocks opening one of ``fifos`` (a writer can then connect without
    waiting), unblock it and fail. Returns fn's result."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    blocked = []
    while t.is_alive() and time.monotonic() < deadline:
        for fifo in fifos:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
            except OSError:
                continue
            blocked.append(fifo.name)
            os.close(fd)  # the reader now sees EOF and goes on
        t.join(0.05)
    t.join(5)
    assert not blocked, f"the call blocked opening FIFO(s) {blocked} (it would hang forever without this test)"
    assert not t.is_alive(), f"no result within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_index_build_skips_and_lists_every_bad_file_and_embeds_the_rest(tmp_path, encoder_ckpt):
    import json

    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Index, Source, build_index

    corpus = make_hostile_corpus(tmp_path / "gallery")
    out = tmp_path / "index"
    fifos = [corpus.root / n for n, e in corpus.items() if e.kind == "fifo"]
    rep = _run_with_fifo_watch(lambda: build_index(out, Source(images=corpus.root), str(encoder_ckpt),
                                                   embed=EmbedOptions(num_workers=0, progress=lambda *_: None)), fifos)
    accepted = corpus.names("accept", kinds=("file", "symlink"))
    inside = [n for n in accepted if corpus[n].in_gallery]
    idx = Index.open(out)
    assert sorted(r["path"] for r in idx.records()) == sorted(inside)
    assert rep.added == len(inside) == idx.count
    skipped = {p: r for p, r in rep.skipped}
    missing = []
    for name in corpus.names("reject", kinds=("file", "fifo", "symlink")):
        link = corpus.root / name
        alias = os.readlink(link) if link.is_symlink() else name  # the indexer keys links by their target
        if name not in skipped and alias not in skipped:
            missing.append(name)
    assert not missing, f"rejected files not listed in the build report: {missing}"
    outside = [n for n in accepted if not corpus[n].in_gallery]
    assert all(any("outside the gallery root" in r for p, r in rep.skipped if p.endswith(n)) for n in outside)
    assert not any(n in skipped for n in inside)
    on_disk = json.loads((out / "report.json").read_text())
    assert {d["path"] for d in on_disk["skipped"]} == set(skipped)
    # the accepted files are embedded exactly as the engine embeds their decoded pixels
    enc = create_encoder(str(encoder_ckpt)).eval()
    tf = enc.transform()
    ids = idx.ids()
    with torch.inference_mode():
        ref = torch.cat([enc(tf(open_image(corpus.root / idx.record(i)["path"]))[None]) for i in ids]).numpy()
    np.testing.assert_allclose(idx.vectors(ids), ref, atol=1e-5)
    # rerun: nothing duplicated, the bad files are tried and listed again
    rep2 = _run_with_fifo_watch(lambda: build_index(out, embed=EmbedOptions(num_workers=0, progress=lambda *_: None)),
                                fifos)
    assert (rep2.added, rep2.already_present, len(rep2.skipped)) == (0, len(inside), len(rep.skipped))
    assert Index.open(out).count == len(inside)
    assert not corpus.payload_marker.exists()


# --- ppssl search ----------------------------------------------------------------------------------

def test_cli_search_with_each_hostile_query_gives_one_line_and_status_2(clean_index, hostile, capsys):
    from ppssl.cli import main

    failures = []
    accepted = hostile.names("accept")
    sample = {"cmyk.jpg", "exif_rotated.jpg", "new\nline.png"} & set(accepted)  # all are embedded in the build test
    for name, exp in hostile.items():
        if exp.verdict == "accept" and name not in sample:
            continue
        path = hostile.root / name
        rc = main(["search", "--index", str(clean_index["index"]), "-k", "3", "--device", "cpu", str(path)])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        if exp.verdict == "reject":
            if rc != 2 or len(lines) != 1 or not lines[0].startswith("ppssl search: error: ") \
                    or printable(str(path)) not in lines[0] or "Traceback" in err:
                failures.append(f"{name!r}: status {rc}, stderr {err!r}")
        elif rc != 0 or out.count("(id ") != 3:
            failures.append(f"{name!r} (valid): status {rc}, stdout {out[-300:]!r}, stderr {err[-300:]!r}")
    assert not failures, "\n".join(failures)
    assert not hostile.payload_marker.exists()


# --- odd but valid images through the embedding transform -----------------------------------------

def test_extreme_aspect_ratio_does_not_blow_up_the_transform():
    """A 20000x10 strip must not be resized to 512000x256 before the centre crop (~0.4 GB)."""
    from PIL import Image
    from torchvision.transforms import v2

    from engine.preprocess import eval_transform

    tf = eval_transform(INPUT_SIZE)
    x = Image.new("RGB", (20000, 10))
    largest = 0
    for t in tf.transforms:
        if isinstance(t, v2.CenterCrop):
            break
        x = t(x)
        if not isinstance(t, v2.ToImage):  # the decoded input itself is as large as it is
            largest = max(largest, *x.shape[-2:])
    assert largest <= 8 * INPUT_SIZE  # bounded intermediate (the crop keeps the centre)
    assert tf(Image.new("RGB", (20000, 10))).shape == (3, INPUT_SIZE, INPUT_SIZE)


def test_mat_file_that_crashes_scipy_becomes_an_annotation_error(tmp_path):
    """One flipped bit in Stanford Dogs' test_list.mat makes scipy 1.17's loadmat dereference a null pointer
    (found by benchmarks/reliability_fuzz.py); the reader must report it, not die with SIGSEGV."""
    from engine.datasets import AnnotationError, build_dataset
    from benchmarks.reliability.fuzz_targets import layout_dogs

    files = layout_dogs(tmp_path)
    data = bytearray(files["test_list.mat"].read_bytes())
    if len(data) != 736 or data[208] != 4:
        pytest.skip("scipy writes this .mat file differently here; the crashing bit is elsewhere")
    data[208] ^= 1  # the class byte of the first file_list cell element: 4 (char) -> 5 (sparse)
    files["test_list.mat"].write_bytes(bytes(data))
    with pytest.raises(AnnotationError, match="test_list.mat: malformed .mat file: it crashes scipy"):
        build_dataset("dogs", tmp_path, split="train")
