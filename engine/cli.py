"""Engine subcommands: ``ppssl synth`` (synthetic world), ``ppssl eval`` (retrieval evaluation) and
``ppssl data fetch|list`` (official datasets)."""

from __future__ import annotations

import argparse

from engine.cliargs import add_encoder_args, add_json_arg, add_runtime_args, encoder_choice, write_result


def register(sub: argparse._SubParsersAction) -> None:
    from engine.synth import cli as synth_cli

    p = sub.add_parser("synth", help="generate the synthetic fine-grained world (CUB layout)",
                       description="Generate the procedural fine-grained 'birds' world and the coarse families "
                                   "used to train the offline teacher, in the CUB_200_2011 file layout.")
    synth_cli.add_arguments(p)
    p.set_defaults(func=synth_cli.run)

    d = sub.add_parser("data", help="fetch fine-grained datasets from their official addresses",
                       description="Download, verify (published checksums) and safely unpack a dataset in the "
                                   "layout its reader expects; interrupted downloads resume.")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = dsub.add_parser("fetch", help="download and unpack one dataset")
    f.add_argument("name", help="dataset name (see `ppssl data list`)")
    f.add_argument("--out", required=True, help="directory to download into and unpack under")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=_run_fetch)
    ls = dsub.add_parser("list", help="the datasets `ppssl data fetch` knows")
    ls.set_defaults(func=_run_list)

    p = sub.add_parser("eval", help="retrieval rank-k / mAP / MAP@R of an encoder on a dataset split",
                       description="Embed a dataset split with an encoder and report retrieval metrics "
                                   "(leave-one-out on the split, or --gallery-split for query-vs-gallery).")
    add_encoder_args(p, required=True)
    p.add_argument("--dataset", required=True, help="dataset reader name (cub200, cars, ..., folder)")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--split", default="test", help="query split: train, test or all (default test)")
    p.add_argument("--gallery-split", default=None,
                   help="if given, search queries against this split instead of leave-one-out")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    add_runtime_args(p)
    add_json_arg(p, "the metrics")
    p.add_argument("--out", default=None, metavar="DIR", help="also write the metrics to DIR/eval.json")
    p.set_defaults(func=_run_eval)


def _run_fetch(args: argparse.Namespace) -> int:
    from engine.datasets.fetch import CATALOGUE, fetch_dataset

    root = fetch_dataset(args.name, args.out, progress=not args.quiet)
    reader = CATALOGUE[args.name].reader
    print(f"{args.name} ready under {root}")
    print(f"  next: ppssl index build --encoder efficientnet_lite0 --weights imagenet --dataset {reader} "
          f"--root {root} --split test --out runs/{args.name}_index")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from engine.datasets.fetch import describe

    print("\n".join(describe()))
    return 0


def _need_two_labels(dataset, root, split: str) -> None:
    """Refuse a single-label split: every neighbour would be a match, so the metrics would read 100 % (e.g. a
    folder of photos whose class folders sit one level below ``--root``)."""
    from engine.datasets.base import DatasetError

    samples = getattr(dataset, "samples", None)
    if samples and len({label for _, label in samples}) < 2:
        name = dataset.classes[samples[0][1]] if getattr(dataset, "classes", None) else samples[0][1]
        raise DatasetError(f"{root} ({split}): every photo has the same label ({name!r}), so retrieval metrics "
                           "would be trivially 100 %; point --root at the folder whose sub-folders are the classes")


def _run_eval(args: argparse.Namespace) -> int:
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.metrics import retrieval_metrics

    choice = encoder_choice(args)
    enc = choice.create()
    tf = enc.transform()
    q = build_dataset(args.dataset, args.root, split=args.split, transform=tf)
    g = build_dataset(args.dataset, args.root, split=args.gallery_split, transform=tf) if args.gallery_split else None
    _need_two_labels(g if g is not None else q, args.root, args.gallery_split or args.split)
    qf, ql = extract_features(enc, q, batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                              desc=f"embedding {args.split}", progress=not args.json)
    if g is not None:
        gf, gl = extract_features(enc, g, batch_size=args.batch_size, num_workers=args.workers,
                                  device=args.device, desc=f"embedding {args.gallery_split}", progress=not args.json)
        report = retrieval_metrics(qf, ql, gf, gl)
        mode = f"{args.split} queries vs {args.gallery_split} gallery"
    else:
        report = retrieval_metrics(qf, ql)
        mode = f"leave-one-out on {args.split}"
    result = {"encoder": choice.ref, "weights": choice.weights, "pooling": enc.config.pooling,
              "dataset": args.dataset, "root": str(args.root), "mode": mode, "queries": int(len(ql)),
              "metrics": {k: round(float(v), 6) for k, v in report.summary.items()}}
    if write_result(args, result, "eval.json"):
        return 0
    print(f"{args.dataset} {mode}, {len(ql)} queries, {enc.config.backbone} ({enc.config.pooling} pooling)")
    for k, v in report.summary.items():
        print(f"  {k:>8}: {100 * v:6.2f} %")
    return 0
