"""``ppssl serve``: the search app on an index, a folder of photos (indexed first) or the embedded demo.

Registered here, in the composition layer, because serving the default needs the demo pipeline (training) that
ui/ may not import; the app's own options and start-up are ui/cli.py's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ppssl.demo import add_demo_arguments, build_demo, demo_config, demo_paths, say, silent

#: The encoder ``ppssl serve --images`` indexes a folder with (then adapted to it: indexer.adapt): the backbone's
#: defaults, the whole photo at 288 px (engine.encoder.DEFAULT_VIEW, engine.backbones test_input_size).
FOLDER_ENCODER = {"encoder": "efficientnet_lite0", "weights": "imagenet", "pooling": "gap", "input_size": None,
                  "view": None}


def register(sub: argparse._SubParsersAction) -> None:
    from ui.cli import add_serve_arguments

    p = sub.add_parser("serve", help="start the search app (builds and serves the demo index by default)",
                       description="Start the Streamlit search app on an index. Without --index it serves the "
                                   "embedded default, building it first if needed (synthetic world -> the "
                                   "real-photo recipe on ImageNet EfficientNet-Lite0 -> index, plus an "
                                   "ImageNet-only index to compare with; one to two minutes on 2 CPU cores, "
                                   "cached for next time).")
    add_serve_arguments(p)
    add_demo_arguments(p)
    p.set_defaults(func=_run_serve)


def folder_index_dir(images: str | Path) -> Path:
    """Where ``ppssl serve --images DIR`` keeps DIR's index: ``$PPSSL_HOME/indexes/<name>-<hash of the path>``."""
    import hashlib

    folder = Path(images).expanduser().resolve()
    base = Path(os.environ.get("PPSSL_HOME") or Path.home() / ".cache" / "ppssl")
    return base / "indexes" / f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def index_folder(images: str | Path, index: str | Path | None = None, progress: bool = True) -> Path:
    """Index (or bring up to date) a folder of photos with the default encoder, adapted to the folder by default
    (``ppssl index build`` semantics: resumes, adds new files, keeps an existing head). Returns the index."""
    from indexer import EmbedOptions, EncoderSpec, Source, build_index

    folder = Path(images).expanduser().resolve()
    if not folder.is_dir():
        from engine.errors import PPSSLError

        raise PPSSLError(f"--images {images}: not a directory")
    out = Path(index).expanduser().resolve() if index else folder_index_dir(folder)
    if out == folder or folder in out.parents:
        from engine.errors import PPSSLError

        raise PPSSLError(f"--index {out} lies inside the photo folder {folder}; choose a folder outside it")
    say(f"indexing {folder} -> {out} (ImageNet EfficientNet-Lite0, adapted to the folder; resumes, adds new files)")
    encoder = EncoderSpec.parse(FOLDER_ENCODER["encoder"], FOLDER_ENCODER["weights"], FOLDER_ENCODER["pooling"],
                                FOLDER_ENCODER["input_size"], FOLDER_ENCODER["view"])
    rep = build_index(str(out), Source(images=str(folder)), encoder,
                      embed=EmbedOptions(progress=None if progress else silent))
    say(f"    {rep.count:,} images ({rep.added:,} new, {len(rep.skipped)} skipped)"
         + (f"; not adapted: {rep.adapt['skipped']}" if rep.adapt and "skipped" in rep.adapt else
            "; adapted to the folder" if rep.adapt else ""))
    if not rep.count:
        from engine.errors import PPSSLError

        raise PPSSLError(f"--images {images}: no readable photos there ({len(rep.skipped)} files skipped; "
                         f"report: {out / 'report.json'})")
    return out


def _run_serve(args: argparse.Namespace) -> int:
    from ui.cli import serve_from_args

    index, compare = args.index, None
    if args.images:
        index = index_folder(args.images, args.index)
        args.allow_root = list(args.allow_root) + [str(Path(args.images).expanduser().resolve()), str(index.parent)]
    elif index is None:
        cfg = demo_config(args)
        index = build_demo(cfg)
        compare = demo_paths(cfg)["baseline_index"]
        args.allow_root = list(args.allow_root) + [str(cfg.path() / "world")]
    return serve_from_args(args, index_dir=index, compare_dir=compare)
