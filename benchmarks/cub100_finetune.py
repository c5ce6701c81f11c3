"""cub100 fine-tuning table: ImageNet-only / MoCo v2 / + IADM / + AIS / PP-SSL, seeds, paired differences.

Every trained row runs `ppssl train` with the same recipe (configs/finetune_lite0.yaml) and budget; only the
method differs. Rows are evaluated at the recipe's ``eval_size`` and view (every checkpoint embeds so),
leave-one-out, on the test split (``--split test``: trained on the whole train split) or on the validation part
of the train split (``--split val``: trained on the rest; this is where settings are chosen). The ImageNet-only row is the untouched start, with and without the
recipe's learned whitening (fitted on the same training images), so the table separates what training adds
from what the whitening adds.

    python -m benchmarks.cub100_finetune --root ../shared/data/cub100 --work runs/cub100_ft --split test
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import CUB100, REPO, cached_json, machine_info, md_table, train_once, write_results

ROWS = {  # name -> ppssl train --method
    "MoCo v2": "moco",
    "+ IADM": "moco+iadm",
    "+ AIS": "moco+ais",
    "PP-SSL": "ppssl",
}


def evaluate(encoder, root: str, split: str, val_ids: str, recipe: dict | None = None) -> dict:
    """Leave-one-out rank-1/mAP (percent) on the evaluation part; with ``recipe``, first the recipe's whitening /
    retrieval head fitted on the training part (what `ppssl train` does after its last epoch)."""
    import torch

    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout
    from engine.embed import extract_features
    from engine.metrics import retrieval_metrics
    from engine.whitening import fit_neighbour_head, fit_whitening

    torch.set_num_threads(2)
    tf = encoder.transform()
    train = build_dataset("cub200", root, split="train", transform=tf)
    if split == "val":
        fit_part, eval_part = split_holdout(train, val_ids)
    else:
        fit_part, eval_part = train, build_dataset("cub200", root, split="test", transform=tf)
    if recipe and recipe.get("whiten_dim"):
        feats, _ = extract_features(encoder, fit_part, batch_size=64, num_workers=1, progress=False)
        dim, k = int(recipe["whiten_dim"]), int(recipe.get("whiten_neighbours", 0))
        encoder.set_whitening(*(fit_neighbour_head(feats, dim, k) if k else
                                fit_whitening(feats, dim, float(recipe.get("whiten_power", 0.5)))))
    feats, labels = extract_features(encoder, eval_part, batch_size=64, num_workers=1, progress=False)
    s = retrieval_metrics(feats, labels).summary
    return {"rank1": 100 * s["rank-1"], "map": 100 * s["mAP"], "rank5": 100 * s["rank-5"], "n": int(len(labels))}


def evaluated(cache: Path, score, key: dict) -> dict:
    """``score()`` once per ``key`` (what the figures depend on: the run's own key or the start encoder, the split,
    the head settings and the code version), kept in ``cache`` with the key (:func:`benchmarks.common.cached_json`),
    so extending a table (more rows or seeds) does not evaluate the runs already in it again, and a cache made by
    anything else is scored afresh, never reused."""
    return cached_json(cache, key, score, field="metrics")


def eval_key(what, split: str, recipe: dict | None = None) -> dict:
    """The key of :func:`evaluated`: ``what`` (the start encoder's settings or a run's ``run_key.json``), the split,
    the head settings the score fits (``recipe``) and the library's code version."""
    from benchmarks.common import source_version

    head = {k: recipe.get(k) for k in ("whiten_dim", "whiten_neighbours", "whiten_power")} if recipe else None
    return {"what": what, "split": split, "head": head, "code": source_version()}


def summarise(name: str, method: str, runs: list[dict]) -> dict:
    r1, mp = [r["rank1"] for r in runs], [r["map"] for r in runs]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    mins = [r.get("minutes") for r in runs if r.get("minutes") is not None]
    return {"name": name, "method": method, "seeds": [r["seed"] for r in runs],
            "rank1_mean": round(statistics.mean(r1), 2), "rank1_std": round(sd(r1), 2),
            "map_mean": round(statistics.mean(mp), 2), "map_std": round(sd(mp), 2),
            "minutes_per_run": round(statistics.mean(mins), 1) if mins else 0.0,
            "per_seed": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]}


def write_report(args, recipe: dict, results: list[dict], info: dict | None = None) -> None:
    """Paired per-seed differences against MoCo v2, then the JSON and the markdown table (rewritten after
    every run, so the files always show what has been measured)."""
    moco = next((r for r in results if r["method"] == "moco"), None)
    for r in results:
        if moco and r["method"] not in ("none", "moco"):
            pairs = [(a, b) for a in r["per_seed"] for b in moco["per_seed"] if a["seed"] == b["seed"]]
            r["paired_vs_moco"] = {"rank1": [round(a["rank1"] - b["rank1"], 2) for a, b in pairs],
                                   "map": [round(a["map"] - b["map"], 2) for a, b in pairs]}
    stem = args.name or ("cub100_finetune" if args.split == "test" else "cub100_finetune_val")
    doc = {"eval_px": args.eval_px, "view": args.view, "split": args.split, "recipe": recipe,
           "teacher": args.teacher, "rows": results}
    table = md_table(["row", "seeds", "rank-1 %", "mAP %", "paired Δ vs MoCo v2 (rank-1 / mAP)", "min/run"], [
        [r["name"], len(r["seeds"]), f"{r['rank1_mean']:.1f} ± {r['rank1_std']:.1f}",
         f"{r['map_mean']:.1f} ± {r['map_std']:.1f}",
         (" ".join(f"{a:+.1f}/{b:+.1f}" for a, b in zip(r["paired_vs_moco"]["rank1"], r["paired_vs_moco"]["map"]))
          if "paired_vs_moco" in r else ""), r["minutes_per_run"]] for r in results])
    where = ("test split (2,999 images), trained on the whole train split" if args.split == "test" else
             "validation part of the train split (val_ids.txt, 583 images), trained on the other 2,320")
    text = (f"Leave-one-out retrieval at {args.eval_px} px ({args.view} view) on the {where}. "
            f"Recipe `{Path(args.config).name}`, AIS teacher `{args.teacher}`; the same recipe and budget for every "
            f"trained row; mean ± sd over the seeds done (of {args.seeds}).\n\n{table}\n")
    write_results(stem, doc, text, title="cub100 fine-tuning: what training adds to the ImageNet start", info=info)
    print(text, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(CUB100))
    ap.add_argument("--work", default="runs/cub100_ft")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names to train")
    ap.add_argument("--config", default=str(REPO / "configs" / "finetune_lite0.yaml"))
    ap.add_argument("--teacher", default="imagenet-text")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    ap.add_argument("--name", default=None, help="result file stem (default cub100_finetune[_val])")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: tabulate the runs already finished under --work (rows may differ in seeds)")
    args = ap.parse_args(argv)
    info = machine_info()

    from engine.encoder import create_encoder
    from engine.runtime import tune_allocator
    from training.config import load_yaml

    tune_allocator()
    recipe = load_yaml(args.config)
    val_ids = str(Path(args.root) / "val_ids.txt")
    work = Path(args.work) / args.split
    work.mkdir(parents=True, exist_ok=True)
    start = lambda: create_encoder("efficientnet_lite0", weights="imagenet",  # noqa: E731
                                   input_size=recipe.get("eval_size") or None, view=recipe.get("view"))
    plain = start()  # scored as it is; the head row gets a fresh one (evaluate fits the head into it)
    start_cfg = plain.config.to_dict()
    args.eval_px, args.view = start_cfg["input_size"], start_cfg["view"]
    results = [summarise("ImageNet only", "none", [{"seed": 0, "minutes": 0.0, **evaluated(
        work / "imagenet_eval.json", lambda: evaluate(plain, args.root, args.split, val_ids),
        eval_key(start_cfg, args.split))}])]
    if recipe.get("whiten_dim"):
        label = "retrieval head" if recipe.get("whiten_neighbours") else "whitening"
        results.append(summarise(f"ImageNet only + {label}", "none", [{"seed": 0, "minutes": 0.0, **evaluated(
            work / "imagenet_head_eval.json", lambda: evaluate(start(), args.root, args.split, val_ids, recipe),
            eval_key(start_cfg, args.split, recipe))}]))
    write_report(args, recipe, results, info)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:  # seed-major: an interrupted table still has every row at the seeds done
        for name in names:
            method = ROWS[name]
            out = work / f"{method}_s{seed}"
            if args.finished_only and not (out / "report.json").is_file():
                continue
            train_args = ["--config", args.config, "--dataset", "cub200", "--root", args.root, "--method", method,
                          "--seed", str(seed), "--teacher", args.teacher, "--set", "eval_split=none"]
            if args.split == "val":
                train_args += ["--set", f"holdout={val_ids}"]
            for o in args.overrides:
                train_args += ["--set", o]
            rep = train_once(out, train_args, log=work / "train.log")
            m = evaluated(out / f"eval_{args.split}.json",
                          lambda: evaluate(create_encoder(str(out / "last")), args.root, args.split, val_ids),
                          eval_key(json.loads((out / "run_key.json").read_text()), args.split))
            runs[name].append({"seed": seed, "minutes": (rep["wall_seconds"] or 0) / 60, **m})
            print(name, seed, {k: round(v, 2) for k, v in m.items()}, flush=True)
            write_report(args, recipe, results + [summarise(n, ROWS[n], r) for n, r in runs.items() if r], info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
