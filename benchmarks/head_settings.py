"""The retrieval head's settings, checked one at a time on the two validation parts (no training, no test split).

The head (:func:`engine.whitening.fit_neighbour_head`) is fitted on the unlabeled training part's features of the
ImageNet EfficientNet-Lite0 start (the recipe's view: the whole photo at 288 px) and scored leave-one-out on the
held-out part: cub100's ``val_ids.txt`` photos and cars98's held-out 20 % (``benchmarks.weak_start``'s parts).
Each row changes one setting of the current one (10 neighbours, 128 dims, PCA to 512 dims, 300 Adam steps,
lr 1e-3, temperature 0.1). Rule, fixed before the run: a setting changes only if its variant raises the mean mAP
of the two parts by at least 0.5 points and lowers neither part's mAP. A flip-averaged embedding (photo and its
mirror image) is scored too, for information: it is an embedding change, not a head setting.

    python -m benchmarks.head_settings
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import md_table, prepare_process, write_results

CURRENT = {"k": 10, "dim": 128, "pca_dim": 512, "steps": 300, "lr": 1e-3, "temperature": 0.1}
VARIANTS = {"current": {}, "k 5": {"k": 5}, "k 20": {"k": 20}, "dim 64": {"dim": 64}, "dim 256": {"dim": 256},
            "PCA 256": {"pca_dim": 256}, "steps 150": {"steps": 150}, "steps 600": {"steps": 600},
            "lr 3e-3": {"lr": 3e-3}, "temperature 0.05": {"temperature": 0.05},
            "temperature 0.2": {"temperature": 0.2}}
RULE_GAIN = 0.005  # mean mAP gain (fraction) a variant needs


def choose(rows: dict) -> dict:
    """``{setting name: verdict}`` under the rule in the module docstring; ``rows[variant][set]`` = metrics."""
    base = rows["current"]
    out = {}
    for name, per_set in rows.items():
        if name == "current":
            continue
        gains = [per_set[s]["mAP"] - base[s]["mAP"] for s in base]
        out[name] = "adopt" if sum(gains) / len(gains) >= RULE_GAIN and min(gains) >= 0 else "keep current"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--view", default="full288")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(2)
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from benchmarks.weak_start import embed, validation_parts, view_transform
    from engine.encoder import create_encoder
    from engine.metrics import retrieval_metrics
    from engine.whitening import fit_neighbour_head

    enc = create_encoder("efficientnet_lite0", "imagenet", pooling="gap").eval()
    tf, size = view_transform(args.view, enc.config.mean, enc.config.std)
    enc.config.input_size = size
    flip = v2.Compose([v2.RandomHorizontalFlip(1.0), tf])
    rows: dict = {name: {} for name in [*VARIANTS, "flip-averaged embedding, current head"]}
    sizes = {}
    for set_name, (train, held) in validation_parts().items():
        train_f, _ = embed(enc, train, tf)
        held_f, held_y = embed(enc, held, tf)
        sizes[set_name] = (len(train), len(held))

        def score(f):
            m = retrieval_metrics(f, held_y).summary
            return {"rank-1": m["rank-1"], "mAP": m["mAP"]}

        def project(f, head):
            return F.normalize((torch.as_tensor(f) - head[0]) @ head[1], dim=1).numpy()

        for name, change in VARIANTS.items():
            s = {**CURRENT, **change}
            t = time.perf_counter()
            head = fit_neighbour_head(train_f, s["dim"], s["k"], steps=s["steps"], pca_dim=s["pca_dim"],
                                      lr=s["lr"], temperature=s["temperature"], seed=0)
            rows[name][set_name] = {**score(project(held_f, head)), "fit_seconds": round(time.perf_counter() - t, 1)}
            print(set_name, name, rows[name][set_name], flush=True)
        def mean_f(a, b):  # the photo's and its mirror image's features, averaged and L2-normalised
            return F.normalize(torch.as_tensor(a + b), dim=1).numpy()

        train_flip, _ = embed(enc, train, flip)
        held_flip, _ = embed(enc, held, flip)
        head = fit_neighbour_head(mean_f(train_f, train_flip), CURRENT["dim"], CURRENT["k"], seed=0)
        rows["flip-averaged embedding, current head"][set_name] = score(project(mean_f(held_f, held_flip), head))
    verdicts = choose({k: v for k, v in rows.items() if k in VARIANTS})
    sets = list(sizes)
    table = md_table(["variant", *(f"{s} rank-1 / mAP %" for s in sets), "mean mAP Δ", "verdict"],
                     [[name, *(f"{100 * r[s]['rank-1']:.1f} / {100 * r[s]['mAP']:.1f}" for s in sets),
                       f"{100 * sum(r[s]['mAP'] - rows['current'][s]['mAP'] for s in sets) / len(sets):+.2f}",
                       verdicts.get(name, "" if name == "current" else "information only")]
                      for name, r in rows.items()])
    body = ("Parts: " + ", ".join(f"{s} ({a} unlabeled training photos, {b} held-out)" for s, (a, b) in sizes.items())
            + f". Start: ImageNet Lite0, view `{args.view}`, GAP. Current setting: {CURRENT}. Rule (fixed before the "
            f"run): adopt a variant only if the mean mAP gain is at least {100 * RULE_GAIN:.1f} points and neither "
            "part's mAP falls. One seed (the head's batch sampling; a part of at most 2,048 photos is one full batch). "
            "No test split is read.\n\n" + table)
    write_results("head_settings", {"current": CURRENT, "rows": rows, "verdicts": verdicts, "sizes": sizes}, body,
                  title="Retrieval head settings on the validation parts", info=info, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
