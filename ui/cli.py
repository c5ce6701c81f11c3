"""Options of ``ppssl serve`` and its start-up. The command itself is registered by ``ppssl.serve`` (it builds the
demo index when no ``--index`` is given), which calls :func:`add_serve_arguments` and :func:`serve_from_args`.

No torch import at module level (``ppssl --help`` stays fast).
"""

from __future__ import annotations

import argparse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ppssl serve`` options."""
    from ui.settings import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB

    parser.add_argument("--index", default=None, metavar="DIR",
                        help="index directory to serve (default: the built-in demo index, built on first use; with "
                             "--images, where the folder's index is kept)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="serve a folder of photos: index it first (ImageNet EfficientNet-Lite0 adapted to the "
                             "folder; kept under $PPSSL_HOME/indexes, or in --index DIR; later starts add new files), "
                             "and let the Build page extend it and train on it")
    parser.add_argument("--allow-root", action="append", default=[], metavar="DIR", dest="allow_root",
                        help="folder the Build page may index from and write new indexes under (repeatable); "
                             "without it building from the browser is disabled")
    parser.add_argument("--port", type=int, default=8501, help="TCP port to listen on (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted decoded image in pixels (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="another index over the same images (e.g. built with the ImageNet-only encoder), shown "
                             "beside the served one on the Evaluate page")
    parser.add_argument("--qdrant", default=None, metavar="LOCATION",
                        help="search the served index's Qdrant copy at this folder or URL (`ppssl index publish`)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a web browser")


def serve_from_args(args: argparse.Namespace, index_dir=None, compare_dir=None) -> int:
    """Start the app from parsed ``ppssl serve`` options; ``index_dir`` / ``compare_dir`` override
    ``args.index`` / ``args.compare``."""
    from ui.server import serve

    serve(index_dir if index_dir is not None else args.index, allow_roots=args.allow_root, port=args.port,
          host=args.host, max_upload_mb=args.max_upload_mb, headless=args.no_browser, block=True,
          max_pixels=args.max_pixels, compare_dir=compare_dir if compare_dir is not None else args.compare,
          qdrant=args.qdrant)
    return 0
