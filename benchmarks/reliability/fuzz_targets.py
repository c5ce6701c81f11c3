"""Fuzz targets shared by ``tests/reliability/test_fuzz.py`` (bounded, in CI) and
``benchmarks.reliability_fuzz`` (longer runs whose counts go to ``benchmarks/results/reliability.md``).

Each target takes one generated input and returns an outcome name (``accepted`` / ``rejected``); any
other exception escaping it is a bug (Hypothesis reports the smallest input that causes it).

* images: valid seed files of every allowed format, mutated (bit flips, truncation, insertions,
  deletions, splices, integer fields overwritten), hand-built PNGs with arbitrary header fields, and
  random bytes behind each format's magic number -> :func:`engine.imageio.open_image`.
* annotations: the official layouts of CUB-200-2011 / NABirds, Butterfly-200, FGVC-Aircraft (parsed by
  torchvision) and Stanford Dogs (MATLAB files), with one file mutated line by line or byte by byte
  -> :func:`engine.datasets.build_dataset`; it must return a dataset or raise ``AnnotationError`` /
  ``DatasetError`` with a one-line message.
"""

from __future__ import annotations

import io
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image, features

from benchmarks.reliability.hostile import jpeg_with_orientation, png_bytes

#: Decoded-size cap while fuzzing (a mutated header may claim any size; the bomb limit itself is tested
#: elsewhere): keeps every example fast and small.
FUZZ_MAX_PIXELS = 1 << 20


# --- images --------------------------------------------------------------------------------------

def _img(mode: str, size=(24, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    s = {
        "jpeg": _save(_img("RGB"), "JPEG", quality=80),
        "jpeg_progressive": _save(_img("RGB", seed=1), "JPEG", progressive=True),
        "jpeg_cmyk": _save(_img("CMYK", seed=2), "JPEG"),
        "jpeg_gray": _save(_img("L", seed=3), "JPEG"),
        "jpeg_exif": jpeg_with_orientation(_img("RGB", seed=4), 6),
        "png_rgb": _save(_img("RGB", seed=5), "PNG"),
        "png_rgba": _save(_img("RGBA", seed=6), "PNG"),
        "png_palette_trns": _save(_img("P", seed=7), "PNG", transparency=3),
        "png_16bit": png_bytes(8, 4, 16, 0, b"".join(b"\x00" + bytes(range(i, i + 16)) for i in range(4))),
        "png_gray": _save(_img("L", seed=8), "PNG"),
        "gif_anim": _save(_img("P", seed=9), "GIF", save_all=True, append_images=[_img("P", seed=10)], duration=20),
        "bmp": _save(_img("RGB", seed=11), "BMP"),
        "bmp_rle": _save(_img("P", seed=12), "BMP"),
        "webp_lossy": _save(_img("RGB", seed=13), "WEBP", quality=50),
        "webp_lossless": _save(_img("RGBA", seed=14), "WEBP", lossless=True),
        "tiff_raw": _save(_img("RGB", seed=15), "TIFF"),
        "tiff_lzw": _save(_img("RGB", seed=16), "TIFF", compression="tiff_lzw"),
        "tiff_float": _save(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F"), "TIFF"),
        "ppm": _save(_img("RGB", seed=17), "PPM"),
        "pgm": _save(_img("L", seed=18), "PPM"),
    }
    if features.check("avif"):
        s["avif"] = _save(_img("RGB", seed=19), "AVIF", quality=50)
    return s


SEEDS = _seeds()
MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00",
         b"MM\x00*", b"P6\n", b"P5\n", b"\x00\x00\x00\x1cftypavif", b"%!PS-Adobe-3.0", b"\x80\x02"]


@st.composite
def mutated_image(draw) -> bytes:
    """A seed file with 1-6 random mutations."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "int"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos + 32] = other[start:start + 32]
        elif op == "int":  # an integer field set to an extreme value (sizes, offsets, counts)
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            width = draw(st.sampled_from([1, 2, 4]))
            data[pos:pos + width] = value.to_bytes(8, draw(st.sampled_from(["big", "little"])))[-width:] \
                if draw(st.booleans()) else value.to_bytes(8, "little")[:width]
    return bytes(data)


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


@st.composite
def crafted_png(draw) -> bytes:
    """A PNG with valid checksums but arbitrary IHDR fields and pixel data (reaches the decoder proper)."""
    w = draw(st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 2**32 - 1, 100_000])))
    h = draw(st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 2**32 - 1, 100_000])))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255]))
    ctype = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    interlace = draw(st.sampled_from([0, 1, 2]))
    raw = draw(st.binary(max_size=512))
    body = zlib.compress(raw) if draw(st.booleans()) else raw
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))]
    if draw(st.booleans()):
        chunks.append(_chunk(b"PLTE", draw(st.binary(max_size=48))))
    if draw(st.booleans()):
        chunks.append(_chunk(b"tRNS", draw(st.binary(max_size=16))))
    chunks += [_chunk(b"IDAT", body), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


image_inputs = st.one_of(
    mutated_image(),
    crafted_png(),
    st.builds(lambda m, tail: m + tail, st.sampled_from(MAGIC), st.binary(max_size=300)),
    st.binary(max_size=64),
)


def check_image(data: bytes) -> str:
    """``open_image`` must return an RGB image or raise ImageLoadError (anything else propagates)."""
    from engine.imageio import ImageLoadError, open_image

    try:
        img = open_image(data, max_pixels=FUZZ_MAX_PIXELS)
    except ImageLoadError as exc:
        assert "\n" not in str(exc), repr(str(exc))
        return "rejected"
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1, (img.mode, img.size)
    assert img.width * img.height <= FUZZ_MAX_PIXELS
    np.asarray(img)  # pixels really decoded
    return "accepted"


# --- annotation layouts --------------------------------------------------------------------------

def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (90, 40, 30)).save(path, "JPEG")


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def layout_cub(root: Path) -> dict[str, Path]:
    rels = [f"{c:03d}.B{c}/b{c}_{k}.jpg" for c in (1, 2) for k in range(3)]
    for rel in rels:
        _jpeg(root / "images" / rel)
    n = len(rels)
    _lines(root / "images.txt", [f"{i} {r}" for i, r in enumerate(rels, 1)])
    _lines(root / "image_class_labels.txt", [f"{i} {1 + (i - 1) // 3}" for i in range(1, n + 1)])
    _lines(root / "train_test_split.txt", [f"{i} {i % 2}" for i in range(1, n + 1)])
    _lines(root / "classes.txt", ["1 001.B1", "2 002.B2"])
    _lines(root / "bounding_boxes.txt", [f"{i} 1 2 3 4" for i in range(1, n + 1)])
    _lines(root / "captions.txt", [f"{i} a bird" for i in range(1, n + 1)])
    return {f: root / f for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                                  "bounding_boxes.txt", "captions.txt")}


def layout_butterfly(root: Path) -> dict[str, Path]:
    base = root / "Butterfly200"
    rows = {"train": ["001.A/a1.jpg 1 1 1 1", "002.B/b1.jpg 2 2 1 1"], "val": ["002.B/b2.jpg 2 2 1 1"],
            "test": ["001.A/a3.jpg 1 1 1 1", "005.C/c1.jpg 5"]}
    files = {}
    for part, lines in rows.items():
        for line in lines:
            _jpeg(base / "images" / line.split()[0])
        files[part] = base / f"Butterfly200_{part}_release.txt"
        _lines(files[part], lines)
    return files


def layout_aircraft(root: Path) -> dict[str, Path]:
    data = root / "fgvc-aircraft-2013b" / "data"
    trainval = [("1000001", "707-320"), ("1000002", "A300B4"), ("1000003", "F/A-18")]
    test = [("2000001", "A300B4"), ("2000002", "707-320")]
    for name, _ in trainval + test:
        _jpeg(data / "images" / f"{name}.jpg")
    _lines(data / "variants.txt", ["707-320", "A300B4", "F/A-18"])
    _lines(data / "images_variant_trainval.txt", [f"{n} {v}" for n, v in trainval])
    _lines(data / "images_variant_test.txt", [f"{n} {v}" for n, v in test])
    return {f: data / f for f in ("variants.txt", "images_variant_trainval.txt", "images_variant_test.txt")}


def layout_dogs(root: Path) -> dict[str, Path]:
    import scipy.io

    folders = {1: "n02085620-Chihuahua", 2: "n02085782-Japanese_spaniel"}
    parts = {"train": [(1, 0), (2, 1)], "test": [(1, 2), (2, 3)]}
    for part, rows in parts.items():
        files = [f"{folders[y]}/{folders[y][:9]}_{i}.jpg" for y, i in rows]
        for rel in files:
            _jpeg(root / "Images" / rel)
        cell = np.empty((len(files), 1), dtype=object)
        for i, f in enumerate(files):
            cell[i, 0] = np.array([f])
        scipy.io.savemat(root / f"{part}_list.mat", {"file_list": cell, "annotation_list": cell,
                                                     "labels": np.array([[y for y, _ in rows]], dtype=float).T})
    return {"train_list.mat": root / "train_list.mat", "test_list.mat": root / "test_list.mat"}


LAYOUTS = {"cub200": layout_cub, "nabirds": layout_cub, "butterfly200": layout_butterfly,
           "aircraft": layout_aircraft, "dogs": layout_dogs}
_TEMPLATES: dict[str, tuple[Path, dict[str, Path]]] = {}

TOKENS = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["0", "1", "01", "+1", "1.5", "nan", "inf", "-0", "1e3", "0x1", "\uff11", "9" * 40, "",
                     "../x.jpg", "/etc/passwd", "C:\\x.jpg", "a\\b.jpg", "001.B1/b1_0.jpg", "001.A/a1.jpg",
                     "707-320", "F/A-18", "1000001", "\ufeff1", "\u00e9", "\u202e", "a b", "\t"]),
    st.text(max_size=6),
)


@st.composite
def mutated_text(draw, original: bytes) -> bytes:
    """Line-level and byte-level mutations of an annotation file."""
    lines = original.decode("utf-8").splitlines()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["token", "drop", "dup", "insert", "swap", "bytes"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "token" and lines:
            fields = lines[i].split(" ")
            j = draw(st.integers(0, len(fields)))
            new = draw(TOKENS)
            fields[j:j + 1] = [new] if draw(st.booleans()) else [new, *fields[j:j + 1]]
            lines[i] = " ".join(fields)
        elif op == "drop" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, " ".join(draw(st.lists(TOKENS, max_size=6))))
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    sep = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
    data = sep.join(lines).encode("utf-8") + (sep.encode() if draw(st.booleans()) else b"")
    if draw(st.integers(0, 4)) == 0:  # raw byte damage
        pos = draw(st.integers(0, max(0, len(data))))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
    return data


@st.composite
def mutated_bytes(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "int"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
            if not data:
                break
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos:pos + 4] = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])).to_bytes(4, "little")
    return bytes(data)


@st.composite
def annotation_case(draw) -> tuple[str, str, str, bytes]:
    """``(reader, file to replace, split, new content)``."""
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    template, files = template_for(name)
    fname = draw(st.sampled_from(sorted(files)))
    original = files[fname].read_bytes()
    content = draw(mutated_bytes(original)) if fname.endswith(".mat") else draw(mutated_text(original))
    return name, fname, draw(st.sampled_from(["train", "test", "all"])), content


def template_for(name: str) -> tuple[Path, dict[str, Path]]:
    """A pristine layout of reader ``name`` (created once per process, copied per example)."""
    if name not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix=f"ppssl-fuzz-{name}-"))
        _TEMPLATES[name] = (root, LAYOUTS[name](root))
    return _TEMPLATES[name]


def check_annotation(case: tuple[str, str, str, bytes]) -> str:
    """``build_dataset`` on the mutated layout: a consistent dataset, or a one-line AnnotationError."""
    from engine.datasets import DatasetError, build_dataset

    name, fname, split, content = case
    template, files = template_for(name)
    work = Path(tempfile.mkdtemp(prefix="ppssl-fuzz-case-"))
    try:
        root = work / "root"
        shutil.copytree(template, root)
        (root / files[fname].relative_to(template)).write_bytes(content)
        try:
            ds = build_dataset(name, root, split=split)
        except DatasetError as exc:  # AnnotationError is a DatasetError
            msg = str(exc)
            assert "\n" not in msg and "\r" not in msg and len(msg) < 2000, repr(msg)
            return "rejected"
        assert all(0 <= y < len(ds.classes) for y in ds.targets)
        assert all(Path(p).is_file() and Path(p).resolve().is_relative_to(root.resolve()) for p, _ in ds.samples), \
            "a listed image lies outside the dataset root"
        return "accepted"
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Tally:
    """Counts outcomes per target (the benchmark reads them; a crash is counted before it propagates)."""

    def __init__(self):
        self.counts: dict[str, Counter] = {}

    def run(self, target: str, fn, value) -> str:
        c = self.counts.setdefault(target, Counter())
        try:
            outcome = fn(value)
        except BaseException:
            c["crash"] += 1
            raise
        c[outcome] += 1
        return outcome
