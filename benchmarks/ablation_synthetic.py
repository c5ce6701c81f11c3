"""PP-SSL ablation on the synthetic world (CPU): MoCo v2 / +IADM / +AIS / PP-SSL on clutter=high and MoCo v2 on
clutter=none, every row with the same budget (a training config: configs/synthetic_tinycnn.yaml, tinycnn from
scratch, or configs/synthetic_lite0.yaml, ImageNet EfficientNet-Lite0 fine-tuned), several seeds; plus the
initial encoder without any training, as the reference each row starts from.

Writes ``benchmarks/results/ablation_synthetic.md`` (and ``.json``) with mean ± std of test-split retrieval rank-1, rank-5 and mAP
(leave-one-out), last-epoch and best-epoch figures labelled separately. Resumable: finished runs (report.json)
are reused, interrupted ones continue with ``--resume``.

    python -m benchmarks.ablation_synthetic --work runs/ablation            # the reported ablation (world seed 0)
    python -m benchmarks.ablation_synthetic --work runs/ablation_lite0 --config configs/synthetic_lite0.yaml \
        --teacher runs/ablation/teacher_synth_high_w0 --md benchmarks/results/ablation_synthetic_lite0.md
    python -m benchmarks.ablation_synthetic --work runs/ablation_val --world-seed 1 --seeds 0 \
        --rows ppssl --set lambda_ais=2.0 --md ''                            # a validation run (another world)
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import (REPO, cached_json, machine_info, source_version, stamped_dir, to_jsonable, train_once,
                               tree_listing, write_results)

CONFIG = REPO / "configs" / "synthetic_tinycnn.yaml"
#: row name -> (method, clutter)
ROWS = {
    "moco": ("moco", "high"),
    "moco+iadm": ("moco+iadm", "high"),
    "moco+ais": ("moco+ais", "high"),
    "ppssl": ("ppssl", "high"),
    "moco-clutter-none": ("moco", "none"),
}
LABELS = {"moco": "MoCo v2", "moco+iadm": "MoCo v2 + IADM", "moco+ais": "MoCo v2 + AIS",
          "ppssl": "PP-SSL (MoCo v2 + AIS + IADM)", "moco-clutter-none": "MoCo v2, clutter none"}


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}), see {log}: {shlex.join(cmd)}")
    return time.perf_counter() - t0


def ensure_world(work: Path, clutter: str, world_seed: int, log: Path) -> Path:
    """The synthetic world, generated again when its settings or the generator's code changed."""
    cmd = [sys.executable, "-m", "ppssl", "synth", "--clutter", clutter, "--seed", str(world_seed), "--quiet"]
    return stamped_dir(work / f"synth_{clutter}_w{world_seed}", {"cmd": cmd[1:], "code": source_version(["engine"])},
                       lambda out: run([*cmd, "--out", str(out)], log))


def ensure_teacher(work: Path, world: Path, log: Path, teacher: str | None) -> Path:
    """The offline teacher fitted on ``world``, fitted again when the world or the code changed."""
    if teacher:
        return Path(teacher)
    cmd = [sys.executable, "-m", "ppssl", "teacher", "fit", "--data", str(world), "--threads", "1", "--quiet"]
    key = {"cmd": cmd[1:], "world": tree_listing(world), "code": source_version()}
    return stamped_dir(work / f"teacher_{world.name}", key, lambda out: run([*cmd, "--out", str(out)], log))


def write_teacher_md(teacher: Path, world: Path, md: Path, machine: dict | None = None) -> None:
    """benchmarks/results/teacher.md (and .json) from the summary `ppssl teacher fit` stored in the teacher's
    config."""
    info = json.loads((teacher / "open_clip_config.json").read_text()).get("ppssl", {})
    zs, fc = info.get("zero_shot", {}), info.get("fit_config", {})
    lines = [
        f"Teacher fitted by `ppssl teacher fit --data {world} --out {teacher} --threads 1` (run by "
        "`python -m benchmarks.ablation_synthetic`; world: `ppssl synth` defaults, seed 0, clutter high).",
        "",
        f"Model: open_clip `CLIP` built from a config dict: ViT {fc.get('vision_layers')} x {fc.get('vision_width')}, "
        f"patch {fc.get('patch_size')}, {fc.get('image_size')} px; text transformer {fc.get('text_layers')} x "
        f"{fc.get('text_width')}, context {fc.get('context_length')} (open_clip SimpleTokenizer); embedding "
        f"{fc.get('embed_dim')}. Trained with `open_clip.loss.ClipLoss`, AdamW lr {fc.get('lr')}, batch "
        f"{fc.get('batch_size')}, {fc.get('epochs')} balanced epochs ({info.get('pairs_per_epoch')} pairs each: all "
        f"coarse-family train images + a fresh share of fine-grained birds; {info.get('train_pairs')} captioned train "
        f"images in all), {info.get('steps')} steps, final loss {info.get('final_loss', float('nan')):.3f}, "
        f"{info.get('seconds', float('nan')) / 60:.1f} min wall on the shared 2-core CPU.",
        "",
        f"Zero-shot on the {zs.get('images')} held-out coarse-family test images, classified into the 8 descriptions "
        f"of `training/corpora/synthetic.txt` (7 families + 1 absent concept): **{100 * zs.get('accuracy', 0):.1f} %** "
        f"(chance {100 * zs.get('chance', 0):.1f} %).",
        "",
        "| family | zero-shot top-1 % |",
        "|---|---|",
        *[f"| {k} | {100 * v:.1f} |" for k, v in zs.get("per_family", {}).items()],
        "",
    ]
    write_results(md.stem, to_jsonable({"teacher": str(teacher), "world": str(world), **info}), "\n".join(lines),
                  title="Offline AIS teacher (tiny open_clip CLIP fitted on the synthetic world)", info=machine,
                  out_dir=md.parent)


def initial_encoder(work: Path, config: Path, worlds: dict) -> dict:
    """Test-split retrieval of the encoder every row starts from (no training), per world; cached in ``work`` under
    its config, worlds and code."""
    key = {"config": config.read_text(), "worlds": {c: tree_listing(Path(w)) for c, w in worlds.items()},
           "code": source_version()}
    return cached_json(work / f"initial_{config.stem}.json", key, lambda: _score_initial(config, worlds))


def _score_initial(config: Path, worlds: dict) -> dict:
    import torch
    import yaml

    from engine.datasets import build_dataset
    from engine.encoder import create_encoder
    from training.evaluate import retrieval_eval

    cfg = yaml.safe_load(config.read_text())
    torch.set_num_threads(1)
    torch.manual_seed(int(cfg.get("seed", 0)))
    enc = create_encoder(cfg["backbone"], cfg.get("weights"), input_size=int(cfg["input_size"]))
    out = {}
    for clutter, world in worlds.items():
        ds = build_dataset("cub200", str(world), split="test", transform=enc.transform())
        out[clutter] = retrieval_eval(enc, ds, torch.device("cpu"), batch_size=64, num_workers=0)
    return out


def train_row(work: Path, row: str, seed: int, worlds: dict, teacher: Path, overrides: list[str], log: Path,
              config: Path = CONFIG) -> dict:
    method, clutter = ROWS[row]
    args = ["--config", str(config), "--root", str(worlds[clutter]), "--method", method, "--seed", str(seed),
            "--teacher", str(teacher)]
    for o in overrides:
        args += ["--set", o]
    return train_once(work / "runs" / f"{row}_s{seed}", args, log)


def final_moco_loss(report: dict) -> float | None:
    """L_moco of the run's last logged step (``train_log.csv`` beside its checkpoints), or None."""
    import csv

    log = Path(report["checkpoints"]["last"]).parent / "train_log.csv"
    if not log.is_file():
        return None
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["loss_moco"]) if rows else None


def per_seed_table(results: dict, rows: list[str], seeds: list[int]) -> list[str]:
    """Markdown rows: each seed's last-epoch rank-1 / mAP (own pooling), the paired difference of the means
    against MoCo v2 trained with the same seeds, and the final L_moco of each run."""
    def scores(rep):
        m = rep["last"]["metrics"][rep["pooling"]]
        return 100 * m["rank-1"], 100 * m["mAP"]

    base = [scores(r) for r in results.get("moco", [])]
    out = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " | paired mean Δ vs MoCo v2 | final L_moco |",
           "|---|" + "---|" * (len(seeds) + 2)]
    for row in rows:
        reps = results.get(row, [])
        if not reps:
            continue
        sc = [scores(r) for r in reps]
        delta = "–"
        if row not in ("moco", "moco-clutter-none") and len(base) == len(sc):
            d1 = statistics.mean(a[0] - b[0] for a, b in zip(sc, base))
            d2 = statistics.mean(a[1] - b[1] for a, b in zip(sc, base))
            delta = f"{d1:+.1f} / {d2:+.1f}"
        losses = [final_moco_loss(r) for r in reps]
        out.append(f"| {LABELS[row]} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in sc) + f" | {delta} | "
                   + ", ".join("?" if v is None else f"{v:.2f}" for v in losses) + " |")
    return out


def mean_std(values: list[float]) -> str:
    vals = [100 * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def table(results: dict, rows: list[str], which: str, pooling: str | None) -> list[str]:
    """Markdown rows: ``which`` is 'last' or 'best'; pooling None = each checkpoint's own pooling."""
    out = ["| row | pooling | rank-1 % | rank-5 % | mAP % | seeds |", "|---|---|---|---|---|---|"]
    for row in rows:
        reps = results.get(row, [])
        if not reps:
            continue
        pool = pooling or reps[0]["pooling"]
        ms = [r[which]["metrics"][pool] for r in reps]
        extra = ""
        if which == "best":
            extra = " (epochs " + ", ".join(str(r["best"]["epoch"]) for r in reps) + ")"
        out.append(f"| {LABELS[row]} | {pool} | {mean_std([m['rank-1'] for m in ms])} | "
                   f"{mean_std([m['rank-5'] for m in ms])} | {mean_std([m['mAP'] for m in ms])} | {len(reps)}{extra} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/ablation", help="working directory (worlds, teacher, runs)")
    ap.add_argument("--config", default=str(CONFIG), help="training config shared by every row")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows to run, from {', '.join(ROWS)}")
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (0 = reported)")
    ap.add_argument("--teacher", default=None, help="teacher directory (default: fit one on the clutter=high world)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig override for every row")
    ap.add_argument("--jobs", type=int, default=1, help="training runs in parallel (each uses 1 thread)")
    ap.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "ablation_synthetic.md"),
                    help="markdown output, with .json beside it ('' = print only)")
    args = ap.parse_args(argv)
    info = machine_info()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "ablation.log"
    config = Path(args.config).resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = [r for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}")
    t0 = time.perf_counter()
    clutters = sorted({ROWS[r][1] for r in rows})
    worlds = {c: ensure_world(work, c, args.world_seed, log) for c in clutters}
    needs_teacher = any("ais" in ROWS[r][0] or ROWS[r][0] == "ppssl" for r in rows)
    teacher = ensure_teacher(work, worlds.get("high") or ensure_world(work, "high", args.world_seed, log), log,
                             args.teacher) if needs_teacher else Path(args.teacher or "none")
    jobs = [(row, seed) for seed in seeds for row in rows]
    results: dict[str, list] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {job: pool.submit(train_row, work, job[0], job[1], worlds, teacher, args.overrides, log, config)
                   for job in jobs}
        for (row, seed), fut in futures.items():
            rep = fut.result()
            results.setdefault(row, []).append(rep)
            last = rep["last"]["metrics"][rep["pooling"]]
            print(f"{row:>18} seed {seed}: last rank-1 {100 * last['rank-1']:.1f} %, mAP {100 * last['mAP']:.1f} % "
                  f"({rep['wall_seconds'] or 0:.0f} s)", flush=True)
    initial = initial_encoder(work, config, worlds)
    total = time.perf_counter() - t0

    teacher_info = {}
    tcfg = teacher / "open_clip_config.json"
    if tcfg.is_file():
        teacher_info = json.loads(tcfg.read_text()).get("ppssl", {})
    import yaml

    cfg_text = config.read_text()
    cfg = yaml.safe_load(cfg_text)
    rel_cfg = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    encoder_desc = (f"{cfg['backbone']} " + ("from scratch" if not cfg.get("weights") else
                    f"initialised from {cfg['weights']} weights") + f" at {cfg['input_size']} px"
                    + (", backbone BatchNorm statistics frozen" if cfg.get("freeze_bn") else ""))
    init_rows = [f"| No training: the initial encoder ({cfg['backbone']}, "
                 f"{cfg.get('weights') or 'random init'}){', clutter ' + c if len(initial) > 1 else ''} | gap | "
                 f"{100 * m['gap']['rank-1']:.1f} | {100 * m['gap']['rank-5']:.1f} | {100 * m['gap']['mAP']:.1f} | – |"
                 for c, m in sorted(initial.items())]
    walls = {row: [r["wall_seconds"] for r in reps if r.get("wall_seconds")] for row, reps in results.items()}
    run_minutes = sum(sum(w) for w in walls.values()) / 60
    lines = [
        f"Wall time of this invocation {total / 60:.1f} min (runs already finished are reused; their own training "
        f"wall times add up to {run_minutes:.1f} min).",
        "",
        f"World: `ppssl synth --seed {args.world_seed} --clutter high|none` at the default demo size (24 classes × 40 "
        f"images, 96 px, 50 % test). Encoder: {encoder_desc}. Every row uses the same budget: "
        f"`{rel_cfg}`" + (f" with `--set {' --set '.join(args.overrides)}`" if args.overrides else "")
        + ". Training seeds: " + ", ".join(map(str, seeds)) + ".",
        "",
        "Retrieval: leave-one-out on the test split, features L2-normalised; mean ± sample std over seeds. "
        "`pooling` is the saved checkpoint's (GAP for MoCo v2, whose attention head is never trained; attention for "
        "the rows that train it); the GAP table repeats every row with plain GAP features.",
        "",
        "## Last epoch (the honest figure)",
        "",
        *table(results, rows, "last", None),
        *init_rows,
        "",
        "### Last epoch, GAP features for every row",
        "",
        *table(results, rows, "last", "gap"),
        "",
        "### Last epoch per seed (rank-1 % / mAP %, each checkpoint's pooling)",
        "",
        *per_seed_table(results, rows, seeds),
        "",
        "## Best epoch, selected on the test split itself (the paper's protocol; optimistic)",
        "",
        *table(results, rows, "best", None),
        "",
        "## Run details",
        "",
        "Wall seconds per run (shared 2-core CPU, 1 thread per run): "
        + "; ".join(f"{LABELS[r]}: {', '.join(f'{w:.0f}' for w in walls.get(r, []))}" for r in rows) + ".",
        "",
    ]
    if teacher_info:
        zs = teacher_info.get("zero_shot", {})
        lines += [f"AIS teacher: `{teacher}` (tiny open_clip CLIP fitted by `ppssl teacher fit` on this world's "
                  f"captions; zero-shot accuracy on held-out coarse images vs the 8 synthetic descriptions "
                  f"{100 * zs.get('accuracy', float('nan')):.1f} %, chance 12.5 %).", ""]
    lines += [f"Training configuration (`{rel_cfg}`):", "", "```yaml", cfg_text.strip(), "```", ""]
    text = "\n".join(lines)
    print(text)
    if args.md and tcfg.is_file() and args.world_seed == 0 and not args.teacher:
        write_teacher_md(teacher, worlds.get("high") or teacher, Path(args.md).with_name("teacher.md"), info)
    if args.md:
        md = Path(args.md)
        data = {"config": str(rel_cfg), "config_values": cfg, "overrides": args.overrides, "seeds": seeds,
                "world_seed": args.world_seed, "teacher": str(teacher), "initial_encoder": initial,
                "runs": results, "invocation_minutes": total / 60}
        write_results(md.stem, to_jsonable(data), text, title="Synthetic-world ablation (CPU)", info=info,
                      out_dir=md.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
