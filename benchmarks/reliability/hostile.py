"""A corpus of hostile and odd image files, generated locally (nothing is downloaded).

:func:`make_hostile_corpus` writes every case into one folder and returns, per file name, what a
correct reader must do with it: ``reject`` it with a clear error, or ``accept`` it and decode it to a
known size and known colours. The same corpus is fed to the image opener, the dataset readers, the
index builder, ``ppssl search`` and the UI upload, so every consumer is held to the same expectations.

Cases that cannot be made on this machine are left out and listed in ``Corpus.omitted`` with the reason
(a file without read permission means nothing to root, who can read it anyway).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, features

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 60), (30, 40, 220), (255, 255, 255)


@dataclass(frozen=True)
class Expectation:
    """What a reader must do with one corpus entry."""

    verdict: str  # "accept" (decodes to an RGB image) or "reject" (a clear ImageLoadError)
    why: str  # what the case exercises
    size: tuple[int, int] | None = None  # accepted: decoded (width, height), after EXIF rotation
    probes: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = ()  # accepted: ((x, y), rgb) pixels
    tol: int = 0  # accepted: largest allowed per-channel difference at the probes (lossy formats)
    reason: str = ""  # rejected: a substring of the rejection reason
    kind: str = "file"  # "file", "dir", "fifo" or "symlink": what the directory entry is
    in_gallery: bool = True  # False: a link that leaves the folder (an indexer must skip it)


@dataclass
class Corpus:
    """The generated files and what is expected of each (``dict``-like over the entries)."""

    root: Path
    cases: dict[str, Expectation]
    omitted: dict[str, str] = field(default_factory=dict)  # case -> why it could not be made here
    payload_marker: Path | None = None  # a pickle in the corpus creates this file if it is ever unpickled

    def __getitem__(self, name: str) -> Expectation:
        return self.cases[name]

    def __iter__(self):
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def items(self):
        return self.cases.items()

    def names(self, verdict: str | None = None, kinds: tuple[str, ...] = ("file", "dir", "fifo", "symlink")):
        return sorted(n for n, e in self.cases.items() if (verdict is None or e.verdict == verdict)
                      and e.kind in kinds)


# --- byte-level writers ---------------------------------------------------------------------------

def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (so headers can claim anything); ``rows`` None = all-zero pixels, streamed."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row_bytes = 1 + math.ceil(width * channels * bit_depth / 8)  # filter byte + packed samples
    comp = zlib.compressobj(9)
    if rows is None:
        block = bytes(row_bytes * max(1, min(height, (1 << 22) // row_bytes)))
        left, idat = row_bytes * height, b""
        while left > 0:
            piece = block[: min(left, len(block))]
            idat += comp.compress(piece)
            left -= len(piece)
    else:
        assert len(rows) == row_bytes * height, (len(rows), row_bytes * height)
        idat = comp.compress(rows)
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _halves(size: tuple[int, int], left, right, mode: str = "RGB") -> Image.Image:
    w, h = size
    img = Image.new(mode, size, right)
    img.paste(Image.new(mode, (w // 2, h), left), (0, 0))
    return img


def _noise_jpeg(size=(96, 96), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    return _encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "JPEG", quality=95)


class _Payload:
    """Unpickling this creates a marker file: proof that something unpickled untrusted bytes."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    """Pickle bytes whose loading creates ``marker`` (without importing anything from this project)."""
    return pickle.dumps(_Payload(marker), protocol=2)


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG (the header then claims ``width x height``)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


# --- the corpus -----------------------------------------------------------------------------------

def make_hostile_corpus(directory: str | os.PathLike) -> Corpus:
    """Write the hostile corpus into ``directory`` (created) and return the expectations per file name.

    A sibling folder ``<directory>-outside`` receives the target of a symlink that leaves the corpus.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Expectation] = {}
    omitted: dict[str, str] = {}

    def put(name: str, data: bytes, exp: Expectation) -> None:
        (d / name).write_bytes(data)
        cases[name] = exp

    max_px = Image.MAX_IMAGE_PIXELS or 89_478_485
    good_jpeg = _noise_jpeg()
    good_png = _encode(_halves((40, 20), RED, BLUE), "PNG")

    # --- broken files: rejected -------------------------------------------------------------------
    put("truncated.jpg", good_jpeg[: len(good_jpeg) * 6 // 10],
        Expectation("reject", "JPEG cut at 60 %", reason="truncated"))
    put("truncated.png", good_png[: len(good_png) - 30],
        Expectation("reject", "PNG cut inside its IDAT", reason=""))
    put("corrupt_header.jpg", b"\x00\x00\x00\x00" + good_jpeg[4:],
        Expectation("reject", "JPEG whose SOI marker is overwritten", reason="not a recognised image"))
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # last byte of the IHDR CRC
    put("corrupt_crc.png", bytes(bad_crc), Expectation("reject", "PNG with a wrong IHDR checksum"))
    put("zero_bytes.jpg", b"", Expectation("reject", "empty file", reason="empty"))
    put("text.jpg", b"this is not a photo, just text named .jpg\n" * 20,
        Expectation("reject", "plain text named .jpg", reason="not a recognised image"))
    put("svg_named.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>\n',
        Expectation("reject", "SVG markup named .png", reason="not a recognised image"))
    put("postscript.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        b"(pwned) print quit\n%%EOF\n",
        Expectation("reject", "EPS named .jpg (Pillow would hand it to Ghostscript)", reason="not a recognised image"))
    marker = d.parent / f"{d.name}-UNPICKLED"
    put("pickle.jpg", pickle_payload(marker),
        Expectation("reject", "pickle payload named .jpg (must never be unpickled)", reason="not a recognised image"))

    # --- decompression bombs ----------------------------------------------------------------------
    side = int(math.isqrt(4 * max_px)) + 1  # > 2x the limit: Pillow itself raises
    put("bomb_4x.png", png_bytes(side, side, 1, 0),
        Expectation("reject", f"{side}x{side} 1-bit PNG ({side * side / max_px:.1f}x Pillow's limit), tiny file",
                    reason="bomb"))
    side = int(math.isqrt(int(1.5 * max_px))) + 1  # between 1x and 2x: Pillow only warns
    put("bomb_1_5x.png", png_bytes(side, side, 1, 0),
        Expectation("reject", f"{side}x{side} PNG, {side * side / max_px:.2f}x the limit (Pillow only warns)",
                    reason="bomb"))
    put("bomb_header.jpg", patch_jpeg_size(_encode(Image.new("RGB", (8, 8), RED), "JPEG"), 65000, 65000),
        Expectation("reject", "JPEG whose frame header claims 65000x65000", reason="bomb"))

    # --- formats without a decoder ----------------------------------------------------------------
    put("fake.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 4,
        Expectation("reject", "HEIC container (no HEIF decoder installed)"))
    put("fake.avif", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(range(256)) * 4,
        Expectation("reject", "AVIF brand header over garbage"))
    if features.check("avif"):
        put("real.avif", _encode(_halves((32, 32), RED, BLUE), "AVIF", quality=95),
            Expectation("accept", "a real AVIF (Pillow has an AVIF decoder here)", size=(32, 32),
                        probes=(((4, 16), RED), ((28, 16), BLUE)), tol=40))
    else:
        omitted["real.avif"] = "Pillow was built without AVIF support (fake.avif is still rejected)"

    # --- valid but odd: accepted and decoded correctly --------------------------------------------
    put("tiny_1x1.png", _encode(Image.new("RGB", (1, 1), GREEN), "PNG"),
        Expectation("accept", "1x1 pixel", size=(1, 1), probes=(((0, 0), GREEN),)))
    put("wide_20000x10.png", _encode(_halves((20000, 10), RED, BLUE), "PNG"),
        Expectation("accept", "20000x10 strip (extreme aspect ratio)", size=(20000, 10),
                    probes=(((10, 5), RED), ((19990, 5), BLUE))))
    ramp = np.linspace(0, 65535, 64).round().astype(">u2")
    gray16 = np.tile(ramp, (8, 1))
    rows = b"".join(b"\x00" + r.tobytes() for r in gray16)
    put("gray16.png", png_bytes(64, 8, 16, 0, rows),
        Expectation("accept", "16-bit grayscale PNG (rescaled, not clipped)", size=(64, 8),
                    probes=tuple(((x, 3), (int(ramp[x] / 257 + 0.5),) * 3) for x in (0, 21, 40, 63)), tol=1))
    rgb16 = np.zeros((8, 16, 3), ">u2")
    rgb16[:, :8] = (0xDCFF, 0x1E00, 0x1EAA)  # RED in the high bytes
    rgb16[:, 8:] = (0x1E00, 0x2800, 0xDC00)  # BLUE
    rows = b"".join(b"\x00" + r.tobytes() for r in rgb16)
    put("rgb16.png", png_bytes(16, 8, 16, 2, rows),
        Expectation("accept", "16-bit RGB PNG", size=(16, 8), probes=(((2, 4), RED), ((13, 4), BLUE)), tol=1))
    put("cmyk.jpg", _encode(_halves((48, 32), RED, BLUE).convert("CMYK"), "JPEG", quality=95),
        Expectation("accept", "CMYK JPEG (Adobe)", size=(48, 32), probes=(((8, 16), RED), ((40, 16), BLUE)), tol=16))
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    pal.paste(0, (0, 0, 8, 16))
    put("palette_alpha.png", _encode(pal, "PNG", transparency=0),
        Expectation("accept", "palette PNG with a transparent index (composited on white)", size=(16, 16),
                    probes=(((3, 8), WHITE), ((12, 8), RED))))
    rgba = Image.new("RGBA", (16, 16), (*BLUE, 255))
    rgba.paste(Image.new("RGBA", (8, 16), (*RED, 0)), (0, 0))
    put("rgba.png", _encode(rgba, "PNG"),
        Expectation("accept", "RGBA PNG, left half fully transparent", size=(16, 16),
                    probes=(((3, 8), WHITE), ((12, 8), BLUE))))
    la = Image.new("LA", (16, 16), (90, 255))
    la.paste(Image.new("LA", (8, 16), (0, 0)), (0, 0))
    put("gray_alpha.png", _encode(la, "PNG"),
        Expectation("accept", "grayscale + alpha PNG", size=(16, 16), probes=(((3, 8), WHITE), ((12, 8), (90,) * 3))))
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE, GREEN)]
    put("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        Expectation("accept", "animated GIF (first frame is used)", size=(20, 20), probes=(((10, 10), RED),), tol=8))
    raw = Image.new("RGB", (60, 30), GREEN)
    raw.paste(Image.new("RGB", (20, 30), RED), (0, 0))  # the left third is red in the stored pixels
    put("exif_rotated.jpg", jpeg_with_orientation(raw, 6),
        Expectation("accept", "JPEG stored landscape with EXIF orientation 6 (display: rotate 90 deg clockwise)",
                    size=(30, 60), probes=(((15, 4), RED), ((15, 55), GREEN)), tol=16))
    put("exif_bad_orientation.jpg", jpeg_with_orientation(raw, 9),
        Expectation("accept", "EXIF orientation 9 (invalid value): left as stored", size=(60, 30),
                    probes=(((4, 15), RED), ((55, 15), GREEN)), tol=16))
    put("gray.jpg", _encode(Image.new("L", (24, 24), 128), "JPEG"),
        Expectation("accept", "8-bit grayscale JPEG", size=(24, 24), probes=(((12, 12), (128,) * 3),), tol=2))
    put("bilevel.png", _encode(_halves((16, 16), 0, 1, "1"), "PNG"),
        Expectation("accept", "1-bit PNG", size=(16, 16), probes=(((3, 8), (0, 0, 0)), ((12, 8), WHITE))))
    fimg = Image.fromarray(np.tile(np.linspace(-1.0, 3.0, 32, dtype=np.float32), (4, 1)), mode="F")
    put("float32.tif", _encode(fimg, "TIFF"),
        Expectation("accept", "32-bit float TIFF (min..max stretched to 0..255)", size=(32, 4),
                    probes=(((0, 2), (0, 0, 0)), ((31, 2), WHITE)), tol=1))
    put("png_named.jpg", good_png,
        Expectation("accept", "a PNG with a .jpg name", size=(40, 20), probes=(((5, 10), RED), ((35, 10), BLUE))))
    put("photo.webp", _encode(_halves((32, 16), RED, BLUE), "WEBP", lossless=True),
        Expectation("accept", "lossless WebP", size=(32, 16), probes=(((4, 8), RED), ((28, 8), BLUE))))
    put("photo.bmp", _encode(_halves((32, 16), RED, BLUE), "BMP"),
        Expectation("accept", "BMP", size=(32, 16), probes=(((4, 8), RED), ((28, 8), BLUE))))

    # --- awkward names --------------------------------------------------------------------------
    for name in ("with space.png", "ünïcödé 名前.png", "new\nline.png", "-leading-dash.png"):
        put(name, _encode(Image.new("RGB", (12, 12), BLUE), "PNG"),
            Expectation("accept", f"file name {name!r}", size=(12, 12), probes=(((6, 6), BLUE),)))

    # --- entries that are not regular files -------------------------------------------------------
    (d / "directory.jpg").mkdir(exist_ok=True)
    cases["directory.jpg"] = Expectation("reject", "a directory named .jpg", reason="not a regular file", kind="dir")
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "fifo.jpg")
        cases["fifo.jpg"] = Expectation("reject", "a FIFO named .jpg (opening it would block forever)",
                                        reason="not a regular file", kind="fifo")
    else:
        omitted["fifo.jpg"] = "no os.mkfifo on this platform"
    os.symlink("loop_b.jpg", d / "loop_a.jpg")
    os.symlink("loop_a.jpg", d / "loop_b.jpg")
    for name in ("loop_a.jpg", "loop_b.jpg"):
        cases[name] = Expectation("reject", "symlink loop a -> b -> a", reason="broken symbolic link", kind="symlink")
    os.symlink("no_such_target.jpg", d / "dangling.jpg")
    cases["dangling.jpg"] = Expectation("reject", "symlink to a missing file", reason="broken symbolic link",
                                        kind="symlink")
    outside = d.parent / f"{d.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(_encode(Image.new("RGB", (12, 12), RED), "PNG"))
    os.symlink(outside / "secret.png", d / "escape.png")
    cases["escape.png"] = Expectation("accept", "symlink to an image outside the folder", size=(12, 12),
                                      probes=(((6, 6), RED),), kind="symlink", in_gallery=False)
    if os.geteuid() != 0:
        put("unreadable.jpg", good_jpeg, Expectation("reject", "no read permission", reason="permission"))
        os.chmod(d / "unreadable.jpg", 0)
    else:
        omitted["unreadable.jpg"] = ("running as root: permission bits do not stop root from reading, so a "
                                     "chmod 000 file is readable; the FIFO, directory and symlink-loop cases "
                                     "cover unopenable entries instead")
    return Corpus(d, cases, omitted, marker)
