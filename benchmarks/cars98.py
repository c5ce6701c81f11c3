"""cars98 (a weak ImageNet start) and cub100's validation part: the README recipe, 3 seeds, paired differences.

Every trained row is ``ppssl train`` on a validation part, scored by the run itself on its held-out photos
(``report.json``): cars98 with ``--images`` (20 % of each model held out by the folder rule), cub100 with
``holdout=val_ids.txt`` (the validation part of the train split). No test split is read. Rows per set:

* ImageNet-only, centre crop (the paper's protocol and the old default view) — scored here, no training;
* the run's own ``start`` (ImageNet with the recipe's view; identical in every seed) and ``start + head`` (the
  retrieval head fitted on the training photos, no training; its fit draws on the seed, so the row is the mean of
  the seeds);
* the recipe (``configs/finetune_lite0.yaml``), per seed, with the paired difference to the same seed's
  ``start + head``;
* the previous recipe (the recipe as it was before this table, for "not worse than today's").

With ``--set KEY=VALUE`` the table is that of a candidate (the recipe file plus those overrides) and "previous" is
the recipe file as it stands: how a screened candidate earns its 3-seed table before the recipe file changes.

Runs are shared with ``benchmarks.recipe_sweep`` (same cache: reused only when config, data and code match).

    python -m benchmarks.cars98 [--seeds 0,1,2] [--sets cars98,cub100] [--previous-seeds 0] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import CUB100, md_table, prepare_process, write_results
from benchmarks.recipe_sweep import CARS98, RECIPE, run

#: the recipe before this issue (session 6), as ``--set`` overrides of the current file
PREVIOUS = ["view=center", "eval_size=0", "queue_size=4096", "neighbour_positives=10", "neighbour_mutual=false",
            "wise_alpha=1.0"]


def imagenet_center(set_name: str) -> dict:
    """ImageNet Lite0, GAP, centre crop at 224, leave-one-out on the set's held-out part (no training)."""
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout
    from engine.embed import extract_features
    from engine.encoder import create_encoder
    from engine.metrics import retrieval_metrics

    enc = create_encoder("efficientnet_lite0", "imagenet", pooling="gap", view="center").eval()
    if set_name == "cars98":
        _, held = split_holdout(build_dataset("images", CARS98 / "images", split="train"), "0.2")
    else:
        _, held = split_holdout(build_dataset("cub200", CUB100, split="train"), str(CUB100 / "val_ids.txt"))
    held.transform = enc.transform()
    f, y = extract_features(enc, held, batch_size=64, num_workers=1, progress=False)
    m = retrieval_metrics(f, y).summary
    return {"rank-1": float(m["rank-1"]), "mAP": float(m["mAP"]), "n": int(len(y))}


def _pick(rep: dict, key: str) -> dict:
    p = rep["pooling"]
    src = rep["last"]["metrics"] if key == "trained" else rep["baselines"][key]
    return {k: float(src[p][k]) for k in ("rank-1", "mAP")}


def summarise(runs: list[dict]) -> dict:
    def ms(xs):
        return {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}

    return {"rank-1": ms([r["trained"]["rank-1"] for r in runs]), "mAP": ms([r["trained"]["mAP"] for r in runs]),
            "minutes": ms([r["minutes"] for r in runs])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sets", default="cars98,cub100")
    ap.add_argument("--previous-sets", default="cub100", help="sets on which the previous recipe is trained too")
    ap.add_argument("--previous-seeds", default=None, help="seeds of the previous recipe (default: --seeds)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="candidate: the recipe file plus this KEY=VALUE (then 'previous' is the recipe file)")
    ap.add_argument("--work", default="runs/recipe_sweep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cand, prev_overrides = list(args.overrides), (PREVIOUS if not args.overrides else [])
    name = "the recipe" + (" + " + " ".join(cand) if cand else "")
    prev_name = "the previous recipe" if not cand else "the recipe file as it stands"
    info = prepare_process(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    prev_seeds = [int(s) for s in (args.previous_seeds or args.seeds).split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data: dict = {}
    for set_name in args.sets.split(","):
        d = data[set_name] = {"imagenet_center": imagenet_center(set_name), "overrides": cand,
                              "previous_overrides": prev_overrides, "recipe": [], "previous": []}
        for seed in seeds:
            rep = run(set_name, cand, seed, work, RECIPE)
            d["recipe"].append({"seed": seed, "minutes": rep["minutes"], "trained": _pick(rep, "trained"),
                                "start": _pick(rep, "start"), "start+head": _pick(rep, "start+head"),
                                "verdict": rep["verdict"]["text"]})
            print(set_name, json.dumps(d["recipe"][-1]), flush=True)
            if set_name in args.previous_sets.split(",") and seed in prev_seeds:
                prev = run(set_name, prev_overrides, seed, work, RECIPE)
                d["previous"].append({"seed": seed, "minutes": prev["minutes"], "trained": _pick(prev, "trained")})
                print(set_name, "previous", json.dumps(d["previous"][-1]), flush=True)
    body = []
    for set_name, d in data.items():
        rec = d["recipe"]
        s = rec[0]["start"]
        h = {k: statistics.mean(r["start+head"][k] for r in rec) for k in ("rank-1", "mAP")}
        ic = d["imagenet_center"]
        summ = summarise(rec)
        pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
        rows = [["ImageNet-only, centre crop (old default; no training)", pct(ic["rank-1"]), pct(ic["mAP"]), "", ""],
                ["ImageNet-only, the recipe's view (no training)", pct(s["rank-1"]), pct(s["mAP"]), "", ""],
                [f"+ retrieval head on the training photos (no training; mean of the {len(rec)} seeds' fits)",
                 pct(h["rank-1"]), pct(h["mAP"]), "", ""],
                [f"**{name}** ({len(rec)} seeds, mean ± sd)",
                 f"{pct(summ['rank-1']['mean'])} ± {pct(summ['rank-1']['sd'])}",
                 f"{pct(summ['mAP']['mean'])} ± {pct(summ['mAP']['sd'])}",
                 " / ".join(f"{100 * (r['trained']['rank-1'] - r['start+head']['rank-1']):+.1f}, "
                            f"{100 * (r['trained']['mAP'] - r['start+head']['mAP']):+.1f}" for r in rec),
                 f"{summ['minutes']['mean']:.1f}"]]
        if d["previous"]:
            ps = summarise(d["previous"])
            rows.append([f"{prev_name} ({len(d['previous'])} seeds)",
                         f"{pct(ps['rank-1']['mean'])} ± {pct(ps['rank-1']['sd'])}",
                         f"{pct(ps['mAP']['mean'])} ± {pct(ps['mAP']['sd'])}",
                         " / ".join(f"{100 * (r['trained']['rank-1'] - p['trained']['rank-1']):+.1f}, "
                                    f"{100 * (r['trained']['mAP'] - p['trained']['mAP']):+.1f}"
                                    for r, p in zip([r for r in rec if r["seed"] in prev_seeds], d["previous"]))
                         + " (above − this row, paired by seed)",
                         f"{ps['minutes']['mean']:.1f}"])
        where = ("held-out 20 % of each model (the `--images` rule), trained on the other 80 %" if set_name == "cars98"
                 else "`val_ids.txt` (583 photos), trained on the other 2,320 of the train split")
        body.append(f"## {set_name}: {where}; n = {ic['n']} held-out photos\n")
        body.append(md_table(["row", "rank-1 %", "mAP %", "paired Δ per seed vs + head (rank-1, mAP)", "minutes per run"],
                             rows))
        targets = []
        if set_name == "cars98":
            d_r1 = summ["rank-1"]["mean"] - ic["rank-1"]
            d_map = summ["mAP"]["mean"] - ic["mAP"]
            d_head = summ["mAP"]["mean"] - h["mAP"]
            targets = [("≥ +5 rank-1 over ImageNet-only", d_r1, d_r1 >= 0.05),
                       ("≥ +5 mAP over ImageNet-only", d_map, d_map >= 0.05),
                       ("≥ +2 mAP over the head alone", d_head, d_head >= 0.02)]
        elif d["previous"]:
            paired = [r for r in rec if r["seed"] in prev_seeds]
            d_map = summarise(paired)["mAP"]["mean"] - summarise(d["previous"])["mAP"]["mean"]
            targets = [(f"not worse than {prev_name} (mAP, paired over seed(s) "
                        f"{', '.join(str(r['seed']) for r in paired)})", d_map, d_map >= 0)]
        if targets:
            body.append("\nTargets (means of the seeds; ImageNet-only = the centre-crop row):\n")
            body += [f"- {name}: {100 * v:+.1f} points — {'met' if ok else 'NOT met'}" for name, v, ok in targets]
        body.append("")
    body.append("Every figure is on a validation part: no test split is read. Minutes are wall time of `ppssl train` "
                "on the 2 cores of this machine (other work may have shared them). Regenerate with the command above.")
    write_results("cars98", data, "\n".join(body), title="The recipe from a weak start: cars98 and cub100 validation",
                  info=info, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
