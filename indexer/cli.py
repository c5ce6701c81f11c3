"""``ppssl index build|add|remove|eval|info|merge`` and ``ppssl search``. Nothing heavy is imported here."""

from __future__ import annotations

import argparse
import json
import sys

from engine.cliargs import add_encoder_args, add_json_arg, add_runtime_args, encoder_choice
from indexer.adapt import MIN_GALLERY


def _encoder_args(p: argparse.ArgumentParser) -> None:
    add_encoder_args(p, required=False, default_note="default for an existing index: the one recorded in it")


def _loader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_runtime_args(p)
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on the GPU")
    _backend_arg(p)
    _precision_arg(p)


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default=None,
                   help="embedding precision, chosen when an index is created and fixed after: int8 = ONNX Runtime "
                        "static quantisation calibrated on the gallery's photos; auto (default) = int8 where it was "
                        "measured to pay (docs/indexer.md), else fp32. For an existing index only its own "
                        "precision (or auto) is accepted: queries are never embedded at another")


def _backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "onnxruntime", "torch"], default=None,
                   help="inference backend on CPU: auto (ONNX Runtime when its export matches PyTorch, else "
                        "PyTorch), onnxruntime (required), torch (default: $PPSSL_INFERENCE or auto)")


def _with_backend(run):
    """A command that embeds does so with its ``--backend`` (engine.ort.inference_backend, scoped to the call)."""
    import functools

    @functools.wraps(run)
    def wrapped(args) -> int:
        from engine.ort import inference_backend

        with inference_backend(getattr(args, "backend", None)):
            return run(args)

    return wrapped


def _encoder_from(args):
    """The ``EncoderSpec`` named by ``--checkpoint`` / ``--encoder`` (engine.cliargs), or None."""
    choice = encoder_choice(args)
    if choice is None:
        return None
    from indexer.encoders import EncoderSpec

    return EncoderSpec(checkpoint=choice.checkpoint, backbone=choice.name, weights=choice.weights,
                       pooling=choice.pooling, input_size=choice.input_size, view=choice.view)


#: what `ppssl search` re-ranks with by default: alpha-QE (top 1, its default k), chosen on cub100's validation part
#: among the methods that need no preparation (the largest mean mAP gain, rank-1 never lower; rerank_val.md)
SEARCH_REFINE = "qe"


def _refine_args(p: argparse.ArgumentParser, default: str = "none") -> None:
    from indexer.refine import RERANKERS  # numpy only: `ppssl --help` stays free of torch

    g = p.add_argument_group("re-ranking (benchmarks/results/rerank.md)")
    g.add_argument("--refine", default=default, choices=list(RERANKERS),
                   help="query-time re-ranking: " + "; ".join(f"{n} = {r.summary}" for n, r in RERANKERS.items())
                        + f" (default {default})")
    g.add_argument("--refine-k", type=int, default=None,
                   help="neighbours used by qe and dba (default: each method's, chosen on cub100's validation "
                        "part: " + ", ".join(f"{n} {r.default_k}" for n, r in RERANKERS.items()
                                              if n in ("qe", "dba", "dba+qe")) + "; benchmarks/results/rerank_val.md)")


def _refine_from(args):
    from indexer.refine import Refine

    return Refine(method=args.refine, k=args.refine_k)


def _shard(text: str | None):
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"--shard wants I/N with 0 <= I < N, got {text!r}") from None
    return i, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, update, inspect and evaluate a FAISS gallery index",
                       description="Gallery indexes: embed images with an encoder into FAISS (see docs/indexer.md).")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = isub.add_parser("build", help="embed a folder or dataset split into an index (resumable)",
                        description="Embed images into an index directory. Rerunning resumes an interrupted "
                                    "build and adds new files; --rebuild re-creates the FAISS index from the "
                                    "stored vectors (e.g. with another --index type) without re-embedding.")
    b.add_argument("--out", required=True, help="index directory (created, or resumed / extended)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--images", default=None, help="folder of images; labels = parent folder names")
    src.add_argument("--dataset", default=None, help="dataset reader name (cub200, cars, ..., folder)")
    b.add_argument("--root", default=None, help="dataset root directory (with --dataset)")
    b.add_argument("--split", default="test", help="dataset split: train, test or all (default test)")
    _encoder_args(b)
    # the names of indexer.faiss_index.INDEX_TYPES, spelled out: importing it here would load numpy for every command
    b.add_argument("--index", dest="index_type", default=None,
                   choices=["flat", "ivf", "ivfsq", "ivfpq", "hnsw", "auto"],
                   help="index type: flat = exact inner product (default), ivf (IVF-Flat), ivfsq (IVF with 8-bit "
                        "codes, candidates re-scored exactly), ivfpq, hnsw, auto = flat up to 100k images, ivfsq above")
    b.add_argument("--nlist", type=int, default=None, help="IVF cells (default about 4*sqrt(N))")
    b.add_argument("--nprobe", type=int, default=None, help="IVF cells searched (default max(16, nlist/16))")
    b.add_argument("--pq-m", type=int, default=None, help="IVF-PQ bytes per vector (default: divisor of dim near dim/16)")
    b.add_argument("--hnsw-m", type=int, default=None, help="HNSW graph degree (default 32)")
    b.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default 128)")
    b.add_argument("--rerank", type=int, default=None,
                   help="ivfsq/ivfpq: re-score k*RERANK candidates exactly from the stored vectors (default 4 for "
                        "ivfsq, 0 = off for ivfpq)")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="embed on a Ray cluster (Ray Data + embedding actors; the manifest is committed here as in "
                        "a local build): ADDRESS of the cluster (auto, ray://host:10001), or none for a local Ray "
                        "(needs pip install 'ppssl[ray]')")
    b.add_argument("--rebuild", action="store_true",
                   help="re-create the FAISS index from the stored vectors (new type/parameters, retrained)")
    b.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=None,
                   help="fit the unsupervised retrieval head on the gallery's own vectors (no labels, about a minute) and "
                        f"search in its space; default: on for galleries of at least {MIN_GALLERY} images whose encoder has "
                        "no head of its own (docs/indexer.md, benchmarks/results/adapt.md). Fitted once when the "
                        "build completes; add/remove keep it, --rebuild refits it (--rebuild --no-adapt drops it)")
    b.add_argument("--chunk-size", type=int, default=512, help="images per committed chunk (default 512)")
    b.add_argument("--shard", type=_shard, default=None,
                   help="I/N: index every N-th file from the I-th (sharded jobs; with --images or --dataset: a "
                        "rerun without them resumes the shard the index recorded)")
    b.add_argument("--trained-from", default=None, help="reuse the IVF training of this index (shards to merge)")
    b.add_argument("--id-offset", type=int, default=0, help="first id minus one (disjoint ids for IndexShards)")
    _loader_args(b)
    b.set_defaults(func=_run_build)

    a = isub.add_parser("add", help="add files or folders to an index (ids of existing items never change)",
                        description="Embed and add files; files already present with the same content are "
                                    "skipped. Paths must lie under the index's gallery root.")
    a.add_argument("--index", required=True, help="index directory")
    a.add_argument("paths", nargs="+", help="image files or folders")
    a.add_argument("--label", default=None, help="label for all added files (default: parent folder names)")
    _encoder_args(a)
    _loader_args(a)
    a.set_defaults(func=_run_add)

    r = isub.add_parser("remove", help="remove items by id or path (other ids never change)",
                        description="Remove items. HNSW indexes are rebuilt from the stored vectors.")
    r.add_argument("--index", required=True, help="index directory")
    r.add_argument("--id", dest="ids", type=int, nargs="*", default=[], help="ids to remove")
    r.add_argument("--path", dest="paths", nargs="*", default=[], help="paths to remove (as listed or on disk)")
    r.set_defaults(func=_run_remove)

    e = isub.add_parser("eval", help="rank-1/5/10, mAP, MAP@R, per class, rank-k curve (PNG + JSON)",
                        description="Evaluate retrieval from the index's labels with the engine's metric code.")
    e.add_argument("--index", required=True, help="index directory")
    e.add_argument("--queries", default=None,
                   help="folder of labelled query images (one sub-folder per class); default: leave-one-out, every "
                        "gallery item queries the rest")
    e.add_argument("--out", default=None, help="write eval.json and rank_curve.png here (default INDEX/eval)")
    e.add_argument("--qdrant", default=None, metavar="LOCATION",
                   help="evaluate the index's Qdrant copy (see `index publish`): its own search gives the ANN rows")
    e.add_argument("--collection", default=None, help="with --qdrant: the collection (default: the index's name)")
    e.add_argument("--compare", default=None, metavar="OTHER_INDEX",
                   help="also evaluate OTHER_INDEX and print both side by side, scored over the images the two "
                        "hold in common (same path and content): e.g. ImageNet-only vs a trained encoder. "
                        "'plain' compares an adapted index with its own vectors before the head (same photos)")
    e.add_argument("--max-k", type=int, default=50, help="length of the rank-k curve (default 50)")
    add_json_arg(e, "the full report")
    _refine_args(e)
    _encoder_args(e)
    _loader_args(e)
    e.set_defaults(func=_run_eval)

    d = isub.add_parser("dba", help="compute the database-side augmentation vectors of --refine dba once",
                        description="Compute and cache (beside the raw vectors) the DBA vectors that --refine dba "
                                    "searches: one exact top-k search per item. Small indexes get them on first use.")
    d.add_argument("--index", required=True, help="index directory")
    d.add_argument("--k", type=int, default=None,
                   help="neighbours averaged into each item (default: --refine dba's, 5 (rerank_val.md))")
    d.set_defaults(func=_run_dba)

    pub = isub.add_parser("publish", help="copy the index into a Qdrant collection (kept in step by add/remove)",
                          description="Publish an index to a vector database (Qdrant: a local folder for the "
                                      "embedded mode, or an http(s):// URL of a server/cluster). index add/remove "
                                      "keep it in step; `ppssl search --qdrant` queries it.")
    pub.add_argument("--index", required=True, help="index directory")
    pub.add_argument("--qdrant", required=True, metavar="LOCATION", help="folder (embedded Qdrant) or http(s) URL")
    pub.add_argument("--collection", default=None, help="collection name (default: the index folder's name)")
    pub.set_defaults(func=_run_publish)

    i = isub.add_parser("info", help="header, counts, consistency and skipped files of an index")
    i.add_argument("--index", required=True, help="index directory")
    add_json_arg(i, "the header, counts and checks")
    i.set_defaults(func=_run_info)

    m = isub.add_parser("merge", help="merge IVF shard indexes (same training) into one index")
    m.add_argument("--out", required=True, help="new index directory")
    m.add_argument("shards", nargs="+", help="shard index directories")
    m.set_defaults(func=_run_merge)

    s = sub.add_parser("search", help="search an index with query images",
                       description="Print the top-k gallery items (path, label, score) for each query image.")
    s.add_argument("--index", default=None, help="index directory (with --qdrant: the index it mirrors)")
    s.add_argument("--qdrant", default=None, metavar="LOCATION",
                   help="search the index's Qdrant copy at this folder or URL instead (see `index publish`)")
    s.add_argument("--collection", default=None, help="with --qdrant: the collection (default: the index's name)")
    s.add_argument("queries", nargs="+", help="query image files")
    s.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    add_json_arg(s, "the hits")
    add_runtime_args(s, workers=False)
    s.add_argument("--nprobe", type=int, default=None, help="override the IVF nprobe for this search")
    s.add_argument("--ef-search", type=int, default=None, help="override the HNSW efSearch for this search")
    s.add_argument("--rerank", type=int, default=None, help="override the exact re-rank factor for this search")
    _refine_args(s, SEARCH_REFINE)
    _backend_arg(s)
    _precision_arg(s)
    _encoder_args(s)
    s.set_defaults(func=_run_search)


def _params(args):
    from indexer.faiss_index import IndexParams

    return IndexParams(index_type=args.index_type or "flat", nlist=args.nlist, nprobe=args.nprobe,
                       pq_m=args.pq_m, hnsw_m=args.hnsw_m, ef_search=args.ef_search, rerank=args.rerank)


def _print_report(rep) -> None:
    print(f"{rep.index_dir}: {rep.count} items; added {rep.added}, already present {rep.already_present}, "
          f"replaced {rep.replaced}, skipped {len(rep.skipped)} of {rep.total} files ({rep.seconds:.1f} s)")
    prec = rep.precision or {}
    if prec.get("mode") == "int8":
        sp = prec.get("speed") or {}
        print(f"  precision int8: calibrated on {prec.get('calibration_count', '?')} of its photos; features agree "
              f"with fp32 at mean cosine {prec['agreement']['mean_cosine']:.4f}"
              + (f"; forward {sp['speedup']:.2f}x fp32's here" if sp.get("speedup") else ""))
    elif prec.get("reason"):
        print(f"  precision fp32: {prec['reason']}")
    if rep.adapt and "skipped" in rep.adapt:
        print(f"  not adapted: {rep.adapt['skipped']}")
    elif rep.adapt:
        print(f"  adapted: retrieval head {rep.adapt['stored_dim']} -> {rep.adapt['dim']} dims fitted on "
              f"{rep.adapt['fitted_on']:,} of {rep.adapt['of']:,} vectors in {rep.adapt['seconds']:.1f} s (no labels); "
              "searches run in its space")
    for path, reason in rep.skipped[:20]:
        print(f"  skipped {path}: {reason}")
    if len(rep.skipped) > 20:
        print(f"  ... and {len(rep.skipped) - 20} more (see report.json)")


def _ray_embedder(args, spec):
    """The Ray embedder of ``index build --ray``: the given encoder's spec, or the one the index records."""
    from pathlib import Path

    from indexer.encoders import EncoderSpec
    from indexer.ray_embed import ray_embedder
    from indexer.header import HEADER_FILE, read_header

    if spec is None:
        out = Path(args.out)
        if not (out / HEADER_FILE).is_file():
            raise SystemExit("ppssl index build --ray: give --checkpoint or --encoder for a new index")
        spec = EncoderSpec.from_dict(read_header(out).encoder.spec)
    return ray_embedder(spec, address=args.ray or None, batch_size=args.batch_size)


def _embed_options(args, **more):
    """The ``EmbedOptions`` of ``--batch-size``, ``--workers``, ``--device`` and ``--no-amp`` (plus ``more``)."""
    from indexer.options import EmbedOptions

    return EmbedOptions(batch_size=args.batch_size, num_workers=args.workers, device=args.device, amp=not args.no_amp,
                        **more)


@_with_backend
def _run_build(args) -> int:
    from indexer.build import build_index
    from indexer.options import Source

    params = _params(args)
    overrides = {k: v for k, v in params.to_dict().items() if k != "index_type" and v is not None}
    spec = _encoder_from(args)
    source = (Source(images=args.images, dataset=args.dataset, root=args.root, split=args.split, shard=args.shard)
              if args.images is not None or args.dataset is not None else None)
    embed = _embed_options(args, chunk_size=args.chunk_size,
                           embedder=_ray_embedder(args, spec) if args.ray is not None else None)
    rep = build_index(args.out, source, spec, embed=embed, index_type=args.index_type,
                      params=overrides or None, rebuild=args.rebuild, trained_from=args.trained_from,
                      id_offset=args.id_offset, adapt=args.adapt, precision=args.precision)
    _print_report(rep)
    return 0


@_with_backend
def _run_add(args) -> int:
    from indexer.build import add_to_index

    rep = add_to_index(args.index, args.paths, encoder=_encoder_from(args), labels=args.label,
                       embed=_embed_options(args), precision=args.precision)
    _print_report(rep)
    return 0


def _run_remove(args) -> int:
    from indexer.build import remove_from_index
    from indexer.errors import IndexError_

    if not args.ids and not args.paths:
        raise IndexError_("give --id and/or --path")
    n = remove_from_index(args.index, ids=args.ids, paths=args.paths)
    asked = len(args.ids) + len(args.paths)
    print(f"removed {n} item(s)" + (f"; {asked - n} id(s)/path(s) were not in the index" if n < asked else ""))
    return 0


@_with_backend
def _run_eval(args) -> int:
    from pathlib import Path

    from indexer.evaluate import evaluate_index

    enc = _encoder_from(args)
    if enc is not None:
        enc = enc.create()
    out = args.out or str(Path(args.index) / "eval")
    if args.compare:
        return _print_compare(args, out)
    served = None
    if args.qdrant:
        from indexer.vectordb import VectorDBIndex

        served = VectorDBIndex(args.qdrant, args.collection or Path(args.index).resolve().name, index_dir=args.index)
    try:
        rep = evaluate_index(args.index, queries=args.queries, leave_one_out=True, out_dir=out, encoder=enc,
                             max_k=args.max_k, device=args.device, batch_size=args.batch_size,
                             num_workers=args.workers, refine=_refine_from(args), index=served,
                             precision=args.precision)
    finally:
        if served is not None:
            served.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    print(f"{rep.mode}: {rep.n_queries} queries against {rep.n_gallery} gallery items"
          + (f" ({rep.n_without_relevant} queries without a same-label item left out)" if rep.n_without_relevant else ""))
    for k, v in rep.summary.items():
        print(f"  {k:>8}: {100 * v:6.2f} %")
    if rep.ann:
        print("  via the index's own search (approximate): " + ", ".join(
            f"{k} {100 * v:.2f} %" for k, v in rep.ann.items()))
    print("  worst classes: " + "; ".join(f"{d['label']} (rank-1 {100 * d['rank-1']:.0f} %, n={d['count']})"
                                          for d in rep.per_class[:5]))
    print(f"  wrote {out}/eval.json and {out}/rank_curve.png")
    return 0


def _print_compare(args, out: str) -> int:
    from pathlib import Path

    from indexer.evaluate import compare_indexes

    if args.queries:
        raise SystemExit("ppssl index eval: --compare scores leave-one-out; it does not take --queries")
    res = compare_indexes(args.index, args.compare, out_dir=out, max_k=args.max_k)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    a, b = res.get("names") or (Path(args.index).name, Path(args.compare).name)
    width = max(len(a), len(b), 8)
    print(f"leave-one-out over the {res['common']} labelled images both indexes hold"
          + (f" ({res['only_index']} only in {a}, {res['only_other']} only in {b}: not scored)"
             if res["only_index"] or res["only_other"] else ""))
    print(f"  {'':>8}  {a:>{width}}  {b:>{width}}  difference")
    for key in res["index"]["summary"]:
        va, vb = 100 * res["index"]["summary"][key], 100 * res["other"]["summary"][key]
        print(f"  {key:>8}  {va:{width}.2f}  {vb:{width}.2f}  {va - vb:+.2f} points")
    print(f"  wrote {out}/compare.json and {out}/compare_rank_curve.png")
    return 0


def _search_qdrant(args) -> int:
    from pathlib import Path

    from indexer.vectordb import VectorDBIndex

    name = args.collection or (Path(args.index).resolve().name if args.index else None)
    if not name:
        raise SystemExit("ppssl search --qdrant: give --collection NAME (or --index DIR)")
    enc = _encoder_from(args)
    with VectorDBIndex(args.qdrant, name, index_dir=args.index) as idx:
        results = idx.search(list(args.queries), k=args.k, encoder=enc.create() if enc else None,
                             device=args.device)
    _print_hits(args, results)
    return 0


def _run_dba(args) -> int:
    import time

    from indexer.index import Index
    from indexer.refine import dba_vectors

    t = time.time()
    idx = Index.open(args.index)
    from indexer.refine import RERANKERS

    k = args.k or RERANKERS["dba"].default_k
    v = dba_vectors(idx, k, lazy=False)
    print(f"DBA vectors (k={k}) of {len(v):,} items cached in {idx.dir} ({time.time() - t:.1f} s)")
    return 0


def _run_publish(args) -> int:
    from indexer.vectordb import publish

    res = publish(args.index, args.qdrant, args.collection)
    print(f"published {res['count']} items to collection {res['collection']!r} at {res['location']} "
          f"(upserted {res['upserted']}, deleted {res['deleted']})")
    return 0


def _run_info(args) -> int:
    from indexer.index import Index
    from indexer.manifest import MANIFEST_FILE, Manifest

    idx = Index.open(args.index, use_gpu=False)
    m = Manifest(idx.dir / MANIFEST_FILE)
    skipped = m.skipped()
    m.close()
    info = {"index_dir": str(idx.dir), "count": idx.count, "index_type": idx.index_type, "dim": idx.dim,
            "metric": idx.header.metric, "params": idx.header.params, "fingerprint": idx.fingerprint,
            "encoder": idx.encoder_ref, "root": idx.root, "state": idx.header.state,
            "adapted": ({k: idx.adapted[k] for k in ("stored_dim", "dim", "fitted_on", "of", "fitted_at")}
                        if idx.adapted else idx.header.adapt_skipped or False),
            "precision": {k: v for k, v in (idx.header.precision or {"mode": "fp32"}).items()
                          if k not in ("calibration",)},
            "faiss_consistent": not idx.repaired, "labels": len({lab for lab in idx.labels() if lab is not None}),
            "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k != "skipped":
            print(f"{k:>16}: {v}")
    print(f"{'skipped':>16}: {len(skipped)}")
    for p, r in skipped[:20]:
        print(f"{'':>18}{p}: {r}")
    return 0


def _run_merge(args) -> int:
    from indexer.shards import merge_ivf_shards

    idx = merge_ivf_shards(args.shards, args.out)
    print(f"merged {len(args.shards)} shards into {idx.dir}: {idx.count} items ({idx.index_type})")
    return 0


@_with_backend
def _run_search(args) -> int:
    from indexer.index import Index

    if args.qdrant:
        return _search_qdrant(args)
    if not args.index:
        raise SystemExit("ppssl search: --index DIR is required (or --qdrant LOCATION)")
    idx = Index.open(args.index)
    idx.set_search_params(nprobe=args.nprobe or None, ef_search=args.ef_search or None, rerank=args.rerank)
    enc = _encoder_from(args)
    results = idx.search(args.queries, k=args.k, encoder=enc.create() if enc else None, device=args.device,
                         refine=_refine_from(args), precision=args.precision)
    _print_hits(args, results)
    return 0


def _print_hits(args, results) -> None:
    if args.json:
        print(json.dumps([{"query": q, "results": [{"rank": r + 1, **h.to_dict()} for r, h in enumerate(hits)]}
                          for q, hits in zip(args.queries, results)], indent=2))
        return
    for q, hits in zip(args.queries, results):
        print(f"query: {q}")
        for r, h in enumerate(hits, 1):
            print(f"  {r:>3}. {h.score:7.4f}  {h.label or '-':<30}  {h.path}  (id {h.id})")
    sys.stdout.flush()
