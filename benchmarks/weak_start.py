"""Where the ImageNet start is weak, measured without training, on the two validation parts only.

For cars98 (the 20 % per-class holdout that ``ppssl train --images`` carves out) and cub100 (``val_ids.txt``,
the validation part of the train split), with ImageNet EfficientNet-Lite0 under several views of the photo
(centre crop of a short-side resize, the whole photo squashed to a square, the whole photo padded to a square;
224 and 288 px): leave-one-out rank-1 / mAP on the held-out part with GAP, with PCA whitening and with the
retrieval head (both fitted on the unlabeled training part), and **neighbour precision**: the share of each
held-out photo's k nearest held-out neighbours that are of its class (labels of the held-out part only), for
plain kNN and for mutual kNN (the neighbour pairs each of which is among the other's k nearest).

    python -m benchmarks.weak_start [--views center224,full224,...] [--out benchmarks/results]
    python -m benchmarks.weak_start --backbone efficientnet_lite2 --views full260,full320,full352,full384 \
        --name weak_start_lite2        # the retrieval size of EfficientNet-Lite2, chosen as Lite0's was
    python -m benchmarks.weak_start --views full288,gray-full288 --name weak_start_gray   # colour-blind features

No test split is read. Results: ``benchmarks/results/weak_start.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import CUB100, md_table, prepare_process, write_results

CARS98 = CUB100.parent / "cars98"
VIEWS = ("center224", "full224", "pad224", "center288", "full288", "full320", "full352")


def validation_parts() -> dict:
    """``{name: (train part, held-out part)}`` of the validation sets present on this machine."""
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout

    parts = {}
    if (CARS98 / "images").is_dir():
        parts["cars98"] = split_holdout(build_dataset("images", CARS98 / "images", split="train"), "0.2")
    if (CUB100 / "val_ids.txt").is_file():
        parts["cub100"] = split_holdout(build_dataset("cub200", CUB100, split="train"), str(CUB100 / "val_ids.txt"))
    return parts


def view_transform(view: str, mean, std):
    """PIL -> normalised tensor for a view name such as ``center224`` / ``full288`` / ``pad224``; a ``gray-``
    prefix (``gray-full288``) makes the photo grey first (colour-blind features: a car model comes in any paint)."""
    from engine.preprocess import view_transform as vt

    gray = view.startswith("gray-")
    view = view.removeprefix("gray-")
    mode, size = view.rstrip("0123456789"), int(view.lstrip("abcdefghijklmnopqrstuvwxyz"))
    tf = vt(mode, size, mean, std)
    if gray:
        from torchvision.transforms import v2

        tf = v2.Compose([v2.Lambda(lambda im: im.convert("L").convert("RGB")), tf])
    return tf, size


def embed(encoder, dataset, transform) -> tuple[np.ndarray, np.ndarray]:
    """GAP features (L2-normalised) and labels of ``dataset`` under ``transform``."""
    from engine.datasets.holdout import subset
    from engine.embed import extract_features

    ds = subset(dataset, list(range(len(dataset))))
    ds.transform = transform
    return extract_features(encoder, ds, batch_size=64, num_workers=1, progress=False)


def neighbour_precision(feats: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Share of same-class photos among each photo's k nearest others (kNN), and among its mutual kNN."""
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    same = labels[nn] == labels[:, None]
    member = np.zeros(sim.shape, bool)
    np.put_along_axis(member, nn, True, axis=1)
    mutual = member & member.T
    mutual_same = mutual & (labels[:, None] == labels[None, :])
    return {"knn": float(same.mean()), "mutual": float(mutual_same.sum() / max(1, mutual.sum())),
            "mutual_per_photo": float(mutual.sum(1).mean())}


def score(train_f: np.ndarray, held_f: np.ndarray, held_y: np.ndarray) -> dict:
    """Held-out leave-one-out figures for GAP, PCA whitening and the retrieval head (fitted on ``train_f``)."""
    import torch
    import torch.nn.functional as F

    from engine.metrics import retrieval_metrics
    from engine.whitening import fit_neighbour_head, fit_whitening

    def project(mean, proj):
        return F.normalize((torch.as_tensor(held_f) - mean) @ proj, dim=1).numpy()

    out = {}
    t = time.perf_counter()
    spaces = {"gap": held_f, "pca128": project(*fit_whitening(train_f, 128)),
              "head": project(*fit_neighbour_head(train_f, 128, 10))}
    out["fit_seconds"] = round(time.perf_counter() - t, 1)
    for name, f in spaces.items():
        m = retrieval_metrics(f, held_y).summary
        out[name] = {"rank-1": m["rank-1"], "mAP": m["mAP"],
                     **{f"P@{k}": neighbour_precision(f, held_y, k) for k in (1, 5)}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", default=",".join(VIEWS))
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbone", default="efficientnet_lite0", help="a backbone with ImageNet weights")
    ap.add_argument("--name", default="weak_start", help="result file name")
    args = ap.parse_args(argv)
    info = prepare_process(args.threads)
    from engine.encoder import create_encoder

    enc = create_encoder(args.backbone, "imagenet", pooling="gap").eval()
    results = {}
    for name, (train, held) in validation_parts().items():
        results[name] = {"train": len(train), "held_out": len(held), "classes": len(set(y for _, y in held.samples))}
        for view in args.views.split(","):
            tf, size = view_transform(view, enc.config.mean, enc.config.std)
            enc.config.input_size = size
            t = time.perf_counter()
            train_f, _ = embed(enc, train, tf)
            held_f, held_y = embed(enc, held, tf)
            row = score(train_f, held_f, held_y)
            row["embed_seconds"] = round(time.perf_counter() - t, 1)
            results[name][view] = row
            print(name, view, {k: (v["rank-1"], v["mAP"]) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    body = []
    for name, res in results.items():
        body.append(f"## {name}: {res['train']} training photos (unlabeled), {res['held_out']} held-out photos of "
                    f"{res['classes']} classes\n")
        rows = []
        for view in args.views.split(","):
            r = res[view]
            for space in ("gap", "pca128", "head"):
                s = r[space]
                rows.append([view, space, f"{100 * s['rank-1']:.1f}", f"{100 * s['mAP']:.1f}",
                             f"{100 * s['P@1']['knn']:.1f}", f"{100 * s['P@5']['knn']:.1f}",
                             f"{100 * s['P@5']['mutual']:.1f}", f"{s['P@5']['mutual_per_photo']:.2f}"])
        body.append(md_table(["view", "space", "rank-1 %", "mAP %", "kNN precision @1 %", "@5 %",
                              "mutual-5NN precision %", "mutual 5-NN per photo"], rows))
        body.append("")
    body.append("Views: `center` = short side resized to 256/224 of the size, centre crop (the eval transform); "
                "`full` = the whole photo resized to a square (aspect not kept); `pad` = the whole photo, long side "
                "resized to the size, padded to a square with the mean colour; `gray-`: the photo made grey first. "
                "Whitening and head are fitted on the training part without labels; precision uses the held-out "
                "part's labels only. No test split.")
    results["backbone"] = args.backbone
    write_results(args.name, results, "\n".join(body),
                  title=f"Where the ImageNet start is weak (no training): {args.backbone}",
                  info=info, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
