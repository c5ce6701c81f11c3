"""``index eval``: retrieval metrics of an index from its own labels, with the engine's metric code.

The exact metrics (rank-k, mAP, MAP@R, per class) rank the stored vectors with
:func:`engine.metrics.retrieval_metrics`, so they equal ``ppssl eval`` on the same features. For
approximate index types the report adds what the FAISS index itself returns: rank-k from its top-k and
its recall@10 against exact search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.atomic import atomic_path, atomic_write_json
from indexer.errors import IndexError_
from indexer.index import Index


@dataclass
class EvalReport:
    """Results of :func:`evaluate_index`."""

    summary: dict  # rank-1, rank-5, rank-10, mAP, MAP@R as fractions
    per_class: list  # [{label, count, rank-1, mAP, MAP@R}], worst first
    rank_curve: list  # rank-k for k = 1..len
    confused_pairs: list  # [(query label, top-1 label, count, example query path, example result path)]
    mode: str = "leave-one-out"  # or "queries"
    n_queries: int = 0  # queries scored (with at least one same-label gallery item)
    n_gallery: int = 0  # labelled gallery items ranked
    n_without_relevant: int = 0  # queries whose label has no other gallery item (left out)
    ann: dict | None = None  # approximate index types: {"rank-1", "rank-5", "rank-10", "recall@10"} via FAISS
    skipped: list = field(default_factory=list)  # unreadable query files (path, reason)
    index_dir: str = ""

    def to_dict(self) -> dict:
        return {
            "index_dir": self.index_dir, "mode": self.mode, "summary": self.summary,
            "n_queries": self.n_queries, "n_gallery": self.n_gallery, "n_without_relevant": self.n_without_relevant,
            "ann": self.ann, "rank_curve": self.rank_curve, "per_class": self.per_class,
            "confused_pairs": [list(p) for p in self.confused_pairs],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _query_set(idx: Index, folder, encoder, device, batch_size, num_workers):
    """Embed a query folder (labels = parent folder names); returns feats, labels, keys, shas, skipped."""
    from indexer.sources import embed_items, scan_folder

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise IndexError_(f"{folder}: not a directory")
    items = scan_folder(folder, folder)
    if encoder is None:
        encoder = idx.load_encoder()
    else:
        idx.check_encoder(encoder)
    feats, labels, paths, shas, skipped = [], [], [], [], []
    for b in embed_items(encoder, items, batch_size=batch_size, num_workers=num_workers, device=device,
                         desc="embedding queries", precision=idx.int8_spec() or "fp32"):
        feats.append(b.vectors)
        for i, sha, *_ in b.done:
            labels.append(items[i].label)
            paths.append(items[i].path)
            shas.append(sha)
        skipped.extend((items[i].path, reason) for i, reason in b.failed)
    feats = np.concatenate(feats) if feats else np.zeros((0, idx.dim), np.float32)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        raise IndexError_(f"{folder}: no labelled queries (put query images in one sub-folder per class)")
    return (feats[keep], [labels[i] for i in keep], [paths[i] for i in keep], [shas[i] for i in keep], skipped)


def _ann_metrics(idx: Index, qf: np.ndarray, ql: np.ndarray, gids: np.ndarray, glabels: np.ndarray,
                 self_ids: np.ndarray, scored: np.ndarray, ks) -> dict:
    """Rank-k of the FAISS index's own top-k, and its recall@10 against exact search of the stored vectors."""
    import faiss

    from engine.metrics import recall_at_k

    kmax = max(max(ks), 10)
    label_of = dict(zip(gids.tolist(), glabels.tolist()))
    _, found = idx.search_vectors(qf, kmax + 1)
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(idx.dim))
    exact.add_with_ids(np.ascontiguousarray(idx.vectors(gids)), gids)
    _, truth = exact.search(np.ascontiguousarray(qf), kmax + 1)

    def drop_self(rows):
        out = np.full((len(rows), kmax), -1, np.int64)
        for r, (row, s) in enumerate(zip(rows, self_ids)):
            row = [i for i in row if i != s and i in label_of][:kmax]
            out[r, :len(row)] = row
        return out

    found, truth = drop_self(found), drop_self(truth)
    first = np.full(len(qf), kmax, np.int64)
    for r in range(len(qf)):
        for j, i in enumerate(found[r]):
            if i >= 0 and label_of[int(i)] == ql[r]:
                first[r] = j
                break
    out = {f"rank-{k}": float(np.mean(first[scored] < k)) for k in ks}
    out["recall@10"] = recall_at_k(found, truth, 10)
    return out


def evaluate_index(index_dir, queries=None, leave_one_out=True, out_dir=None, *, encoder=None, max_k=50,
                   ks=(1, 5, 10), device=None, batch_size=64, num_workers=2,
                   only: set[tuple[str, str]] | None = None, refine=None, index=None,
                   precision: str | None = None) -> EvalReport:
    """Evaluate an index from its labels: leave-one-out over the gallery, or a labelled query folder.

    Args:
        index_dir: the index directory.
        queries: a folder of query images in one sub-folder per class (labels must match the gallery's);
            a query file identical (sha256) to a gallery item has that item removed from its ranking.
        leave_one_out: used when ``queries`` is None: every labelled gallery item queries the rest.
        out_dir: where to write ``eval.json`` and ``rank_curve.png``.
        encoder: query encoder (checked against the index's fingerprint); default the recorded one.
        only: score only the gallery items whose ``(path, sha256)`` is in this set (a comparison of two
            indexes over the same images: :func:`compare_indexes`).
        refine: an :class:`indexer.refine.Refine`: score the re-ranked results (alpha-QE, DBA over the
            scored gallery, k-reciprocal) instead of the plain ones.
        precision: the queries' precision: the index's own (None/``auto``) or refused (indexer.precision).
        index: an open index-like object to evaluate instead of opening ``index_dir`` (e.g. an
            :class:`indexer.vectordb.VectorDBIndex`: its own search gives the ``ann`` figures).
    """
    from engine.metrics import retrieval_metrics

    idx = index if index is not None else Index.open(index_dir, use_gpu=False)
    recs = idx.records()
    labelled = [i for i, r in enumerate(recs) if r["label"] is not None
                and (only is None or (r["path"], r["sha256"]) in only)]
    if not labelled:
        raise IndexError_(f"{index_dir}: no labelled items; evaluation needs labels (folder names or a dataset)")
    gids = np.asarray([recs[i]["id"] for i in labelled], np.int64)
    glabels = np.asarray([recs[i]["label"] for i in labelled], dtype=object)
    gpaths = [recs[i]["path"] for i in labelled]
    gf = idx.vectors(gids)
    skipped = []
    if queries is not None:
        from indexer.precision import check_query

        check_query(idx.header, precision)
        qf, ql, qpaths, qshas, skipped = _query_set(idx, queries, encoder, device, batch_size, num_workers)
        ql = np.asarray(ql, dtype=object)
        pos_of_sha = {recs[i]["sha256"]: j for j, i in enumerate(labelled)}
        self_pos = np.asarray([pos_of_sha.get(s, -1) for s in qshas], np.int64)
        rep = retrieval_metrics(qf, ql, gf, glabels, ks=ks, exclude_self_ids=self_pos)
        mode = "queries"
    elif leave_one_out:
        if len(gf) < 2:
            raise IndexError_("leave-one-out needs at least two labelled items")
        qf, ql, qpaths = gf, glabels, gpaths
        self_pos = np.arange(len(gf), dtype=np.int64)
        rep = None if refine is not None and refine.active else retrieval_metrics(gf, glabels, ks=ks)
        mode = "leave-one-out"
    else:
        raise IndexError_("give queries= (a folder) or leave_one_out=True")
    if refine is not None and refine.active:
        rep = _refined_metrics(qf, ql, gf, glabels, self_pos, refine, ks)
        mode += f", re-ranked ({refine.method})"

    per_class = [{"label": lab, **m} for lab, m in rep.per_class().items()]
    per_class.sort(key=lambda d: (d["rank-1"], d["mAP"], str(d["label"])))
    examples = {}
    wrong = np.nonzero(rep.scored & (rep.first_hit_rank != 0))[0]
    for q in wrong:
        key = (ql[q], glabels[rep.top1[q]])
        examples.setdefault(key, (qpaths[q], gpaths[rep.top1[q]]))
    confused = [(a, b, n, *examples.get((a, b), (None, None))) for a, b, n in rep.confused_pairs(top=10)]
    n_curve = max(1, min(max_k, len(gf) - (1 if mode == "leave-one-out" else 0)))
    ann = None
    if idx.index_type != "flat":
        gid_self = np.where(self_pos >= 0, gids[np.clip(self_pos, 0, None)], -1)
        ann = _ann_metrics(idx, qf, ql, gids, glabels, gid_self, rep.scored, ks)
    report = EvalReport(
        summary=dict(rep.summary), per_class=per_class, rank_curve=[float(x) for x in rep.rank_curve(n_curve)],
        confused_pairs=confused, mode=mode, n_queries=int(rep.scored.sum()), n_gallery=len(gf),
        n_without_relevant=rep.n_without_relevant, ann=ann, skipped=skipped, index_dir=str(idx.dir))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "eval.json", report.to_dict())
        plot_rank_curve(report, out / "rank_curve.png", title=f"{idx.dir.name}: {mode}")
    return report


def _refined_metrics(qf, ql, gf, glabels, self_pos: np.ndarray, refine, ks):
    """engine.metrics over the re-ranked results: the re-ranker's leave-one-out form (the query's own item held
    out of its ranking and of whatever the method derives from the gallery)."""
    from engine.metrics import retrieval_metrics

    plan = refine.reranker.leave_one_out(qf, gf, self_pos, refine)
    return retrieval_metrics(plan.queries, ql, plan.gallery, glabels, ks=ks, exclude_self_ids=self_pos,
                             rescore=plan.rescore)


def _labelled_keys(index_dir) -> dict[tuple[str, str], str]:
    """``(path, sha256) -> label`` of an index's labelled items."""
    return {(r["path"], r["sha256"]): r["label"] for r in Index.open(index_dir, use_gpu=False).records()
            if r["label"] is not None}


def compare_indexes(index_dir, other_dir, out_dir=None, *, max_k: int = 50, ks=(1, 5, 10)) -> dict:
    """Leave-one-out retrieval of two indexes over the same images (e.g. ImageNet-only vs a trained encoder).

    Only images present in both, with the same content (manifest path and sha256) and label, are scored, so
    the two figures differ only by the encoders. Returns ``{"index": EvalReport dict, "other": EvalReport
    dict, "common": n, "only_index": n, "only_other": n}`` and writes ``compare.json`` and one rank-k PNG
    with both curves into ``out_dir``.
    """
    if is_plain(other_dir):
        return compare_plain(index_dir, out_dir, max_k=max_k, ks=ks)
    a, b = _labelled_keys(index_dir), _labelled_keys(other_dir)
    common = {k for k in a.keys() & b.keys() if a[k] == b[k]}
    if len(common) < 2:
        raise IndexError_(f"{index_dir} and {other_dir} share {len(common)} labelled images (same path, content "
                          "and label); a comparison needs at least two")
    ra = evaluate_index(index_dir, only=common, max_k=max_k, ks=ks)
    rb = evaluate_index(other_dir, only=common, max_k=max_k, ks=ks)
    out = {"index": ra.to_dict(), "other": rb.to_dict(), "common": len(common),
           "only_index": len(a) - len(common), "only_other": len(b) - len(common)}
    _write_compare(out, out_dir, {Path(index_dir).name: ra, Path(other_dir).name: rb})
    return out


#: ``--compare plain``: an adapted index against its own vectors before the head
PLAIN = "plain"


def is_plain(other) -> bool:
    """True when ``other`` names the plain view (``plain``) rather than an index directory of that name."""
    return str(other) == PLAIN and not (Path(PLAIN) / "header.json").is_file()


def compare_plain(index_dir, out_dir=None, *, max_k: int = 50, ks=(1, 5, 10)) -> dict:
    """:func:`compare_indexes` of an adapted index (``index``) with its plain view (``other``: the same stored
    vectors without the head, exact search), over every labelled photo it holds."""
    idx = Index.open(index_dir, use_gpu=False)
    if not idx.adapted:
        raise IndexError_(f"{index_dir} is not adapted: there is no plain view to compare with "
                          "(build it with --adapt, or --rebuild --adapt)")
    ra = evaluate_index(index_dir, index=idx, max_k=max_k, ks=ks)
    rb = evaluate_index(index_dir, index=Index.open(index_dir, use_gpu=False, plain=True), max_k=max_k, ks=ks)
    out = {"index": ra.to_dict(), "other": rb.to_dict(), "common": ra.n_gallery, "only_index": 0, "only_other": 0,
           "names": ["adapted", "plain"]}
    _write_compare(out, out_dir, {"adapted": ra, "plain": rb})
    return out


def _write_compare(out: dict, out_dir, reports: dict) -> None:
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / "compare.json", out)
        plot_rank_curves(reports, path / "compare_rank_curve.png")


def plot_rank_curves(reports: dict[str, EvalReport], path) -> None:
    """Several rank-k curves on one PNG (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, rep in reports.items():
        ks = np.arange(1, len(rep.rank_curve) + 1)
        ax.plot(ks, 100 * np.asarray(rep.rank_curve), marker="o", markersize=3,
                label=f"{name} (rank-1 {100 * rep.summary['rank-1']:.1f}%, mAP {100 * rep.summary['mAP']:.1f}%)")
    ax.set_xlabel("k")
    ax.set_ylabel("rank-k (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_rank_curve(report: EvalReport, path, title: str = "") -> None:
    """rank-k for k = 1..K as a PNG (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, len(report.rank_curve) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ks, 100 * np.asarray(report.rank_curve), marker="o", markersize=3, label="exact")
    for k in (1, 5, 10):
        if k <= len(ks):
            ax.annotate(f"{100 * report.rank_curve[k - 1]:.1f}", (k, 100 * report.rank_curve[k - 1]),
                        textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("k")
    ax.set_ylabel("rank-k (%)")
    ax.set_title(title or "rank-k curve")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.text(0.98, 0.04, f"mAP {100 * report.summary['mAP']:.1f}%  MAP@R {100 * report.summary['MAP@R']:.1f}%",
            transform=ax.transAxes, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
