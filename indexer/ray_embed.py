"""Embedding a build's files on a Ray cluster (``ppssl index build ... --ray [ADDRESS]``).

Ray Data reads, decodes and embeds the files in a pool of actors (one per GPU when the cluster has GPUs, else
CPU actors), each building the encoder from the index's recorded spec (a checkpoint path or a backbone name
that every node can resolve). The driver receives the results in file order and commits them through the
same code as a local build (``indexer.ingest``): same manifest, same fingerprint check, same skip reports,
chunk by chunk. A killed driver leaves the committed chunks, and a rerun embeds only the rest; an actor that
dies is restarted by Ray and its batch retried, and a file is committed once at most because the manifest is
keyed by path.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from indexer.encoders import EncoderSpec
from indexer.sources import Embedded, Item


class _EmbedActor:
    """One Ray actor: the encoder built once, then file batches -> vectors (or skip reasons)."""

    def __init__(self, spec: dict):
        from engine.runtime import tune_allocator

        tune_allocator()  # an actor's constructor is the entry point of its Ray worker process
        self.encoder = EncoderSpec.from_dict(spec).create().eval()

    def __call__(self, batch: dict) -> dict:
        from engine.embed import embed_batch
        from indexer.sources import ItemFiles, collate_items

        paths = [str(p) for p in batch["path"]]
        files = ItemFiles([Item(p, p, None) for p in paths], self.encoder.transform())
        xs, oks, failed = collate_items([files[i] for i in range(len(paths))])
        n, dim = len(paths), self.encoder.feature_dim
        vectors = np.zeros((n, dim), np.float32)
        sha = np.array([""] * n, dtype=object)
        size = np.zeros(n, np.int64)
        mtime = np.zeros(n, np.int64)
        reason = np.array([""] * n, dtype=object)
        if xs is not None:
            vecs = embed_batch(self.encoder, xs)
            for row, (i, h, sz, mt) in enumerate(oks):
                vectors[i], sha[i], size[i], mtime[i] = vecs[row], h, sz, mt
        for i, why in failed:
            reason[i] = why
        return {"pos": batch["pos"], "vector": vectors, "sha256": sha, "size": size, "mtime_ns": mtime,
                "reason": reason}


def ray_embedder(spec: EncoderSpec, address: str | None = None, *, batch_size: int = 64, actors: int | None = None,
                 max_restarts: int = 3):
    """A drop-in for :func:`indexer.sources.embed_items` that embeds on Ray: ``run(items) -> Iterator[Embedded]``.

    Args:
        spec: the index's encoder spec (resolvable on every node).
        address: a Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray.
        actors: embedding actors (default: one per GPU, else one per 2 CPUs of the cluster).
        max_restarts: how often a dead actor is restarted (its batch retried) before the build fails.
    """

    def run(items: list[Item]) -> Iterator[Embedded]:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results arrive in file order: chunks commit in order
        ctx.enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_actors = actors or (gpus if gpus else max(1, cpus // 2))
        ds = ray.data.from_items([{"pos": i, "path": it.path} for i, it in enumerate(items)])
        out = ds.map_batches(_EmbedActor, fn_constructor_kwargs={"spec": spec.to_dict()}, batch_size=batch_size,
                             concurrency=n_actors, batch_format="numpy", num_gpus=1 if gpus else 0,
                             max_restarts=max_restarts, max_task_retries=max_restarts)
        for b in out.iter_batches(batch_size=batch_size, batch_format="numpy"):
            ok = np.array([not r for r in b["reason"]], dtype=bool)
            done = [(int(p), str(h), int(sz), int(mt)) for p, h, sz, mt, good
                    in zip(b["pos"], b["sha256"], b["size"], b["mtime_ns"], ok) if good]
            failed = [(int(p), str(r)) for p, r, good in zip(b["pos"], b["reason"], ok) if not good]
            yield Embedded(np.ascontiguousarray(b["vector"][ok], np.float32), done, failed)

    return run
