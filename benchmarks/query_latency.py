"""Query latency: one uploaded photo -> ranked results, vs one forward plus one search measured alone.

Subject: the Search page's path, in process: ``ui.uploads.read_upload`` on the JPEG's bytes, then
``ui.query.run_query`` (transform, forward, ``Index.search``, hits); without the ui package it falls back
to ``open_image`` + ``Index.search([image])``. Baseline: the encoder's forward on one pre-transformed
image and one ``Index.search`` of a stored feature, each timed alone. The three are interleaved query by
query (order rotated), so each percentile sees the same machine load. Decode and transform are timed
alone too: they explain what the sum leaves out.

Gallery: a flat index of ``--gallery`` vectors (random unit vectors added with ``add_vectors`` under the
encoder's fingerprint: embedding 10k photos would only add minutes, not change the query path).
Queries: cub100 photos (or synthetic JPEGs where cub100 is absent).

    python -m benchmarks.query_latency                    # efficientnet_lite0, 10k gallery, 100 queries
    python -m benchmarks.query_latency --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (image_source, machine_info, md_table, percentile, sync, to_jsonable, verdict,
                               write_results)

TARGET = 1.2


def make_gallery(index_dir: Path, encoder, n: int, seed: int = 0):
    """A flat index of ``n`` random unit vectors recorded under ``encoder``'s fingerprint."""
    from indexer import Index, add_vectors
    from indexer.build import create_index
    from indexer.encoders import feature_fingerprint, spec_of

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, encoder.feature_dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    create_index(index_dir, dim=encoder.feature_dim, fingerprint=feature_fingerprint(encoder),
                 spec=spec_of(encoder), index_type="flat")
    add_vectors(index_dir, vecs, [f"g/{i:06d}.jpg" for i in range(n)], [f"c{i % 100}" for i in range(n)])
    return Index.open(index_dir, use_gpu=False)


def query_path():
    """The UI's upload -> hits function, or the indexer-only equivalent."""
    try:
        from ui.query import run_query
        from ui.uploads import read_upload
    except ImportError:
        from engine.imageio import open_image

        def run(index, encoder, name, data, k):
            return index.search([open_image(data)], k=k, encoder=encoder)[0]

        return run, "engine.imageio.open_image + indexer.Index.search([image])"

    def run(index, encoder, name, data, k):
        q = read_upload(name, data, max_bytes=50 << 20, max_pixels=100_000_000)
        return run_query(index, encoder, q.image, k=k).hits

    return run, "ui.uploads.read_upload + ui.query.run_query"


def bench(model: str, gallery: int, queries: int, device: str, k: int, log, workdir: Path) -> dict:
    import torch

    from engine.checkpoint import fingerprint_state
    from engine.encoder import create_encoder
    from engine.imageio import open_image

    torch.manual_seed(0)
    encoder = create_encoder(model).eval().to(device)
    encoder.fingerprint = fingerprint_state(encoder.state_dict())
    index = make_gallery(workdir / f"idx_{model}", encoder, gallery)
    folder, step, source = image_source(queries, workdir / "jpegs")
    files = sorted(p for p in folder.rglob("*") if p.is_file())[::step][:queries]
    blobs = [(p.name, p.read_bytes()) for p in files]
    tf = encoder.transform()
    run, path_name = query_path()
    feats = []

    def forward(i):
        x = tf(open_image(blobs[i][1]))[None].to(device)
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            f = encoder(x)[0].float().cpu().numpy()
        sync(device)
        feats.append(f)
        return time.perf_counter() - t

    def search(i):
        v = feats[-1][None]
        t = time.perf_counter()
        index.search(v, k=k)
        return time.perf_counter() - t

    def end_to_end(i):
        t = time.perf_counter()
        hits = run(index, encoder, blobs[i][0], blobs[i][1], k)
        sync(device)
        assert len(hits) == min(k, gallery)
        return time.perf_counter() - t

    def decode(i):
        t = time.perf_counter()
        open_image(blobs[i][1])
        return time.perf_counter() - t

    def transform(i):
        im = open_image(blobs[i][1])
        t = time.perf_counter()
        tf(im)
        return time.perf_counter() - t

    subjects = {"forward": forward, "search": search, "end_to_end": end_to_end, "decode": decode,
                "transform": transform}
    for i in range(3):  # warm-up (lazy imports, allocator, cudnn)
        for name in ("forward", "search", "end_to_end"):
            subjects[name](i % len(blobs))
    times = {n: [] for n in subjects}
    names = list(subjects)
    for i in range(queries):
        j = i % len(blobs)
        order = names[i % len(names):] + names[:i % len(names)]
        if order.index("search") < order.index("forward"):  # search needs this query's feature
            order.remove("search")
            order.insert(order.index("forward") + 1, "search")
        for name in order:
            times[name].append(subjects[name](j))
    pct = {n: {"p50_ms": percentile(v, 50) * 1e3, "p95_ms": percentile(v, 95) * 1e3} for n, v in times.items()}
    base50 = pct["forward"]["p50_ms"] + pct["search"]["p50_ms"]
    base95 = pct["forward"]["p95_ms"] + pct["search"]["p95_ms"]
    paired = [e / (f + s) for e, f, s in zip(times["end_to_end"], times["forward"], times["search"])]
    res = {"model": model, "gallery": gallery, "queries": queries, "device": device, "k": k, "source": source,
           "path": path_name, "threads": torch.get_num_threads(), "percentiles": pct,
           "ratio_p50": pct["end_to_end"]["p50_ms"] / base50, "ratio_p95": pct["end_to_end"]["p95_ms"] / base95,
           "paired_ratio_median": percentile(paired, 50), "raw_s": times}
    log(f"  {model}: end-to-end p50 {pct['end_to_end']['p50_ms']:.1f} ms vs forward+search "
        f"{base50:.1f} ms -> {res['ratio_p50']:.2f}x (p95 {res['ratio_p95']:.2f}x)")
    return res


def markdown(res: dict) -> str:
    rows = []
    for r in res["runs"]:
        p = r["percentiles"]
        rows.append([r["model"], r["device"], r.get("threads"), r["gallery"], r["queries"],
                     p["end_to_end"]["p50_ms"], p["end_to_end"]["p95_ms"], p["forward"]["p50_ms"],
                     p["forward"]["p95_ms"], p["search"]["p50_ms"], p["decode"]["p50_ms"], p["transform"]["p50_ms"],
                     r["ratio_p50"], r["ratio_p95"], r.get("paired_ratio_median"),
                     verdict(max(r["ratio_p50"], r["ratio_p95"]), TARGET, False)])
    path = res["runs"][0]["path"] if res["runs"] else ""
    return "\n".join([
        f"Subject: `{path}` on the JPEG bytes; baseline: forward on a pre-transformed image + "
        f"`Index.search` of a feature, timed alone; ratio = end-to-end / (forward + search) at p50 and at p95 "
        f"(verdict on the larger), and the median of the per-query ratios (each query's three timings are "
        f"taken back to back). Target <= {TARGET}.\n",
        md_table(["model", "device", "torch threads", "gallery", "queries", "e2e p50 ms", "e2e p95 ms",
                  "forward p50 ms", "forward p95 ms", "search p50 ms", "decode p50 ms", "transform p50 ms",
                  "ratio p50", "ratio p95", "paired ratio", "verdict"], rows),
        f"\nQueries: {res['runs'][0]['source'] if res['runs'] else ''}."])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0"], help="backbones")
    ap.add_argument("--gallery", type=int, default=10_000, help="gallery size")
    ap.add_argument("--queries", type=int, default=100, help="queries (interleaved with the baselines)")
    ap.add_argument("--k", type=int, default=10, help="results per query")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default=None, help="result file name (default query_latency[_gpu])")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    work = Path(tempfile.mkdtemp(prefix="ppssl_query_"))
    try:
        runs = [bench(m, args.gallery, args.queries, args.device, args.k, lambda s: print(s, flush=True), work)
                for m in args.models]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = to_jsonable({"runs": runs})
    name = args.name or ("query_latency_gpu" if args.device.startswith("cuda") else "query_latency")
    paths = write_results(name, res, markdown(res), title="Query latency: upload -> results vs forward + search",
                          info=info, out_dir=args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
