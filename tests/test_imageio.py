"""The robust image opener: odd-but-valid images decode to the right RGB; bad ones raise ImageLoadError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.imageio import ImageLoadError, open_image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_jpeg_roundtrip(tmp_path):
    p = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(p, quality=95)
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert abs(np.asarray(img)[..., 0].mean() - 200) < 3


def test_cmyk_jpeg_becomes_rgb():
    data = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    arr = np.asarray(open_image(data)).astype(int)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60 and arr[..., 2].mean() < 60


def test_16bit_png_is_rescaled_not_clipped():
    arr16 = np.full((8, 8), 32768, dtype=np.uint16)
    data = _save(Image.fromarray(arr16), "PNG")
    arr = np.asarray(open_image(data))
    assert arr.shape == (8, 8, 3)
    assert 120 <= arr.mean() <= 135  # half of the 16-bit range -> about half of 255


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    arr = np.asarray(open_image(_save(rgba, "PNG")))
    assert (arr == 255).all()


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    arr = np.asarray(open_image(_save(p, "PNG", transparency=0)))
    assert (arr == 255).all()


def test_grayscale_becomes_three_equal_channels():
    arr = np.asarray(open_image(_save(Image.new("L", (5, 5), 77), "PNG")))
    assert arr.shape == (5, 5, 3) and (arr == 77).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = open_image(_save(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    arr = np.asarray(open_image(buf.getvalue())).astype(int)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 50


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty"),
    (b"this is not an image at all", "not a recognised"),
])
def test_bad_bytes(payload, reason):
    with pytest.raises(ImageLoadError, match=reason):
        open_image(payload)


def test_truncated_jpeg_names_file(tmp_path):
    data = _save(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as err:
        open_image(p)
    assert str(p) in str(err.value)


def test_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.jpg"):
        open_image(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        open_image(tmp_path)


def test_decompression_bomb_is_refused():
    data = _save(Image.new("L", (4000, 4000)), "PNG")  # 16 Mpx, compresses to a few KB
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        open_image(data, max_pixels=1_000_000)
    assert open_image(data, max_pixels=None).size == (4000, 4000)


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like image (gradients + blobs): DCT scaling on noise would say little."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    arr = np.stack([np.sin(xx / (40 + 30 * rng.random())) * 90 + np.cos(yy / (50 + 20 * c)) * 90 + 128
                    for c in range(3)], -1)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size,expect", [((4000, 3000), (500, 375)), ((3000, 4000), (375, 500)),
                                         ((1000, 513), (500, 257)), ((600, 500), (600, 500)),
                                         ((511, 2000), (511, 2000))])
def test_large_jpeg_decodes_at_reduced_scale_keeping_the_short_side(size, expect):
    data = _save(_photo(*size), "JPEG", quality=90)
    img = open_image(data, min_side=256)
    assert img.size == expect and img.mode == "RGB" and min(img.size) >= 256
    assert open_image(data).size == size  # full size unless asked


def test_reduced_scale_follows_exif_orientation_and_skips_other_formats():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = _save(_photo(2400, 1200), "JPEG", quality=90, exif=exif)
    assert open_image(data, min_side=256).size == (300, 600)  # 1/4 scale, then upright
    png = _save(_photo(1200, 900), "PNG")
    assert open_image(png, min_side=256).size == (1200, 900)  # no DCT scaling outside JPEG


def test_reduced_scale_pixels_match_a_full_decode_resized():
    """The DCT-scaled decode is a downscale of the same photo: close to Pillow's own resize of the full decode."""
    data = _save(_photo(2048, 1536, seed=3), "JPEG", quality=92)
    small = np.asarray(open_image(data, min_side=256), dtype=np.float32)
    full = np.asarray(open_image(data).resize((small.shape[1], small.shape[0]), Image.BOX), dtype=np.float32)
    assert np.abs(small - full).mean() < 2.0
