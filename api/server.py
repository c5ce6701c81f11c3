"""Run the API with uvicorn (one process: the batcher gathers requests across connections)."""

from __future__ import annotations

import sys
from pathlib import Path


def build(index_dir, *, allow_roots=(), token=None, qdrant=None, batching=True, max_batch=32, max_wait_ms=5.0,
          max_upload_mb=20, max_pixels=40_000_000):
    """``(FastAPI app, SearchService)`` for an index directory (validated: a clear error, not a traceback)."""
    from api.app import create_app
    from api.service import SearchService
    from engine.errors import PPSSLError
    from indexer.header import HEADER_FILE

    if not (Path(index_dir).expanduser() / HEADER_FILE).is_file():
        raise PPSSLError(f"--index {index_dir}: not an index directory (no {HEADER_FILE})")
    for r in allow_roots:
        if not Path(r).expanduser().is_dir():
            raise PPSSLError(f"--allow-root {r}: not an existing directory")
    if max_batch < 1 or max_wait_ms < 0 or max_upload_mb <= 0 or max_pixels <= 0:
        raise PPSSLError("--max-batch, --max-upload-mb and --max-pixels must be positive, --max-wait-ms >= 0")
    service = SearchService(index_dir, qdrant=qdrant, batching=batching, max_batch=max_batch,
                            max_wait_ms=max_wait_ms, allow_roots=allow_roots)
    return create_app(service, token=token, max_upload_mb=max_upload_mb, max_pixels=max_pixels), service


def serve_api(index_dir, *, host="127.0.0.1", port=8000, **kw) -> None:
    import uvicorn

    from engine.runtime import tune_allocator

    tune_allocator()
    app, service = build(index_dir, **kw)
    print(f"ppssl api: http://{host}:{port}/docs  (index {service.index_dir}, {service.index().count:,} items; "
          f"batching {'on' if service.batcher.enabled else 'off'}; Ctrl-C stops)", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        service.close()
