"""``ppssl api``: serve an index over HTTP. No torch import at module level (``ppssl --help`` stays fast)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve an index over HTTP (JSON API with dynamic batching; docs/api.md)",
                       description="Serve an index to other programs: POST /v1/search with a photo, /v1/search/batch, "
                                   "/v1/search/by-id/ID, GET /v1/items/ID, /v1/index, /healthz; writes (POST "
                                   "/v1/items, DELETE /v1/items/ID) need --token-file. OpenAPI schema at /docs.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR", dest="allow_root",
                   help="folder whose gallery files GET /v1/items/ID/image may return (repeatable; none: off)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the bearer token that the write endpoints require (without it they are off)")
    p.add_argument("--qdrant", default=None, metavar="LOCATION",
                   help="search the index's Qdrant copy at this folder or URL (`ppssl index publish`)")
    p.add_argument("--no-batching", action="store_true",
                   help="embed each request's photo alone (default: concurrent requests share a forward pass)")
    p.add_argument("--max-batch", type=int, default=32, help="most photos per batched forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5 ms)")
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest accepted photo in MiB (default 20)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest decoded photo (default 40 Mpx)")
    p.set_defaults(func=_run)


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    from engine.errors import PPSSLError

    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PPSSLError(f"--token-file {path}: cannot read it ({exc})") from None
    if len(token) < 16:
        raise PPSSLError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def _run(args: argparse.Namespace) -> int:
    from api.server import serve_api

    serve_api(args.index, host=args.host, port=args.port, allow_roots=args.allow_root,
              token=read_token(args.token_file), qdrant=args.qdrant, batching=not args.no_batching,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
              max_pixels=args.max_pixels)
    return 0
