"""``index build --ray``: a local Ray cluster (2 CPUs) embeds, the driver commits exactly as a local build does;
an interrupted driver resumes without re-embedding, and a killed actor loses or duplicates nothing."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
from test_indexer import make_gallery  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("the actor-kill test finds Ray's worker processes through /proc (Linux)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder
    from indexer import EmbedOptions, Source, build_index

    base = tmp_path_factory.mktemp("ray")
    make_gallery(base / "gallery", classes=4, per_class=12)
    (base / "gallery" / "class0" / "broken.jpg").write_bytes(b"not an image at all")
    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), base / "ckpt")
    build_index(base / "local", Source(images=base / "gallery"), str(base / "ckpt"),
                embed=EmbedOptions(num_workers=0, progress=lambda *_: None))
    return base


def _same_index(a, b):
    from indexer import Index

    ia, ib = Index.open(a), Index.open(b)
    pa = {r["path"]: r for r in ia.records()}
    pb = {r["path"]: r for r in ib.records()}
    assert set(pa) == set(pb) and len(pa) == ia.count == ib.count  # every file once, none twice
    assert all(pa[k]["sha256"] == pb[k]["sha256"] and pa[k]["label"] == pb[k]["label"] for k in pa)
    va = ia.vectors([pa[k]["id"] for k in sorted(pa)])
    vb = ib.vectors([pb[k]["id"] for k in sorted(pb)])
    np.testing.assert_allclose(va, vb, rtol=0, atol=1e-5)


def test_ray_build_equals_a_local_build(cluster, world, tmp_path):
    from indexer import EmbedOptions, Source, build_index
    from indexer.encoders import EncoderSpec
    from indexer.ray_embed import ray_embedder

    spec = EncoderSpec(checkpoint=str(world / "ckpt"))
    rep = build_index(tmp_path / "ray", Source(images=world / "gallery"), spec,
                      embed=EmbedOptions(batch_size=4, progress=lambda *_: None,
                                         embedder=ray_embedder(spec, batch_size=4, actors=2)))
    assert rep.added == 48 and [p for p, _ in rep.skipped] == ["class0/broken.jpg"]
    _same_index(world / "local", tmp_path / "ray")


def test_interrupted_driver_resumes_and_a_killed_actor_loses_nothing(cluster, world, tmp_path):
    from indexer import EmbedOptions, Source, build_index
    from indexer.encoders import EncoderSpec
    from indexer.ray_embed import ray_embedder

    spec = EncoderSpec(checkpoint=str(world / "ckpt"))
    inner = ray_embedder(spec, batch_size=2, actors=2)
    seen = []

    def dies_after_some(items):  # the driver process "dies" once 3 batches have been received
        for n, batch in enumerate(inner(items)):
            seen.append(len(items))
            if n == 3:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "ray", Source(images=world / "gallery"), spec,
                    embed=EmbedOptions(batch_size=2, progress=lambda *_: None, embedder=dies_after_some, chunk_size=4))
    first_run = seen[0]

    killed = []

    def actor_pids() -> list[int]:
        """Ray names its worker processes after what they run: ``ray::MapWorker(MapBatches(_EmbedActor))``."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and b"MapWorker" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def kills_an_actor(items):  # rerun: after the first batch, SIGKILL one embedding actor's process
        for n, batch in enumerate(inner(items)):
            if n == 0:
                pids = actor_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            seen.append(len(items))
            yield batch

    build_index(tmp_path / "ray",
                embed=EmbedOptions(batch_size=2, progress=lambda *_: None, embedder=kills_an_actor, chunk_size=4))
    assert killed, "no embedding actor was found to kill"
    assert seen[-1] < first_run  # the rerun embedded only what the first run had not committed
    _same_index(world / "local", tmp_path / "ray")
