"""Real photos, CPU: ImageNet EfficientNet-Lite0 on cub100, MoCo v2 vs MoCo v2 + IADM at equal budget.

Both runs use ``configs/cub100_lite0.yaml`` (plus the same ``--set`` overrides); the ImageNet-only encoder is
measured with the same evaluation code at the training resolution, with GAP and with an (untrained) attention
head, next to the README's independent reference (224 px, GAP: rank-1 75.9 %, rank-5 92.8 %, mAP 41.3 %).
Writes ``benchmarks/results/cub100.md`` (and ``.json``). Resumable like any ``ppssl train`` run.

    python -m benchmarks.cub100_train --root ../shared/data/cub100 --work runs/cub100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import (CUB100, REPO, cached_json, machine_info, source_version, to_jsonable, train_once,
                               tree_listing, write_results)

CONFIG = REPO / "configs" / "cub100_lite0.yaml"
README_REF = {"rank-1": 0.759, "rank-5": 0.928, "mAP": 0.413}


def imagenet_baseline(root: str, sizes: list[int], threads: int) -> dict:
    import torch

    from engine.datasets import build_dataset
    from engine.encoder import create_encoder
    from training.evaluate import retrieval_eval

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for size in sorted(set(sizes)):
        enc = create_encoder("efficientnet_lite0", "imagenet", input_size=size)
        ds = build_dataset("cub200", root, split="test", transform=enc.transform())
        out[size] = retrieval_eval(enc, ds, torch.device("cpu"), batch_size=64, num_workers=1, progress=True)
    return out


def bn_only(root: str, input_size: int, threads: int, seed: int = 0) -> dict:
    """Diagnostic: the ImageNet encoder with only its BatchNorm running statistics re-estimated (train-mode
    forward passes, no gradient, no SGD) over one epoch of MoCo v2 training views, then evaluated."""
    import torch

    from engine.datasets import build_dataset
    from engine.encoder import create_encoder
    from training.augment import EpochSampler, TwoViewDataset, moco_v2_transform
    from training.evaluate import retrieval_eval

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    enc = create_encoder("efficientnet_lite0", "imagenet", input_size=input_size)
    base = build_dataset("cub200", root, split="train")
    views = TwoViewDataset(base, moco_v2_transform(input_size, enc.config.mean, enc.config.std), seed=seed)
    loader = torch.utils.data.DataLoader(views, batch_size=32, sampler=EpochSampler(len(base), 32, seed),
                                         num_workers=1, drop_last=True)
    enc.train()
    with torch.no_grad():
        for (x_q, _x_k), _ in loader:
            enc.forward_features(x_q)
    test = build_dataset("cub200", root, split="test", transform=enc.transform())
    return retrieval_eval(enc, test, torch.device("cpu"), batch_size=64, num_workers=1)


def fmt(m: dict) -> str:
    return f"{100 * m['rank-1']:.1f} | {100 * m['rank-5']:.1f} | {100 * m['mAP']:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(CUB100), help="cub100 directory")
    ap.add_argument("--work", default="runs/cub100", help="working directory")
    ap.add_argument("--methods", default="moco,moco+iadm", help="methods to train")
    ap.add_argument("--variants", default="plain,frozen-bn",
                    help="comma-separated: plain (BatchNorm statistics train) and/or frozen-bn (`--freeze-bn`), each "
                         "optionally with its own overrides, e.g. frozen-bn@lr=0.003; every method runs in every variant")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig override for every run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the baseline evaluation")
    ap.add_argument("--bn-diagnostic", action="store_true",
                    help="also evaluate ImageNet lite0 whose BN statistics alone were re-estimated on training views")
    ap.add_argument("--ref-224", action="store_true",
                    help="also evaluate the ImageNet-only encoder at 224 px (cross-check of the README figure)")
    ap.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "cub100.md"),
                    help="markdown output, with .json beside it ('' = print only)")
    args = ap.parse_args(argv)
    info = machine_info()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    for o in args.overrides:
        k, v = o.split("=", 1)
        cfg[k] = yaml.safe_load(v)
    input_size = int(cfg["input_size"])
    t0 = time.perf_counter()
    # scores are reused only under the same sizes, data and code (benchmarks.common.cached_json)
    sizes = sorted({input_size, *([224] if args.ref_224 else [])})
    listing, code = tree_listing(Path(args.root)), source_version()
    base = cached_json(work / "imagenet_baseline.json", {"sizes": sizes, "data": listing, "code": code},
                       lambda: {str(k): v for k, v in imagenet_baseline(args.root, sizes, args.threads).items()})
    base = {int(k): v for k, v in base.items()}
    bn = None
    if args.bn_diagnostic:
        bn = cached_json(work / "bn_only.json", {"size": input_size, "data": listing, "code": code},
                         lambda: bn_only(args.root, input_size, args.threads))
    reports = {}
    runs = [(m, v) for v in args.variants.split(",") if v for m in args.methods.split(",") if m]
    for method, variant in runs:
        kind, *extra = variant.split("@")
        if kind not in ("plain", "frozen-bn") or any("=" not in e for e in extra):
            raise SystemExit(f"unknown variant {variant!r} (plain or frozen-bn, then @key=value overrides)")
        frozen = kind == "frozen-bn"
        name = method + (", BN frozen" if frozen else "") + "".join(f", {e}" for e in extra)
        out = work / (method.replace("+", "_") + ("_frozenbn" if frozen else "")
                      + "".join("_" + e.replace("=", "") for e in extra))
        train_args = ["--config", str(CONFIG), "--root", args.root, "--method", method]
        for o in args.overrides + extra:
            train_args += ["--set", o]
        if frozen:
            train_args.append("--freeze-bn")
        reports[name] = train_once(out, train_args)
    total = time.perf_counter() - t0

    lines = [
        f"Wall time of this invocation {total / 60:.1f} min (finished runs are reused).",
        "",
        "Data: `../shared/data/cub100` (100 CUB species, 2,903 train / 2,999 test photos). Training on the train split "
        "without labels, `configs/cub100_lite0.yaml`" + (f" with `--set {' --set '.join(args.overrides)}`"
                                                           if args.overrides else "")
        + f": {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, {input_size} px crops, lr {cfg['lr']}, queue "
        f"{cfg['queue_size']}, m {cfg['moco_momentum']}. Same steps, batch and resolution for every run; \"BN frozen\" "
        "runs add `--freeze-bn` (the backbone's BatchNorm running statistics stay ImageNet's; its affine weights "
        "train), and a variant's `key=value` overrides (e.g. lr=0.003) apply to both methods of that variant, so "
        "MoCo v2 and + IADM always share one budget.",
        "",
        "Retrieval: leave-one-out over the 2,999 test images (resize 256/224·size, centre crop), L2-normalised "
        "features, rank-1 / rank-5 / mAP in %.",
        "",
        "| encoder | px | pooling | epoch | rank-1 | rank-5 | mAP |",
        "|---|---|---|---|---|---|---|",
        f"| ImageNet only (README, independent measurement) | 224 | GAP | – | {fmt(README_REF)} |",
    ]
    for size, res in sorted(base.items()):
        lines.append(f"| ImageNet only (this evaluation code) | {size} | GAP | – | {fmt(res['gap'])} |")
        lines.append(f"| ImageNet only, untrained attention head | {size} | attention | – | {fmt(res['attention'])} |")
    if bn:
        for pooling in ("gap", "attention"):
            lines.append(f"| ImageNet, BN statistics re-estimated on 1 epoch of MoCo views (no SGD) | {input_size} | "
                         f"{pooling} | – | {fmt(bn[pooling])} |")
    for method, rep in reports.items():
        for label in ("last", "best"):
            entry = rep.get(label)
            if not entry:
                continue
            tag = "last epoch" if label == "last" else "best epoch on test"
            for pooling in ("gap", "attention"):
                mark = " (ckpt)" if pooling == rep["pooling"] else ""
                lines.append(f"| {method}, {tag} | {input_size} | {pooling}{mark} | {entry['epoch']} | "
                             f"{fmt(entry['metrics'][pooling])} |")
    lines += ["", "Wall time per training run (shared 2-core CPU): "
              + ", ".join(f"{m} {(r['wall_seconds'] or float('nan')) / 60:.1f} min" for m, r in reports.items()) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if args.md:
        md = Path(args.md)
        data = {"config": cfg, "overrides": args.overrides, "imagenet": base, "bn_only": bn, "runs": reports,
                "invocation_minutes": total / 60}
        write_results(md.stem, to_jsonable(data), text, out_dir=md.parent, info=info,
                      title="cub100: MoCo v2 vs MoCo v2 + IADM from ImageNet EfficientNet-Lite0 (CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
