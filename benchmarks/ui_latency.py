"""Search-page query latency and Attention-page GradCAM time on a 10,000-image gallery (CPU).

What is timed is what the pages run, in-process (no browser, no Streamlit rendering):

* **query** (Search page, upload -> results ready): ``ui.uploads.read_upload`` on the photo's bytes (size
  check, decode) + ``ui.query.run_query`` (preprocess, forward pass, exact FAISS search of the 10k gallery,
  manifest lookups), k = 10. Queries are cub100 *train* photos, none of them in the gallery.
* **GradCAM top-5** (Attention page): ``engine.gradcam.retrieval_gradcam`` of the query feature on the top-5
  result images; **attention page** adds what the page computes with it (map A of query + 5 results, the
  query's GradCAM against result #1).
* **bare forward** (floor): the encoder's forward pass on one preprocessed image, interleaved with the
  queries, so the UI's own overhead is reported as a ratio on this shared, noisy machine.

Gallery (10,000 items, built through the indexer's vector path, ``indexer.create_index`` + ``add_vectors``):
the real features of ``--real`` cub100 test photos embedded with the encoder, plus jittered copies of them
(Gaussian noise, re-normalised) up to 10,000. Search cost depends on the count and dimension only, and the
top-5 images for GradCAM are the real photos behind the hits (a jittered copy maps to its source photo).

    python -m benchmarks.ui_latency                  # both encoders, writes benchmarks/results/ui.{md,json}
    python -m benchmarks.ui_latency --encoders tinycnn --queries 10 --md ''   # quick look, nothing written
    python -m benchmarks.ui_latency --omp-wait-policy ACTIVE --md ''          # OpenMP's default, for contrast

The first run embeds the real photos (about 1.5 min for EfficientNet-Lite0 on 2 busy cores) and caches the
checkpoints and indexes under ``--work``; later runs take under a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (CUB100, machine_info, md_table, percentile, source_version, stamped_dir,
                               tree_listing, write_results)

ENCODERS = {
    # name -> (create_encoder args, what it stands for)
    "tinycnn": (("tinycnn", None), "the CPU demo's backbone (96 px); weights random, timing identical"),
    "efficientnet_lite0": (("efficientnet_lite0", "imagenet"), "ImageNet EfficientNet-Lite0, 224 px, GAP"),
}


def _prepare_index(name: str, work: Path, real: int, total: int, seed: int = 0):
    """Checkpoint + 10k vector index for one encoder, each rebuilt when what made it changed (settings, photos,
    code: ``benchmarks.common.stamped_dir``); returns (index, encoder)."""
    import torch

    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.encoder import create_encoder
    from indexer import Index, add_vectors, create_index, feature_fingerprint

    args, _ = ENCODERS[name]
    ckpt_key = {"encoder": list(args), "seed": seed, "code": source_version(["engine"])}

    def make_ckpt(out: Path) -> None:
        torch.manual_seed(seed)
        save_checkpoint(create_encoder(*args), out)

    ckpt = stamped_dir(work / f"{name}_ckpt", ckpt_key, make_ckpt)
    enc = load_checkpoint(ckpt).eval()
    test = build_dataset("cub200", str(CUB100), split="test", transform=enc.transform())
    step = max(1, len(test.samples) // real)
    chosen = list(range(0, len(test.samples), step))[:real]
    test.samples = [test.samples[i] for i in chosen]

    def make_index(index_dir: Path) -> None:
        t0 = time.perf_counter()
        feats, labels = extract_features(enc, test, batch_size=32, num_workers=0, device="cpu",
                                         desc=f"{name}: embedding {len(test.samples)} real photos")
        print(f"{name}: embedded {len(feats)} photos in {time.perf_counter() - t0:.1f} s", flush=True)
        rng = np.random.default_rng(seed)
        src = rng.integers(0, len(feats), total - len(feats))
        jitter = feats[src] + rng.normal(0, 0.5 / np.sqrt(feats.shape[1]), (len(src), feats.shape[1]))
        jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
        vectors = np.concatenate([feats, jitter.astype(np.float32)])
        root = CUB100 / "images"
        rel = [str(Path(p).relative_to(root)) for p, _ in test.samples]
        classes = test.classes
        paths = rel + [f"jitter/{i:05d}_of_{rel[s]}" for i, s in enumerate(src)]
        labs = [classes[y] for y in labels] + [classes[labels[s]] for s in src]
        create_index(index_dir, dim=enc.feature_dim, fingerprint=feature_fingerprint(enc), root=root)
        add_vectors(index_dir, vectors, paths, labs)

    index_key = {"ckpt": ckpt_key, "real": real, "total": total, "photos": [str(p) for p, _ in test.samples],
                 "data": tree_listing(CUB100 / "images"),
                 "code": source_version(["engine", "indexer"])}
    idx = Index.open(stamped_dir(work / f"{name}_index_{total}", index_key, make_index))
    assert idx.count == total, (idx.count, total)
    return idx, enc


def _source_photo(idx, path: str) -> Path:
    """The real photo behind a hit: itself, or the photo a jittered copy was made from."""
    if path.startswith("jitter/"):
        path = path.split("_of_", 1)[1]
    return idx.resolve(path)


def _bench_encoder(name: str, work: Path, args) -> dict:
    import torch

    from engine.gradcam import attention_maps, cam_model, retrieval_gradcam
    from engine.datasets import build_dataset
    from engine.imageio import open_image
    from ui.query import run_query
    from ui.uploads import read_upload

    idx, enc = _prepare_index(name, work, args.real, args.gallery)
    train = build_dataset("cub200", str(CUB100), split="train")
    photos = [p for p, _ in train.samples[:: max(1, len(train.samples) // (args.queries + args.warmup))]]
    photos = photos[: args.queries + args.warmup]
    blobs = [Path(p).read_bytes() for p in photos]
    x1 = enc.transform()(open_image(photos[0]))[None]

    def bare():
        with torch.inference_mode():
            enc(x1)

    query_ms, bare_ms, embed_ms, search_ms, results = [], [], [], [], []
    for i, (path, data) in enumerate(zip(photos, blobs)):
        t0 = time.perf_counter()
        q = read_upload(Path(path).name, data, max_bytes=20 * 2**20, max_pixels=40_000_000)
        res = run_query(idx, enc, q.image, k=10)
        total = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        bare()
        b = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            query_ms.append(total)
            bare_ms.append(b)
            embed_ms.append(res.embed_ms)
            search_ms.append(res.search_ms)
            results.append((q.image, res))
    print(f"{name}: query p50 {percentile(query_ms, 50):.1f} ms", flush=True)

    cam = cam_model(enc)
    cam_ms, page_ms = [], []
    for i, (qimg, res) in enumerate(results[: args.cam_queries + 1]):
        imgs = [open_image(_source_photo(idx, h.path)) for h in res.hits[:5]]
        t0 = time.perf_counter()
        retrieval_gradcam(cam, res.feature, imgs, "layer4", 224)
        t_cam = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        attention_maps(enc, [qimg] + imgs, 224)
        retrieval_gradcam(cam, idx.vectors([res.hits[0].id])[0], [qimg], "layer4", 224)
        t_rest = (time.perf_counter() - t0) * 1e3
        if i > 0:  # the first call pays one-off costs (hooks, allocator)
            cam_ms.append(t_cam)
            page_ms.append(t_cam + t_rest)
    print(f"{name}: GradCAM top-5 p50 {percentile(cam_ms, 50):.0f} ms", flush=True)
    ratio = [a / b for a, b in zip(query_ms, bare_ms)]
    return {
        "encoder": name, "about": ENCODERS[name][1], "gallery": idx.count, "dim": idx.dim,
        "input_size": enc.config.input_size, "queries": len(query_ms), "gradcam_queries": len(cam_ms),
        "query_ms": {"p50": percentile(query_ms, 50), "p95": percentile(query_ms, 95)},
        "embed_ms_p50": percentile(embed_ms, 50), "search_ms_p50": percentile(search_ms, 50),
        "bare_forward_ms_p50": percentile(bare_ms, 50), "query_over_bare_forward_p50": percentile(ratio, 50),
        "gradcam_top5_ms": {"p50": percentile(cam_ms, 50), "p95": percentile(cam_ms, 95)},
        "attention_page_ms": {"p50": percentile(page_ms, 50), "p95": percentile(page_ms, 95)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS),
                    help="encoders to time (default: all)")
    ap.add_argument("--gallery", type=int, default=10_000, help="gallery size (default 10000)")
    ap.add_argument("--real", type=int, default=300, help="real cub100 test photos embedded into the gallery")
    ap.add_argument("--queries", type=int, default=30, help="timed queries per encoder (cub100 train photos)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first queries")
    ap.add_argument("--cam-queries", type=int, default=8, help="queries whose top-5 get a timed GradCAM")
    ap.add_argument("--threads", type=int, default=2, help="torch/FAISS threads (the 2-core target)")
    ap.add_argument("--work", default="/tmp/ppssl_ui_bench", help="cache for checkpoints and indexes")
    ap.add_argument("--md", default="ui", help="result name under benchmarks/results ('' = print only)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"],
                    help="OpenMP idle policy; PASSIVE is what `ppssl serve` sets for the app (default)")
    args = ap.parse_args(argv)
    if "torch" in sys.modules:
        raise RuntimeError("OMP_WAIT_POLICY must be set before torch is imported")
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if not (CUB100 / "images.txt").is_file():
        print(f"cub100 not found at {CUB100}", file=sys.stderr)
        return 2
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    info = machine_info()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [_bench_encoder(name, work, args) for name in args.encoders]
    elapsed = time.time() - t0
    table = md_table(
        ["encoder", "gallery", "query p50 (ms)", "query p95 (ms)", "embed p50", "search p50", "bare forward p50",
         "query / bare forward", "GradCAM top-5 p50 (ms)", "GradCAM top-5 p95 (ms)", "Attention page p50 (ms)"],
        [[r["encoder"], f"{r['gallery']:,} × {r['dim']}-d", r["query_ms"]["p50"], r["query_ms"]["p95"],
          r["embed_ms_p50"], r["search_ms_p50"], r["bare_forward_ms_p50"], r["query_over_bare_forward_p50"],
          r["gradcam_top5_ms"]["p50"], r["gradcam_top5_ms"]["p95"], r["attention_page_ms"]["p50"]] for r in rows])
    body = f"""
{args.threads} torch/FAISS threads, OMP_WAIT_POLICY={args.omp_wait_policy}. Query = upload bytes -> results ready,
as the Search page computes it (`read_upload` + `run_query`, k = 10, exact flat inner-product search); {rows[0]['queries']} cub100 train photos per
encoder after {args.warmup} warm-up queries. GradCAM top-5 = `retrieval_gradcam` on the 5 result images
({rows[0]['gradcam_queries']} queries); Attention page = that plus map A of the query and the 5 results and the
query's GradCAM against result #1. Times exclude the browser's rendering (see docs/ui.md for the end-to-end
browser figure). Gallery: {args.real} real cub100 test-photo features + jittered copies up to {args.gallery:,}
(indexer vector path). Total run {elapsed:.0f} s.

{table}

Encoders: {'; '.join(f"`{r['encoder']}`: {r['about']}" for r in rows)}.
"""
    print(body)
    if args.md:
        data = {"rows": rows, "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "seconds": elapsed}
        write_results(args.md, data, body, title="UI latency: Search query and GradCAM on a 10k gallery (CPU)",
                      info=info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
