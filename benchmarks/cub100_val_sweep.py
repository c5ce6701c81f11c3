"""How configs/finetune_lite0.yaml was chosen: one row of the validation sweep on cub100 (never the test split).

Trains MoCo v2 (Lite0 from ImageNet, 224 px, 2 epochs) on cub100's train split minus ``val_ids.txt`` with the
base settings below plus ``KEY=VALUE`` overrides, then scores leave-one-out retrieval on the 583 validation
images: GAP, GeM (p 3) and attention pooling, each plain and PCA-whitened to 128 dims, and the retrieval head
(``engine.whitening.fit_neighbour_head``, k 10) — whitening and head fitted on the 2,320 training images. The
row ``imagenet`` scores the untouched start. Rows are appended to ``benchmarks/results/cub100_finetune_val.jsonl``
(``benchmarks.common.append_jsonl``).

    python -m benchmarks.cub100_val_sweep imagenet
    python -m benchmarks.cub100_val_sweep l2_nn10 frozen_through=layer2 neighbour_positives=10
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common import CUB100, REPO, append_jsonl

#: the starting recipe of the sweep (a new user's measured MoCo v2 settings; issue "PP-SSL that pays")
BASE = dict(dataset="cub200", backbone="efficientnet_lite0", weights="imagenet", method="moco", input_size=224,
            batch_size=32, lr=0.003, epochs=2, warmup_epochs=0.3, color_jitter=0.2, hue_jitter=0.0,
            queue_size=4096, moco_momentum=0.99, temperature=0.2, proj_hidden=1280, proj_dim=128, freeze_bn=True,
            eval_every=0, workers=1, threads=2, progress=False, eval_split="holdout")


def pooled(encoder, dataset):
    """GAP, GeM and attention-pooled L2-normalised features of a dataset, one forward pass per batch."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    out, labels = {"gap": [], "gem": [], "attn": []}, []
    with torch.inference_mode():
        for x, y, _ in DataLoader(dataset, batch_size=64, num_workers=1):
            f = encoder.forward_features(x.contiguous(memory_format=torch.channels_last)).float()
            out["gap"].append(F.normalize(f.mean((2, 3)), dim=1))
            out["gem"].append(F.normalize(f.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3), dim=1))
            out["attn"].append(F.normalize(encoder.pool(f, "attention"), dim=1))
            labels.append(np.asarray(y))
    return {k: torch.cat(v) for k, v in out.items()}, np.concatenate(labels)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, sets = argv[0], argv[1:]
    import torch
    import torch.nn.functional as F

    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout
    from engine.encoder import create_encoder
    from engine.metrics import retrieval_metrics
    from engine.runtime import tune_allocator
    from engine.whitening import fit_neighbour_head, fit_whitening
    from training.config import build_config, parse_overrides
    from training.trainer import Trainer

    tune_allocator()
    torch.set_num_threads(2)
    root, val = str(CUB100), str(CUB100 / "val_ids.txt")
    out = REPO / "runs" / "cub100_val" / name
    minutes = 0.0
    if name == "imagenet":
        enc = create_encoder("efficientnet_lite0", weights="imagenet")
    else:
        cfg = build_config(None, {**BASE, **parse_overrides(sets)}, {"root": root, "out": str(out), "holdout": val})
        t0 = time.time()
        Trainer(cfg).fit()
        minutes = (time.time() - t0) / 60
        enc = create_encoder(str(out / "last"))
        enc.set_whitening(None)
    enc = enc.eval().to(memory_format=torch.channels_last)
    fit, held = split_holdout(build_dataset("cub200", root, split="train", transform=enc.transform()), val)
    vf, y = pooled(enc, held)
    ff, _ = pooled(enc, fit)
    row = {"name": name, "sets": sets, "minutes": round(minutes, 2)}

    def score(key, f):
        s = retrieval_metrics(F.normalize(torch.as_tensor(f), dim=1).numpy(), y).summary
        row[key] = [round(100 * s["rank-1"], 2), round(100 * s["mAP"], 2)]

    for pool in ("gap", "gem", "attn"):
        score(pool, vf[pool])
        mean, proj = fit_whitening(ff[pool], 128)
        score(f"{pool}+w128", (vf[pool] - mean) @ proj)
    mean, proj = fit_neighbour_head(ff["gap"], 128, 10)
    score("gap+head", (vf["gap"] - mean) @ proj)
    print(json.dumps(row), flush=True)
    append_jsonl("cub100_finetune_val", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
