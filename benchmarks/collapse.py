"""The near-duplicate threshold of ``collapse`` (API and app), chosen on cub100's validation part.

Near-duplicates are made from each of the 583 validation photos the way copies arise in a collection (JPEG
quality 60; a 70 % resize then quality 85; a 4 % border crop; a horizontal flip is *not* a copy) and embedded
with the default encoder (ImageNet EfficientNet-Lite0, its default view), plain and through a head fitted on the
validation gallery without labels (the default adapted index). For each space: the cosine of every photo to each
of its copies, and the cosine of every photo to its nearest *other* photo of the gallery (same species or not:
collapsing two different photos would hide a result). The threshold is the highest cosine that still collapses
99 % of the copies in both spaces, and the table shows how many distinct photos it would wrongly collapse.

    python -m benchmarks.collapse        -> benchmarks/results/collapse.{json,md}
"""

from __future__ import annotations

import argparse
import io

import numpy as np

from benchmarks.common import CUB100, md_table, prepare_process, write_results

COPIES = ("jpeg q60", "resize 70% + q85", "crop 4% + q85")


def copies(image):
    from PIL import Image

    def jpeg(im, q):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    w, h = image.size
    d = int(round(0.04 * min(w, h)))
    return [jpeg(image, 60), jpeg(image.resize((max(1, int(w * 0.7)), max(1, int(h * 0.7))), Image.BICUBIC), 85),
            jpeg(image.crop((d, d, w - d, h - d)), 85)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    info = prepare_process(2)
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout
    from engine.embed import embed_pil
    from engine.encoder import create_encoder
    from engine.imageio import open_image
    from indexer.adapt import AdaptSettings, Projector, fit_head

    enc = create_encoder("efficientnet_lite0", "imagenet", pooling="gap").eval()
    _, val = split_holdout(build_dataset("cub200", CUB100, split="train"), str(CUB100 / "val_ids.txt"))
    images = [open_image(p) for p, _ in val.samples]
    base = embed_pil(enc, images)
    made = [embed_pil(enc, [c[j] for c in map(copies, images)]) for j in range(len(COPIES))]
    mean, proj, _ = fit_head(base, AdaptSettings())
    head = Projector(mean, proj)
    spaces = {"plain": (base, made), "adapted": (head(base), [head(m) for m in made])}
    stats, dup_all = {}, {}
    for name, (b, ms) in spaces.items():
        dup = np.concatenate([(b * m).sum(1) for m in ms])
        sim = b @ b.T
        np.fill_diagonal(sim, -np.inf)
        nearest_other = sim.max(1)
        dup_all[name] = dup
        stats[name] = {"copy_cosine_p1": float(np.percentile(dup, 1)), "copy_cosine_min": float(dup.min()),
                       "copy_cosine_median": float(np.median(dup)),
                       "nearest_other_p99": float(np.percentile(nearest_other, 99)),
                       "nearest_other_max": float(nearest_other.max()), "nearest_other": nearest_other.tolist()}
    thresholds, rows = {}, []
    for name, s in stats.items():
        other = np.asarray(s.pop("nearest_other"))
        t = float(np.floor(100 * (s["copy_cosine_p1"] + s["nearest_other_max"]) / 2) / 100)
        thresholds[name] = t
        s["threshold"] = t
        s["copies_collapsed"] = float((dup_all[name] >= t).mean())
        s["distinct_collapsed"] = float((other >= t).mean())
        rows.append([name, f"{s['copy_cosine_min']:.3f}", f"{s['copy_cosine_p1']:.3f}", f"{s['copy_cosine_median']:.3f}",
                     f"{s['nearest_other_p99']:.3f}", f"{s['nearest_other_max']:.3f}", f"{t:.2f}",
                     f"{100 * s['copies_collapsed']:.1f}", f"{100 * s['distinct_collapsed']:.2f}"])
    body = (f"cub100 validation part ({len(images)} photos, {len(COPIES)} copies each: {', '.join(COPIES)}); encoder "
            f"`efficientnet_lite0:imagenet:gap@{enc.config.input_size}/{enc.config.view}`, plain and adapted (head "
            "fitted on these photos, no labels). No test split.\n\n"
            + md_table(["space", "copy cosine min", "copy p1", "copy median", "nearest other photo p99",
                        "nearest other max", "threshold", "copies collapsed %", "distinct photos collapsed %"],
                       rows)
            + "\n\nThe two spaces need different thresholds (a whitened head spreads the gallery out), so each gets "
              "its own: the midpoint between the 1st percentile of the copy cosines and the nearest distinct photo's "
              "highest cosine, rounded down. **Chosen** (`indexer/controls.py` `COLLAPSE_COSINE`): plain "
              f"{thresholds['plain']}, whitened (an adapted index, or an encoder ending in a retrieval head) "
              f"{thresholds['adapted']}.")
    write_results("collapse", {"thresholds": thresholds, "spaces": stats}, body,
                  title="Near-duplicate threshold of collapse (cub100 validation)", info=info, out_dir=args.out)
    print(f"thresholds {thresholds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
