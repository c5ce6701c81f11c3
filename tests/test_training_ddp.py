"""Two gloo CPU processes train PP-SSL with DistributedDataParallel: shared queue, synchronised weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tiny_clip import TINY_CLIP  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, teacher: str, out: str, result_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    import torch.distributed as dist

    from engine.checkpoint import fingerprint_state
    from training import ddp
    from training.config import TrainConfig
    from training.trainer import Trainer

    cfg = TrainConfig(dataset="cub200", root=root, out=out, backbone="tinycnn", weights=None, input_size=32,
                      batch_size=4, queue_size=64, proj_hidden=32, proj_dim=16, attn_k=8, epochs=1, workers=0,
                      progress=False, tensorboard=False, eval_batch_size=16, teacher=teacher, lr=0.05,
                      method="ppssl", device="cpu", log_every=1).validate()
    tr = Trainer(cfg)
    assert ddp.world_size() == world and ddp.rank() == rank
    # shuffle-BN round trip: unshuffle(shuffle(x)) gives back this rank's own batch
    x = torch.arange(8, dtype=torch.float32).view(4, 2) + 100 * rank
    xs, idx = ddp.batch_shuffle(x, torch.Generator().manual_seed(1))
    back = ddp.batch_unshuffle(xs, idx)
    gathered = ddp.all_gather_cat(torch.tensor([float(rank)]))
    report = tr.fit()
    # parameters (BN running statistics are per rank by design: each rank normalises its own batch)
    student = {k: v.detach() for k, v in tr.student.module.named_parameters()}
    res = {
        "roundtrip": bool(torch.equal(back, x)),
        "gather": gathered.tolist(),
        "student": fingerprint_state(student),
        "momentum": fingerprint_state({k: v.detach() for k, v in tr.momentum.named_parameters()}),
        "queue": fingerprint_state(tr.queue.state_dict()),
        "ptr": int(tr.queue.ptr),
        "steps": tr.step,
        "last_epoch": (report.get("last") or {}).get("epoch"),
    }
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(res))
    ddp.cleanup()
    assert not dist.is_initialized()


@pytest.mark.timeout(240)
def test_two_process_gloo_training(tmp_path):
    import open_clip

    from engine.synth import generate_world
    from training.teacher import save_teacher_dir
    from training.trainer import Trainer  # noqa: F401 - imported once, before the fork

    world_dir = tmp_path / "w"
    generate_world(world_dir, classes=4, per_class=8, size=32, coarse_per_family=0, progress=False)
    torch.manual_seed(0)
    save_teacher_dir(open_clip.CLIP(**TINY_CLIP), TINY_CLIP, tmp_path / "t", image_size=32)
    results = tmp_path / "res"
    results.mkdir()
    # fork: the children inherit the imported modules instead of re-importing torch (seconds each)
    mp.start_processes(_worker, args=(2, _free_port(), str(world_dir), str(tmp_path / "t"), str(tmp_path / "run"),
                                      str(results)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["roundtrip"] and r1["roundtrip"]
    assert r0["gather"] == r1["gather"] == [0.0, 1.0]
    # 16 train images / (4 per rank x 2 ranks) = 2 steps; every step enqueues the 8 gathered keys
    assert r0["steps"] == r1["steps"] == 2
    assert r0["ptr"] == r1["ptr"] == 16
    assert r0["queue"] == r1["queue"]  # the queue is shared: identical on both ranks
    assert r0["student"] == r1["student"]  # DDP averaged the gradients: parameters stay identical
    assert r0["momentum"] == r1["momentum"]
    assert r0["last_epoch"] == 1
    assert (tmp_path / "run" / "last" / "config.json").is_file()  # rank 0 wrote the checkpoint
