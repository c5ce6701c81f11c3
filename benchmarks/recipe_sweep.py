"""The real-photo recipe, chosen on two validation parts together: cars98 (weak ImageNet start) and cub100.

Each sweep row is one ``ppssl train`` configuration (``configs/finetune_lite0.yaml`` plus ``--set`` overrides) run
on both validation parts, exactly as a user's ``ppssl train --images`` run would score itself:

* cars98: ``--images ../shared/data/cars98/images`` (20 % of each model held out by the folder rule, trained on
  the other 80 %);
* cub100: the train split with ``holdout=val_ids.txt`` (trained on 2,320 photos, scored on the 583 of
  ``val_ids.txt``). No test split is read.

The run's own report gives, on the held-out part, the start encoder, the start + retrieval head (no training)
and the trained encoder (``report.json``: ``baselines``, ``last``, ``verdict``). Every run appends one JSON line
to ``benchmarks/results/recipe_sweep.jsonl`` and ``recipe_sweep.md`` (and ``.json``) is regenerated from all
lines. A run folder is reused only when its config, the data listing and the code it was trained with match
(``run_key.json``); otherwise it is trained again.

    python -m benchmarks.recipe_sweep --name base_full --set view=full [--seeds 0] [--sets cars98,cub100]
    python -m benchmarks.recipe_sweep --table          # only regenerate the table from the JSON lines
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (CUB100, REPO, RESULTS, append_jsonl, md_table, source_version, tree_listing,
                               write_results)

CARS98 = CUB100.parent / "cars98"
RECIPE = REPO / "configs" / "finetune_lite0.yaml"
JSONL = RESULTS / "recipe_sweep.jsonl"
CODE_DIRS = ("engine", "training")  # what a training run's result depends on


def data_args(name: str) -> list[str]:
    if name == "cars98":
        return ["--images", str(CARS98 / "images")]
    if name == "cub100":
        return ["--dataset", "cub200", "--root", str(CUB100), "--set", f"holdout={CUB100 / 'val_ids.txt'}",
                "--set", "eval_split=holdout"]
    raise SystemExit(f"unknown validation set {name!r} (cars98, cub100)")


def data_listing(name: str) -> str:
    """Hash of the files a set trains and scores on (relative path, size, mtime)."""
    return tree_listing(CARS98 / "images" if name == "cars98" else CUB100)


def recipe_settings(config: Path) -> dict:
    """The recipe's settings as parsed: a comment edit in the YAML changes no run's key."""
    import yaml

    return yaml.safe_load(config.read_text())


def code_version() -> str:
    """Hash of the library and trainer sources and the recipe's settings (a run is stale when they change)."""
    digest = hashlib.sha256(json.dumps(recipe_settings(RECIPE), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256((source_version(CODE_DIRS) + digest).encode()).hexdigest()[:16]


def run(set_name: str, overrides: list[str], seed: int, work: Path, config: Path) -> dict:
    """Train (or reuse a matching finished run) and return the report with the run's key and minutes."""
    key = {"set": set_name, "config": recipe_settings(config), "overrides": overrides, "seed": seed,
           "data": data_listing(set_name), "code": code_version()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    out = work / f"{set_name}_s{seed}_{digest}"
    report, stamp = out / "report.json", out / "run_key.json"
    if report.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        rep = json.loads(report.read_text())
        rep["minutes"] = json.loads(stamp.read_text()).get("minutes")
        rep["reused"] = True
    else:
        cmd = [sys.executable, "-m", "ppssl", "train", "--config", str(config), *data_args(set_name),
               "--seed", str(seed), "--out", str(out), "--quiet"]
        for o in overrides:
            cmd += ["--set", o]
        if (out / "resume" / "state.json").is_file():
            cmd.append("--resume")
        print("$", shlex.join(cmd), flush=True)
        t = time.perf_counter()
        with open(work / "train.log", "a") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if rc:
            raise SystemExit(f"training failed ({rc}); see {work / 'train.log'}")
        minutes = (time.perf_counter() - t) / 60
        from engine.atomic import atomic_write_json

        atomic_write_json(stamp, {"key": key, "minutes": round(minutes, 2)})
        rep = json.loads(report.read_text())
        rep["minutes"], rep["reused"] = round(minutes, 2), False
    rep["run_dir"], rep["key"] = str(out), key
    return rep


def row_of(name: str, set_name: str, overrides: list[str], seed: int, rep: dict) -> dict:
    pooling = rep["pooling"]
    pick = lambda m: {k: m[pooling][k] for k in ("rank-1", "mAP")}  # noqa: E731
    base = rep.get("baselines") or {}
    return {"name": name, "set": set_name, "seed": seed, "overrides": overrides, "minutes": rep.get("minutes"),
            "code": rep["key"]["code"], "run_dir": rep["run_dir"],
            "start": pick(base["start"]) if "start" in base else None,
            "start+head": pick(base["start+head"]) if "start+head" in base else None,
            "trained": pick(rep["last"]["metrics"]), "verdict": (rep.get("verdict") or {}).get("text")}


def read_rows() -> list[dict]:
    if not JSONL.is_file():
        return []
    return [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]


def write_table() -> None:
    """``recipe_sweep.md`` (and ``.json``) from every JSON line (the latest line of each name/set/seed/code wins)."""
    latest: dict = {}
    for r in read_rows():
        latest[(r["name"], r["set"], r["seed"], r["code"])] = r
    rows = sorted(latest.values(), key=lambda r: (r["set"], r["name"], r["seed"]))
    pct = lambda m, k: "" if not m else f"{100 * m[k]:.1f}"  # noqa: E731
    table = md_table(["set", "name", "seed", "overrides", "start r1 / mAP", "start+head r1 / mAP",
                      "trained r1 / mAP", "Δ mAP vs head", "min", "code"],
                     [[r["set"], r["name"], r["seed"], " ".join(r["overrides"]) or "(recipe)",
                       f"{pct(r['start'], 'rank-1')} / {pct(r['start'], 'mAP')}",
                       f"{pct(r['start+head'], 'rank-1')} / {pct(r['start+head'], 'mAP')}",
                       f"{pct(r['trained'], 'rank-1')} / {pct(r['trained'], 'mAP')}",
                       "" if not r["start+head"] else f"{100 * (r['trained']['mAP'] - r['start+head']['mAP']):+.1f}",
                       r["minutes"], r["code"]] for r in rows])
    text = ("Generated from `recipe_sweep.jsonl` (one line per run, written by `python -m benchmarks.recipe_sweep "
            "--name NAME --set KEY=VALUE ...`, which regenerates this table after each run; "
            "`python -m benchmarks.recipe_sweep --table` only regenerates it). Every figure is on a "
            "validation part: held-out photos of the train side, never a test split. `start` = the ImageNet start "
            "encoder, `start+head` = the start with the retrieval head fitted on the training photos (no training), "
            "`trained` = the run's encoder with its head; leave-one-out rank-1 / mAP %, from each run's own "
            "`report.json`. `code` = hash of engine/ + training/ + the recipe's settings the run used (rows made "
            "before commit dfb6aa3 hashed the recipe file's text, comments included).\n\n" + table + "\n")
    write_results("recipe_sweep", {"rows": rows}, text, out_dir=RESULTS,
                  title="Recipe sweep on the validation parts (cars98 held-out 20 %, cub100 val_ids.txt)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", help="row name")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE")
    ap.add_argument("--sets", default="cars98,cub100")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--config", default=str(RECIPE))
    ap.add_argument("--work", default="runs/recipe_sweep")
    ap.add_argument("--table", action="store_true", help="only regenerate recipe_sweep.md")
    args = ap.parse_args(argv)
    if args.table:
        write_table()
        return 0
    if not args.name:
        raise SystemExit("--name is required")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for set_name in args.sets.split(","):
            rep = run(set_name, args.overrides, seed, work, Path(args.config))
            row = row_of(args.name, set_name, args.overrides, seed, rep)
            append_jsonl(JSONL.stem, row, out_dir=JSONL.parent)
            print(json.dumps(row), flush=True)
            write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
