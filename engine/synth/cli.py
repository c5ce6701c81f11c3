"""``ppssl synth``: generate the synthetic world (registered by engine/cli.py). No torch here."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (new, empty, or a world to resume)")
    p.add_argument("--classes", type=int, default=24, help="number of fine-grained bird classes (default 24)")
    p.add_argument("--per-class", type=int, default=40, help="images per bird class (default 40)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed gives byte-identical files")
    p.add_argument("--clutter", choices=["none", "low", "high"], default="high",
                   help="background clutter and distractor objects (default high)")
    p.add_argument("--coarse-per-family", type=int, default=60,
                   help="images per coarse family (bird, fish, ...) for the teacher in OUT/coarse; 0 = none")
    p.add_argument("--test-fraction", type=float, default=0.5,
                   help="share of each bird class in the test split (default 0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from engine.synth.world import generate_world

    s = generate_world(args.out, classes=args.classes, per_class=args.per_class, size=args.size, seed=args.seed,
                       clutter=args.clutter, coarse_per_family=args.coarse_per_family,
                       test_fraction=args.test_fraction, progress=not args.quiet)
    print(f"{s['out_dir']}: {s['images']} bird images ({s['classes']} classes, {s['train']} train / "
          f"{s['test']} test) + {s['coarse_images']} coarse images in {len(s['families'])} families; "
          f"{s['rendered']} rendered, {s['skipped']} already present, {s['seconds']:.1f} s")
    return 0
