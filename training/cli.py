"""Training subcommands: ``ppssl train``, ``ppssl teacher fit``, ``ppssl probe``. No torch import here."""

from __future__ import annotations

import argparse

from engine.cliargs import add_encoder_args, add_json_arg, add_runtime_args

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PP-SSL encoder (MoCo v2 + AIS + IADM)",
                       description="Self-supervised PP-SSL training. Settings: dataclass defaults < --config YAML "
                                   "< --set key=value < explicit flags. Multi-GPU: torchrun --nproc_per_node=N "
                                   "-m ppssl train ...")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig keys (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig key (repeatable), e.g. --set queue_size=4096")
    from training.config import cli_fields, field_type

    for f in cli_fields():  # generated from TrainConfig: the help is the field's own (training/config.py)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=field_type(f.name)[0], default=None,
                       help=f.metadata["help"].replace("%", "%%"))
    p.add_argument("--images", default=None, metavar="DIR",
                   help="train on any folder of photos (no labels needed; sets --dataset images --root DIR). "
                        "When its top-level sub-folders look like classes, 20 %% of each is held out and "
                        "retrieval on that part is reported; otherwise no evaluation is run")
    p.add_argument("--freeze-bn", dest="freeze_bn", action="store_true", default=None,
                   help="keep the backbone's BatchNorm statistics fixed (short fine-tunes of a pretrained backbone)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)

    t = sub.add_parser("teacher", help="AIS teacher tools (fit an offline CLIP teacher)",
                       description="Tools for the frozen CLIP teacher used by AIS.")
    tsub = t.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    f = tsub.add_parser("fit", help="train a small open_clip CLIP on the captioned synthetic world",
                        description="Train a tiny open_clip CLIP with ClipLoss on the synthetic world's captions "
                                    "(birds + coarse families), report zero-shot accuracy on held-out coarse images "
                                    "against the 8 synthetic corpus descriptions, save an open_clip local-dir.")
    f.add_argument("--data", required=True, help="synthetic world directory (from `ppssl synth`)")
    f.add_argument("--out", required=True, help="output teacher directory")
    f.add_argument("--epochs", type=int, default=None, help="training epochs (default 40)")
    f.add_argument("--image-size", type=int, default=None, help="teacher input side (default 64)")
    f.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 64)")
    f.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    f.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_run_teacher_fit)

    q = sub.add_parser("probe", help="linear probe on frozen features with label proportions",
                       description="Train a linear classifier (full-batch L-BFGS, cross-entropy) on frozen "
                                   "encoder features of a class-stratified share of the train split; report "
                                   "top-1 on the test split.")
    add_encoder_args(q, required=True)
    q.add_argument("--dataset", required=True, help="dataset reader name")
    q.add_argument("--root", required=True, help="dataset root directory")
    q.add_argument("--proportions", default="10,15,30,50,100",
                   help="comma-separated percentages of the train split to train on (default 10,15,30,50,100)")
    q.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    add_runtime_args(q)
    q.add_argument("--seed", type=int, default=0, help="seed of the stratified subsets")
    add_json_arg(q, "the results")
    q.add_argument("--out", default=None, metavar="DIR", help="also write the results to DIR/probe.json")
    q.set_defaults(func=_run_probe)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from training.config import build_config, parse_overrides
    from training.trainer import train

    from training.config import cli_fields

    flags = {f.name: getattr(args, f.name) for f in cli_fields()}
    if flags.get("weights") in ("none", "None", "null"):
        flags.pop("weights")
        overrides_extra = {"weights": None}
    else:
        overrides_extra = {}
    flags["amp"] = args.amp
    flags["freeze_bn"] = args.freeze_bn
    if args.quiet:
        flags["progress"] = False
    overrides = {**parse_overrides(args.overrides), **overrides_extra}
    if args.images is not None:
        overrides = {**images_settings(args.images), **overrides}
        flags.update(dataset="images", root=args.images)
    cfg = build_config(args.config, overrides, flags)
    if not cfg.root:
        from training.config import ConfigError

        raise ConfigError("no dataset root: pass --root DIR (or root: in the YAML)")
    report = train(cfg, resume=args.resume)
    from training import ddp

    if ddp.is_main():
        print(_format_report(report))
        print(json.dumps({"report": f"{cfg.out}/report.json"}))
    return 0


def images_settings(folder: str) -> dict:
    """Evaluation settings for ``--images DIR``: a 20 % per-class holdout when sub-folders look like classes,
    else none (unlabeled photos cannot be scored). ``--set`` and the YAML can still override them."""
    from pathlib import Path

    from engine.datasets.images import folder_labels, list_images

    root = Path(folder).expanduser()
    if not root.is_dir():
        from training.config import ConfigError

        raise ConfigError(f"--images {folder}: not a directory")
    if folder_labels(root, list_images(root)) is None:
        return {"eval_split": "none"}
    return {"holdout": "0.2", "eval_split": "holdout"}


def _format_report(report: dict) -> str:
    lines = [f"{report['method']} on {report['dataset']} ({report['backbone']}, {report['epochs']} epochs, "
             f"{report['steps']} steps); retrieval on the {report['eval_split']} split, leave-one-out:"]
    if report["eval_split"] == "none":
        lines[0] = lines[0].rsplit(";", 1)[0] + "; no evaluation (unlabeled photos)."
    base = report.get("baselines") or {}
    pooling = report.get("pooling")
    rows = [(name, entry[pooling]) for name, entry in (("start encoder (no training)", base.get("start")),
                                                         ("start + retrieval head (no training)",
                                                          base.get("start+head"))) if entry]
    if report.get("last") and rows:
        rows.append((f"trained ({report['epochs']} epochs{' + head' if 'start+head' in base else ''})",
                     report["last"]["metrics"][pooling]))
        lines.append(f"  {'':<40} {'rank-1':>8} {'rank-5':>8} {'mAP':>8}")
        for name, m in rows:
            lines.append(f"  {name:<40} {100 * m['rank-1']:7.2f}% {100 * m['rank-5']:7.2f}% {100 * m['mAP']:7.2f}%")
        if report.get("verdict"):
            lines.append(f"  verdict: {report['verdict']['text']}")
    for label, entry in (("last", report.get("last")), ("best", report.get("best"))):
        if not entry:
            continue
        for pooling, m in entry["metrics"].items():
            mark = " (checkpoint pooling)" if pooling == report["pooling"] else ""
            lines.append(f"  {label:>4} (epoch {entry['epoch']:>3}) {pooling:>9}{mark}: rank-1 {100 * m['rank-1']:.2f} %, "
                         f"rank-5 {100 * m['rank-5']:.2f} %, mAP {100 * m['mAP']:.2f} %")
    lines.append("  " + report["note"])
    return "\n".join(lines)


def _run_teacher_fit(args: argparse.Namespace) -> int:
    from training.teacher_fit import TeacherFitConfig, fit_teacher

    cfg = TeacherFitConfig(data=args.data, out=args.out, progress=not args.quiet)
    for key in ("epochs", "image_size", "batch_size", "lr", "seed", "threads"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    s = fit_teacher(cfg)
    zs = s["zero_shot"]
    print(f"teacher saved to {args.out} ({s['steps']} steps, {s['seconds']:.0f} s, final loss {s['final_loss']:.3f})")
    print(f"zero-shot accuracy on {zs['images']} held-out coarse images vs 8 descriptions: "
          f"{100 * zs['accuracy']:.1f} % (chance {100 * zs['chance']:.1f} %)")
    for fam, acc in zs["per_family"].items():
        print(f"  {fam:>12}: {100 * acc:.1f} %")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    from engine.cliargs import encoder_choice, write_result
    from training.probe import parse_proportions, run_probe

    choice = encoder_choice(args)
    result = run_probe(choice.ref, args.dataset, args.root, parse_proportions(args.proportions),
                       weights=choice.weights, pooling=choice.pooling, input_size=choice.input_size,
                       view=choice.view, batch_size=args.batch_size, workers=args.workers, device=args.device,
                       seed=args.seed)
    if write_result(args, result, "probe.json"):
        return 0
    print(f"linear probe, {result['encoder']} ({result['pooling']} pooling) on {args.dataset}: top-1 on the test split")
    for row in result["rows"]:
        print(f"  {row['proportion']:>5g} % of train ({row['train_images']:>5} images): {100 * row['top1']:.2f} %")
    return 0
