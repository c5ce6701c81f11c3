"""UI under load: N browser sessions querying a running ``ppssl serve`` at once, over Streamlit's own
WebSocket protocol on 127.0.0.1 (``benchmarks/reliability/ui_sessions.py``).

Each session opens the Search page, switches to "Pick from the gallery" and presses "Random gallery image"
(a full script run: FAISS search, top-10 cards with thumbnails). Reported: per-query latency from the click
to the end of the script run (percentiles), page-open latency, and every error or exception a page showed.
A single session is measured first as the baseline on the same server.

Usage::

    python -m benchmarks.reliability_ui_load [--sessions 20] [--rounds 3] [--gallery 60]

Writes the ``ui_load`` section of ``benchmarks/results/reliability.{md,json}``. About 2-4 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, md_table, percentile, write_results
from benchmarks.reliability import PREAMBLE, RESULTS_NAME, SECTIONS

COLUMNS = ["load", "sessions", "sessions with an error", "query p50 (s)", "query p90 (s)", "query max (s)",
           "page open p50 (s)", "round wall (s)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions per round (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of concurrent sessions (default 3)")
    ap.add_argument("--gallery", type=int, default=60, help="gallery images (default 60)")
    args = ap.parse_args()
    info = machine_info()

    import torch

    from benchmarks.reliability.gallery import make_clean_gallery
    from benchmarks.reliability.ui_sessions import free_port, gallery_query, run_sessions
    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index
    from ui.server import serve, wait_until_ready

    tmp = Path(tempfile.mkdtemp(prefix="ppssl-rel-ui-"))
    classes = 6
    make_clean_gallery(tmp / "gallery", classes=classes, per_class=max(1, args.gallery // classes),
                       size=(160, 120))
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn", input_size=64), tmp / "ckpt")
    build_index(tmp / "index", Source(images=tmp / "gallery"), str(tmp / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    port = free_port()
    t0 = time.monotonic()
    proc = serve(tmp / "index", port=port, block=False, quiet=True)
    rows, failures, all_q = [], [], []
    try:
        wait_until_ready(port, timeout=300, proc=proc)
        start_s = time.monotonic() - t0
        first = gallery_query(port)  # fills the server's caches (index, encoder, thumbnails)
        single = [gallery_query(port) for _ in range(5)]
        q = sorted(r["query_s"] for r in single)
        rows.append(("1 session (x5, sequential)", 5, 0, f"{percentile(q, 50):.2f}", f"{percentile(q, 90):.2f}",
                     f"{q[-1]:.2f}", f"{percentile([r['open_s'] for r in single], 50):.2f}", "-"))
        fast = [gallery_query(port, ids=first["ids"]) for _ in range(5)]
        q = sorted(r["query_s"] for r in fast)
        rows.append(("1 session, query in the first run (x5)", 5, 0, f"{percentile(q, 50):.2f}",
                     f"{percentile(q, 90):.2f}", f"{q[-1]:.2f}", "-", "-"))
        for r in [first, *single]:
            if r["errors"] or r["exceptions"] or r["results"] != 10:
                failures.append(f"baseline: {r}")
        for k in range(2 * args.rounds):
            full = k < args.rounds  # full visits (3 script runs each), then query-only visits (1 run each)
            t1 = time.monotonic()
            res = run_sessions(port, args.sessions, ids=None if full else first["ids"])
            wall = time.monotonic() - t1
            bad = [r for r in res if "error" in r or r["exceptions"] or r["errors"] or r["results"] != 10]
            failures += [f"round {k + 1}: {r}" for r in bad]
            q = sorted(r["query_s"] for r in res if "query_s" in r)
            o = sorted(r["open_s"] for r in res if r.get("open_s") is not None)
            all_q += q
            rows.append((f"{args.sessions} sessions at once, {'full visit' if full else 'query only'}, "
                         f"round {k % args.rounds + 1}", len(res), len(bad),
                         f"{percentile(q, 50):.2f}", f"{percentile(q, 90):.2f}", f"{q[-1]:.2f}",
                         f"{percentile(o, 50):.2f}" if o else "-", f"{wall:.1f}"))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except Exception:  # noqa: BLE001
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    body = [f"`ppssl serve` (ui.server.serve) of a {args.gallery}-image tinycnn index on 127.0.0.1 (ready after "
            f"{start_s:.1f} s). Each session is a real Streamlit session over `/_stcore/stream`: open the Search "
            "page, choose \"Pick from the gallery\", press \"Random gallery image\" (search + 10 result cards with "
            "thumbnails): a full visit is those 3 script runs; a query-only visit sends both widget states in its "
            "first run (what `tests/reliability/test_concurrency.py` does). Latency = click to end of the script run, in seconds; sessions of a round are released "
            "together by a barrier. Streamlit runs every session's script in the one server process, so "
            "concurrent queries share its 2 CPU cores and the GIL.\n",
            md_table(COLUMNS, rows),
            f"\n{len(all_q)} concurrent queries in total; failures: "
            + ("none." if not failures else "\n\n" + "\n".join(f"- {f}" for f in failures))]
    data = {"sessions": args.sessions, "rounds": args.rounds, "gallery": args.gallery, "ready_s": start_s,
            "loads": [dict(zip(COLUMNS, r)) for r in rows], "concurrent_queries": len(all_q), "failures": failures}
    path = write_results(RESULTS_NAME, data, "\n".join(body) + "\n", info=info, section="ui_load",
                         title="UI under load: concurrent sessions on loopback", preamble=PREAMBLE, order=SECTIONS)[1]
    print(f"wrote the ui_load section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
