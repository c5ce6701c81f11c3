"""Argument groups every ``ppssl`` command shares, so that one thing is asked for one way everywhere.

* an encoder: ``--checkpoint DIR`` (a ``ppssl train`` run's ``last``) *or* ``--encoder NAME`` (a registered
  backbone) with ``--weights``; ``--pooling``, ``--input-size`` and ``--view`` adjust either;
* where it runs: ``--device`` and ``--workers`` (image decoders);
* machine-readable output: ``--json`` prints the command's result as JSON on stdout instead of the text report;
  ``--out DIR`` (where a command has it) writes files.

Nothing heavy is imported here (``ppssl --help`` stays free of torch).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: the registered backbones, for --help (tests check this against engine.backbones' registry)
BACKBONE_NAMES = ("resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite2", "tinycnn")


def add_encoder_args(p: argparse.ArgumentParser, *, required: bool,
                     title: str = "encoder", default_note: str = "") -> None:
    """``--checkpoint DIR | --encoder NAME`` (one of them, or neither where ``required`` is False and the
    command has its own default: ``default_note`` says which), ``--weights``, ``--pooling``, ``--input-size``,
    ``--view``."""
    g = p.add_argument_group(title + (f" ({default_note})" if default_note else ""))
    which = g.add_mutually_exclusive_group(required=required)
    which.add_argument("--checkpoint", default=None, metavar="DIR",
                       help="encoder checkpoint directory (e.g. RUN/last from `ppssl train`)")
    which.add_argument("--encoder", default=None, metavar="NAME",
                       help=f"a backbone instead of a checkpoint: {', '.join(BACKBONE_NAMES)}")
    g.add_argument("--weights", default=None, help="with --encoder: 'imagenet' or a local state-dict file")
    g.add_argument("--pooling", choices=["attention", "gap"], default=None,
                   help="feature pooling (default: the checkpoint's; 'gap' for a backbone)")
    g.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the encoder's)")
    g.add_argument("--view", choices=["center", "full", "pad"], default=None,
                   help="how a photo becomes the square input: center crop of a short-side resize, the full photo "
                        "resized, or padded (default: the checkpoint's, else the backbone's)")


def add_runtime_args(p: argparse.ArgumentParser, *, workers: bool = True) -> None:
    """``--device`` and (``workers``) ``--workers``."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    if workers:
        p.add_argument("--workers", type=int, default=2,
                       help="image decoders (default 2): threads between forward passes on CPU, worker processes "
                            "on GPU")


def add_json_arg(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print ``what`` as JSON on stdout instead of the text report."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of the text report")


@dataclass(frozen=True)
class EncoderChoice:
    """What :func:`add_encoder_args` parsed: a checkpoint directory or a backbone name, and the adjustments."""

    checkpoint: str | None = None  # checkpoint directory (resolved), or None
    name: str | None = None  # backbone name, or None
    weights: str | None = None  # with a backbone: 'imagenet' or a state-dict file
    pooling: str | None = None
    input_size: int | None = None
    view: str | None = None

    @property
    def ref(self) -> str:
        """What ``engine.encoder.create_encoder`` takes: the checkpoint directory or the backbone name."""
        return self.checkpoint or self.name

    def create(self):
        """The engine encoder (eval mode)."""
        from engine.encoder import create_encoder

        return create_encoder(self.ref, self.weights, pooling=self.pooling, input_size=self.input_size,
                              view=self.view).eval()


def encoder_choice(args: argparse.Namespace) -> EncoderChoice | None:
    """The parsed encoder, or None when neither ``--checkpoint`` nor ``--encoder`` was given. Refuses
    ``--weights`` with a checkpoint (its weights are its own) and a checkpoint path that is not one."""
    from pathlib import Path

    from engine.errors import PPSSLError

    if args.checkpoint is None and args.encoder is None:
        if args.weights is not None:
            raise PPSSLError("--weights needs --encoder NAME")
        return None
    if args.checkpoint is not None:
        from engine.checkpoint import read_checkpoint_config

        if args.weights is not None:
            raise PPSSLError("--weights applies to --encoder NAME, not to --checkpoint")
        path = str(Path(args.checkpoint).expanduser().resolve())
        read_checkpoint_config(path)  # a clear error if it is not a checkpoint directory
        return EncoderChoice(checkpoint=path, pooling=args.pooling, input_size=args.input_size, view=args.view)
    weights = args.weights
    if weights not in (None, "imagenet"):
        weights = str(Path(weights).expanduser().resolve())
    return EncoderChoice(name=args.encoder, weights=weights, pooling=args.pooling, input_size=args.input_size,
                         view=args.view)


def write_result(args: argparse.Namespace, result: dict, filename: str) -> bool:
    """``--out DIR``: write ``result`` to ``DIR/filename`` (atomically); ``--json``: print it and return True (the
    caller then prints no text report)."""
    import json
    from pathlib import Path

    from engine.atomic import atomic_write_json

    if getattr(args, "out", None):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out) / filename, result)
    if args.json:
        print(json.dumps(result))
        return True
    return False
