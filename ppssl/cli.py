"""``ppssl`` entry point. Each package contributes its subcommands through ``<package>.cli.register``.

The per-package ``cli`` modules import nothing heavy at module level, so ``ppssl --help`` is fast;
each command imports its implementation when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Modules whose ``register(subparsers)`` adds subcommands, in help order.
COMMAND_MODULES = ("engine.cli", "training.cli", "indexer.cli", "api.cli", "ppssl.serve", "ppssl.demo", "ppssl.jobs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppssl",
        description="Fine-grained image retrieval with PP-SSL encoders: generate data, train, index, search, serve.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.errors import PPSSLError
    from engine.runtime import tune_allocator

    tune_allocator()  # every command's CPU forward passes (eval, index build, search, train): see engine/runtime.py

    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("ppssl: interrupted", file=sys.stderr)
        return 130
    except (PPSSLError, OSError) as exc:  # OSError: missing files, full or read-only disks, permissions
        if args.debug or os.environ.get("PPSSL_DEBUG"):
            raise
        print(f"ppssl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
