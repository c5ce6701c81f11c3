"""Training cost: the step time of PP-SSL vs plain MoCo v2, and of each module alone.

``training.trainer.Trainer`` objects with the same backbone, batch, input size and device differ only
in ``method`` (moco, moco+ais, moco+iadm, ppssl) and, for the AIS rows, ``teacher_view``; their
``train_step`` is timed on the same pre-made views (no data loading: the data path is the same for
every method), steps interleaved (order rotated) so that every ratio compares steps taken under the
same load. Rows:

* ``moco+ais`` / ``ppssl``: the default ``teacher_view: image`` - the teacher's logits per training image
  come from the once-per-run teacher pass (here: the pass run on the benchmark's stand-in images);
* ``moco+ais[query]`` / ``ppssl[query]``: ``teacher_view: query`` - the teacher runs on every step's view.

Modules alone:

* AIS teacher forward: ``teacher_view`` + ``Teacher.encode_image`` + logits on the cached text embeddings
  (per step with ``teacher_view: query``; once per image per run with ``image``);
* IADM extra backward: the ``gradient_cam`` call (d L_moco / d input, graph retained) after a forward.

The teacher is a randomly initialised open_clip model (no weights offline; speed does not depend on
them). The paper pairs resnet50 at 224 px with a ViT-B-32 teacher at 224 px (49 patches). On CPU the
input is halved to 112 px; the teacher is then ViT-B-16 at 112 px, which has the same 49 patches and
the same transformer cost as ViT-B-32 at 224, so the student/teacher cost ratio of the paper is kept.

    python -m benchmarks.train_cost                              # resnet50 at 112 px, ViT-B-16 at 112, batch 16
    python -m benchmarks.train_cost --backbone resnet50 --input-size 224 --teacher ViT-B-32 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (interleave, machine_info, md_table, pairwise_ratios, stats, sync, to_jsonable,
                               verdict, write_results)

TARGET = 1.6
METHODS = ("moco", "moco+ais", "moco+iadm", "ppssl", "moco+ais[query]", "ppssl[query]")


class _Blank:
    """A stand-in training set (the timed steps never read it): ``n`` items."""

    def __init__(self, n: int):
        self.n = n
        self.classes = ["x"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        raise RuntimeError("train_cost times train_step on pre-made views; the dataset is never read")


def make_teacher(name: str, image_size: int, device: str):
    """A random open_clip teacher of architecture ``name`` at ``image_size`` px (frozen)."""
    import open_clip

    from training.teacher import OPENAI_MEAN, OPENAI_STD, Teacher

    model = open_clip.create_model(name, force_image_size=image_size)
    return Teacher(model, open_clip.get_tokenizer(name), f"{name}@{image_size} (random)", image_size,
                   OPENAI_MEAN, OPENAI_STD).to(device)


def split_row(row: str) -> tuple[str, str]:
    """``"ppssl[query]"`` -> ``("ppssl", "query")``; a row without brackets uses the default view ``image``."""
    method, _, view = row.partition("[")
    return method, view.rstrip("]") or "image"


def make_trainers(args, out: Path, teacher):
    import torch

    from training.ais import corpus_logits
    from training.config import TrainConfig
    from training.trainer import Trainer

    trainers = {}
    for row in args.methods:
        method, view = split_row(row)
        cfg = TrainConfig(dataset="cub200", root="", out=str(out / f"{method.replace('+', '_')}_{view}"),
                          backbone=args.backbone, weights=None, input_size=args.input_size,
                          batch_size=args.batch, queue_size=args.queue, method=method, device=args.device,
                          workers=0, progress=False, tensorboard=False, epochs=1, cam_layer=args.cam_layer,
                          threads=args.threads or 0, amp=args.device.startswith("cuda"), teacher_view=view)
        torch.manual_seed(0)
        tr = Trainer(cfg, teacher=teacher, train_dataset=_Blank(args.batch * 2))
        if cfg.use_ais and view == "image":  # the once-per-run teacher pass, on stand-in teacher inputs
            g = torch.Generator().manual_seed(1)
            imgs = torch.randn(args.batch * 2, 3, teacher.image_size, teacher.image_size, generator=g)
            ais = tr.terms["ais"]
            ais.teacher_logits = corpus_logits(teacher.encode_image(imgs.to(args.device)), ais.text_emb)
        trainers[row] = tr
    return trainers


def module_times(tr, x_q, x_k, reps: int, device: str) -> dict:
    """Seconds of the AIS teacher forward and of the IADM extra backward alone (ppssl trainer)."""
    import torch

    from engine.embed import autocast_for
    from training.ais import corpus_logits, teacher_view
    from training.iadm import gradient_cam
    from training.losses import infonce_loss

    dev = torch.device(device)
    ais, cfg = tr.terms["ais"], tr.cfg
    t = ais.teacher

    def teacher_forward():
        with torch.no_grad(), autocast_for(dev, tr.amp):
            tv = teacher_view(x_q.float(), tr.encoder.config.mean, tr.encoder.config.std, t.mean, t.std,
                              t.image_size)
            corpus_logits(t.encode_image(tv), ais.text_emb)

    state = {}

    def forward_for_cam():
        xq = x_q.detach().clone().requires_grad_(True)
        with autocast_for(dev, tr.amp):
            out = tr.student(xq)
            with torch.no_grad():
                k = tr.momentum(x_k)
        state["loss"] = infonce_loss(out["q"].float(), k.float(), tr.queue.keys, cfg.temperature)
        state["source"] = xq if cfg.cam_layer == "input" else out["stages"][cfg.cam_layer]

    def cam_backward():
        gradient_cam(state["source"], state["loss"])

    res = {"ais_teacher_forward": [], "iadm_extra_backward": []}
    teacher_forward()
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        teacher_forward()
        sync(device)
        res["ais_teacher_forward"].append(time.perf_counter() - t0)
        forward_for_cam()
        sync(device)
        t0 = time.perf_counter()
        cam_backward()
        sync(device)
        res["iadm_extra_backward"].append(time.perf_counter() - t0)
        state.clear()
    return res


def markdown(res: dict) -> str:
    s = res["steps"]
    base = s["moco"]["seconds"]["median"]
    rows = [[m, v["seconds"]["median"] * 1e3, v["ratio_to_moco"]["median"],
             f"{v['ratio_to_moco']['min']:.2f}-{v['ratio_to_moco']['max']:.2f}",
             verdict(v["ratio_to_moco"]["median"], TARGET, False) if m == "ppssl" else ""]
            for m, v in s.items()]
    mods = [[k, v["median"] * 1e3, v["median"] / base] for k, v in res["modules"].items()]
    c = res["config"]
    amort = ""
    if "ais_teacher_forward" in res["modules"]:
        f = res["modules"]["ais_teacher_forward"]["median"] / base
        amort = (f"\nWith `teacher_view: image` (the default) the teacher forward runs once per training image per "
                 f"run, not per step: {f:.2f} MoCo steps per batch of images, once, i.e. +{f / 100:.4f} per step "
                 f"over a 100-epoch run (+{f / 10:.3f} over 10 epochs). The `[query]` rows pay it on every step.")
    return "\n".join([
        f"Config: student {c['backbone']} at {c['input_size']} px, batch {c['batch']}, queue {c['queue']}, "
        f"teacher {c['teacher']}, CAM on {c['cam_layer']}, device {c['device']}, AMP {c['amp']}; "
        f"{c['reps']} interleaved steps per method after {c['warmup']} warm-up steps.\n",
        "Step time (median) and ratio to plain MoCo v2 (median of per-repetition ratios). "
        f"Target: ppssl <= {TARGET}x moco.\n",
        md_table(["method", "step ms", "x moco", "range", "target"], rows),
        "\nModules alone (median), and as a fraction of a MoCo step:\n",
        md_table(["module", "ms", "/ moco step"], mods),
        f"\nText embeddings of the corpus: computed once per run by the trainer "
        f"({res['text_embed_ms']:.1f} ms here), not per step.",
        amort,
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet50", help="student backbone")
    ap.add_argument("--input-size", type=int, default=112, help="student input size (teacher: the same)")
    ap.add_argument("--teacher", default="ViT-B-16",
                    help="open_clip architecture (random init); ViT-B-16 at 112 px costs as ViT-B-32 at 224")
    ap.add_argument("--teacher-size", type=int, default=None, help="teacher input size (default: --input-size)")
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--queue", type=int, default=4096, help="MoCo queue size")
    ap.add_argument("--cam-layer", default="input", help="IADM CAM source (input or layer1..layer4)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to time")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default=None, help="result file name (default train_cost[_gpu])")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    needs_teacher = any(split_row(m)[0] in ("moco+ais", "ppssl") for m in args.methods)
    tsize = args.teacher_size or args.input_size
    teacher = make_teacher(args.teacher, tsize, args.device) if needs_teacher else None
    with tempfile.TemporaryDirectory(prefix="ppssl_train_cost_") as tmp:
        t0 = time.perf_counter()
        trainers = make_trainers(args, Path(tmp), teacher)
        text_ms = (time.perf_counter() - t0) * 1e3 / len(trainers)
        if teacher is not None:
            t0 = time.perf_counter()
            teacher.encode_text(next(t.terms["ais"] for t in trainers.values() if "ais" in t.terms).corpus)
            text_ms = (time.perf_counter() - t0) * 1e3
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, 3, args.input_size, args.input_size)
        x_q, x_k = torch.randn(shape, generator=g).to(args.device), torch.randn(shape, generator=g).to(args.device)
        idx = torch.arange(args.batch)  # the batch's dataset indices: rows of the cached teacher logits
        for tr in trainers.values():
            for _ in range(args.warmup):
                tr.train_step(x_q, x_k, idx)
        steps = interleave({m: (lambda tr=tr: tr.train_step(x_q, x_k, idx)) for m, tr in trainers.items()},
                           args.reps, warmup=False, device=args.device)
        modules = {}
        if "ppssl" in trainers:
            modules = module_times(trainers["ppssl"], x_q, x_k, args.reps, args.device)
    res = {
        "config": {"backbone": args.backbone, "input_size": args.input_size, "batch": args.batch,
                   "queue": args.queue, "teacher": f"{args.teacher} at {tsize} px (random)" if teacher else None,
                   "cam_layer": args.cam_layer, "device": args.device, "amp": args.device.startswith("cuda"),
                   "reps": args.reps, "warmup": args.warmup},
        "steps": {m: {"seconds": stats(v), "ratio_to_moco": stats(pairwise_ratios(v, steps["moco"]))
                      if "moco" in steps else None, "raw_s": v} for m, v in steps.items()},
        "modules": {k: stats(v) for k, v in modules.items()},
        "text_embed_ms": text_ms,
    }
    for m, v in res["steps"].items():
        print(f"{m}: {v['seconds']['median'] * 1e3:.0f} ms/step, {v['ratio_to_moco']['median']:.2f}x moco")
    res = to_jsonable(res)
    name = args.name or ("train_cost_gpu" if args.device.startswith("cuda") else "train_cost")
    paths = write_results(name, res, markdown(res), title="Training cost: PP-SSL vs MoCo v2 step time",
                          info=info, out_dir=args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
