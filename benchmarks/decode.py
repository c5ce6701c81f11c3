"""Decoding camera-size JPEGs: full decode vs libjpeg's reduced-scale decode (``open_image(min_side=...)``).

The cub100 photos are 227 px, where decoding is a small share of an index build (embed_throughput.md). A
user's own photos are camera-size, where a full decode costs more than the forward pass. This times, per
photo, read + decode + the eval transform both ways (interleaved repetitions, median), and checks what the
reduced-scale decode does to the retrieval feature: cosine between the two features of each photo, with the
ImageNet EfficientNet-Lite0 encoder (the demo's start). Photos: cub100 photos upscaled to the requested size
and saved as JPEG quality 90 (real camera photos hold more detail; decode time depends mostly on pixel count).

    python -m benchmarks.decode                       # 24 photos at 4032x3024
    python -m benchmarks.decode --size 1600x1200 --name decode_1600
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CUB100, md_table, prepare_process, stats, synthetic_jpegs, write_results


def make_photos(out: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs of ``size`` (w, h) made from cub100 photos (synthetic ones when cub100 is absent)."""
    from PIL import Image

    src = sorted((CUB100 / "images").rglob("*.jpg")) if (CUB100 / "images").is_dir() else []
    if len(src) < n:
        src = sorted(Path(synthetic_jpegs(out / "synth", n)).rglob("*.jpg"))
    step = max(1, len(src) // n)
    paths = []
    for i, p in enumerate(src[::step][:n]):
        with Image.open(p) as im:
            big = im.convert("RGB").resize(size, Image.BICUBIC)
        dst = out / f"photo_{i:03d}.jpg"
        big.save(dst, "JPEG", quality=90)
        paths.append(dst)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24, help="photos (default 24)")
    ap.add_argument("--size", default="4032x3024", help="photo size WxH (default 4032x3024, 12 Mpx)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    ap.add_argument("--encoder", default="efficientnet_lite0", help="encoder for the feature check")
    ap.add_argument("--name", default="decode", help="result file name")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    import numpy as np
    import torch

    from engine.embed import decode_side, embed_batch
    from engine.encoder import create_encoder
    from engine.imageio import open_image

    w, h = (int(v) for v in args.size.lower().split("x"))
    try:
        enc = create_encoder(args.encoder, weights="imagenet").eval()
        weights = "imagenet"
    except Exception:  # noqa: BLE001 - weights not installed: the timing still holds, the cosine less so
        enc = create_encoder(args.encoder).eval()
        weights = "random init"
    tf, side = enc.transform(), decode_side(enc)
    with tempfile.TemporaryDirectory(prefix="ppssl_decode_") as tmp:
        paths = make_photos(Path(tmp), args.images, (w, h))
        ways = {"full": None, "reduced": side}

        def one(min_side):
            return [tf(open_image(p, min_side=min_side)) for p in paths]

        times = {k: [] for k in ways}
        for r in range(args.reps):
            for k in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                t = time.perf_counter()
                one(ways[k])
                times[k].append((time.perf_counter() - t) / len(paths) * 1e3)
        decoded_size = open_image(paths[0], min_side=side).size
        feats = {k: embed_batch(enc, torch.stack(one(v))) for k, v in ways.items()}
    cos = (feats["full"] * feats["reduced"]).sum(1)
    ratio = [f / r for f, r in zip(times["full"], times["reduced"])]
    res = {"photos": len(paths), "size": [w, h], "decoded_size": list(decoded_size), "min_side": side,
           "encoder": args.encoder, "weights": weights, "ms_per_photo": {k: stats(v) for k, v in times.items()},
           "speedup": stats(ratio), "cosine": {"min": float(cos.min()), "median": float(np.median(cos))},
           "raw_ms": times}
    body = (f"{len(paths)} photos at {w}x{h} (cub100 photos upscaled, JPEG q90); per photo: read + decode + eval "
            f"transform to {enc.config.input_size} px, {args.reps} interleaved repetitions (median). Reduced: "
            f"`open_image(min_side={side})`, decoded at {decoded_size[0]}x{decoded_size[1]}. Feature check: "
            f"{args.encoder} ({weights}), cosine between each photo's two features.\n\n" + md_table(
                ["decode", "ms / photo", "range"],
                [[k, round(v["median"], 2), f"{v['min']:.1f}-{v['max']:.1f}"]
                 for k, v in res["ms_per_photo"].items()]) +
            f"\n\nSpeed-up {res['speedup']['median']:.2f}x ({res['speedup']['min']:.2f}-{res['speedup']['max']:.2f}); "
            f"feature cosine median {res['cosine']['median']:.5f}, min {res['cosine']['min']:.5f}.\n")
    paths_out = write_results(args.name, res, body, title="Decoding camera-size JPEGs: full vs reduced scale",
                              info=info, out_dir=args.out)
    print(body)
    print(f"wrote {paths_out[0]} and {paths_out[1]}")
    return 0 if statistics.median(ratio) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
