"""Embedding throughput: ``index build`` end to end vs the fastest forward alone (the ceiling).

Subject: ``indexer.build_index`` on a folder of JPEGs (read, sha256, decode, transform, forward, vector
file, manifest, FAISS add and write), timed around the call, with the build's defaults (batch 64,
2 decoders, the default inference backend) on the chosen device. Ceiling: the fastest forward
available on the machine for the same encoder on the same images, decoded and transformed beforehand, in
batches of the same size: on CPU ONNX Runtime (engine/ort.py) and PyTorch in both memory formats
(contiguous, channels_last) are timed and the fastest is the ceiling; the ratio to PyTorch's best forward is
kept as a second column. On CUDA the ceiling is PyTorch with AMP (fp16) like the build.

Repetitions alternate ceiling and build: ceiling, build, ceiling, build, ..., ceiling; each build is
compared with the mean of the ceilings on either side of it (the same machine load). On CPU each repetition
also times the embedding loop alone with both ways of decoding (threads in turn with the forward, the
default there, vs DataLoader worker processes overlapping it), in alternating order.

int8 (CPU, EfficientNet-Lite0 with its ImageNet weights, whose int8 features were validated: results/int8.md):
each repetition also builds with ``--precision int8`` twice, cold (the int8 model made first: calibration photos
decoded, quantised) and warm (the model cached, as for a rebuild or a second index of the same photos), and the
int8 forward joins the ceilings. Beside them the machine's physical limits: measured fp32 GEMM (torch, sgemm) and
int8 GEMM (ONNX Runtime MatMulInteger, u8 x s8) throughput divided by the model's FLOPs per image.

    python -m benchmarks.embed_throughput                        # lite0, lite2 and resnet50 on CPU
    python -m benchmarks.embed_throughput --device cuda --images 4096 --workers 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (image_source, md_table, pairwise_ratios, prepare_process, stats, sync, to_jsonable,
                               verdict, write_results)

TARGET = {"cpu": 0.75, "cuda": 0.9}
DEFAULT_IMAGES = {"efficientnet_lite0": 2048, "efficientnet_lite2": 1024, "resnet50": 384}  # enough that start-up costs do not dominate


def _items(folder: Path, step: int, n: int) -> list[str]:
    """The first ``n`` files the build will index (the same rule as the build's scan and shard)."""
    from indexer.sources import scan_folder

    return [it.path for it in scan_folder(folder, folder)[0::step]][:n]


def predecode(encoder, paths: list[str]):
    """The images as the build would feed them: decoded, transformed, stacked (CPU float32)."""
    import torch

    from engine.imageio import open_image

    tf = encoder.transform()
    return torch.stack([tf(open_image(p)) for p in paths])


def forward_only(encoder, batches, device, amp: bool, channels_last: bool) -> float:
    """Seconds to embed pre-decoded batches already on ``device`` (the build's forward and copy-back)."""
    import torch

    from engine.embed import autocast_for

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(memory_format=fmt)
    xs = [b.contiguous(memory_format=fmt) for b in batches]
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode(), autocast_for(torch.device(device), amp):
        for x in xs:
            encoder(x).float().cpu().numpy()
    sync(device)
    elapsed = time.perf_counter() - t
    encoder.to(memory_format=torch.contiguous_format)
    return elapsed


def forward_ort(encoder, batches) -> float:
    """Seconds to embed pre-decoded CPU batches with the ONNX Runtime runner the build uses."""
    from engine.ort import runner_for

    runner = runner_for(encoder, batches[0], "onnxruntime")
    t = time.perf_counter()
    for x in batches:
        runner.run(x)
    return time.perf_counter() - t


def forward_int8(runner, batches) -> float:
    """Seconds to embed pre-decoded CPU batches with an int8 runner (engine.ort.Int8Runner)."""
    t = time.perf_counter()
    for x in batches:
        runner.run(x)
    return time.perf_counter() - t


def gemm_limits(threads: int, n: int = 2048, reps: int = 5) -> dict:
    """Measured GEMM throughput (ops/s) of this machine: fp32 (torch sgemm) and int8 (ONNX Runtime
    MatMulInteger, uint8 x int8 -> int32, the kernel that uses VNNI / dot-product instructions where present)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    fp32 = 2 * n ** 3 * reps / (time.perf_counter() - t)
    rng = np.random.default_rng(0)
    w = helper.make_tensor("B", TensorProto.INT8, [n, n], rng.integers(-128, 127, (n, n), dtype=np.int8).tobytes(),
                           raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [w])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.integers(0, 255, (n, n), dtype=np.uint8)
    for _ in range(2):
        sess.run(None, {"A": x})
    t = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"A": x})
    return {"fp32_ops_s": fp32, "int8_ops_s": 2 * n ** 3 * reps / (time.perf_counter() - t)}


def flops_per_image(encoder) -> float:
    """FLOPs (2 x multiply-adds) of one forward at the encoder's input size (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    s = encoder.config.input_size
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        encoder.cpu()(torch.zeros(1, 3, s, s))
    return float(fc.get_total_flops())


def _drop_int8_cache(encoder) -> None:
    """Remove ``encoder``'s cached int8 models (engine.int8) so the next int8 build quantises afresh (cold)."""
    from engine.ort import cache_dir

    for f in list(cache_dir(encoder).glob("int8-*")):
        f.unlink()


def build_once(encoder, folder: Path, step: int, out: Path, *, batch_size: int, workers: int, device,
               amp: bool, precision: str = "fp32") -> tuple[float, int, int, float]:
    """(seconds, images added, images skipped, seconds spent choosing the precision and making the int8 model)
    of one fresh ``build_index`` call."""
    from indexer import EmbedOptions, Source, build_index

    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    report = build_index(out, Source(images=folder, shard=(0, step) if step > 1 else None), encoder,
                         embed=EmbedOptions(batch_size=batch_size, num_workers=workers, device=device, amp=amp,
                                            progress=lambda done, total: None),
                         adapt=False,  # embedding alone (the head's fit: adapt.md)
                         precision=precision)
    sync(device)
    if precision == "int8" and (report.precision or {}).get("mode") != "int8":
        raise RuntimeError(f"the int8 build fell back to fp32: {report.precision}")
    return time.perf_counter() - t, report.added, len(report.skipped), (report.precision or {}).get("seconds", 0.0)


def embed_loop(encoder, paths: list[str], *, batch_size: int, workers: int, device, amp: bool,
               decode: str) -> float:
    """Seconds of ``indexer.sources.embed_items`` over ``paths`` (read, hash, decode, forward; no index), with
    the given decoding: ``processes`` (DataLoader workers overlapping the forward) or ``threads`` (in turn with
    it, the CPU default)."""
    from indexer.sources import Item, embed_items

    items = [Item(p, p, None) for p in paths]
    t = time.perf_counter()
    for _ in embed_items(encoder, items, batch_size=batch_size, num_workers=workers, device=device, amp=amp,
                         progress=lambda done, total: None, decode=decode):
        pass
    sync(device)
    return time.perf_counter() - t


INT8_MODELS = {"efficientnet_lite0": "imagenet"}  # backbone -> the weights its int8 rows use (real, validated)


def bench_model(name: str, n: int, folder: Path, step: int, *, device: str, batch_size: int, workers: int,
                reps: int, amp: bool, log, workdir: Path, int8: bool = True) -> dict:
    import torch

    from engine.checkpoint import fingerprint_state
    from engine.encoder import create_encoder

    torch.manual_seed(0)
    from engine.backbones import backbone_spec

    # random init: speed does not depend on the weights; at the backbone's training size (224 for Lite0), as the
    # committed figures were measured. int8 rows: the real weights (calibration and the agreement check need them)
    int8 = int8 and name in INT8_MODELS and not device.startswith("cuda")
    encoder = create_encoder(name, INT8_MODELS[name] if int8 else None,
                             input_size=backbone_spec(name).input_size).eval().to(device)
    encoder.fingerprint = fingerprint_state(encoder.state_dict())  # as a loaded checkpoint has it
    paths = _items(folder, step, 10**9)  # every file the build will index
    n = len(paths)
    xs = predecode(encoder, paths)
    batches = [xs[i:i + batch_size].to(device) for i in range(0, n, batch_size)]
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    # warm-up: one pass per layout (and the ONNX export), one build on a few images (imports, DataLoader start)
    for cl in (False, True):
        forward_only(encoder, batches[:1], device, amp, cl)
    use_ort = not device.startswith("cuda")
    if use_ort:
        forward_ort(encoder, batches[:1])
    fwd = {"contiguous": [], "channels_last": [], **({"onnxruntime": []} if use_ort else {})}
    builds, added = [], []
    int8_builds = {"cold": [], "warm": []}
    int8_prep = {"cold": [], "warm": []}  # seconds of calibration + quantisation inside those builds
    runner8 = None
    if int8:  # a first int8 build makes the model the int8 forward is timed with
        from engine.ort import Int8Runner
        from indexer import Index

        build_once(encoder, folder, step, workdir / "idx_int8_warmup", batch_size=batch_size, workers=workers,
                   device=device, amp=amp, precision="int8")
        idx8 = Index.open(workdir / "idx_int8_warmup")
        runner8 = Int8Runner(idx8.int8_spec(), torch.get_num_threads())
        fwd["int8"] = []
    decodes = {"processes": [], "threads": []} if use_ort else {}
    out = workdir / f"idx_{name}"

    def ceiling():
        for key, cl in (("contiguous", False), ("channels_last", True)):
            fwd[key].append(forward_only(encoder, batches, device, amp, cl))
        if use_ort:
            fwd["onnxruntime"].append(forward_ort(encoder, batches))
        if runner8 is not None:
            fwd["int8"].append(forward_int8(runner8, batches))

    ceiling()
    for r in range(reps):
        s, a, _skipped, _ = build_once(encoder, folder, step, out, batch_size=batch_size, workers=workers,
                                    device=device, amp=amp)
        builds.append(s)
        added.append(a)
        if int8:
            _drop_int8_cache(encoder)
            for kind in ("cold", "warm"):
                s8, a8, _, prep = build_once(encoder, folder, step, out, batch_size=batch_size, workers=workers,
                                             device=device, amp=amp, precision="int8")
                int8_builds[kind].append(a8 / s8)
                int8_prep[kind].append(prep)
        for mode in (("processes", "threads") if r % 2 == 0 else ("threads", "processes")) if decodes else ():
            decodes[mode].append(embed_loop(encoder, paths, batch_size=batch_size, workers=workers, device=device,
                                            amp=amp, decode=mode))
        ceiling()
        log(f"  {name} rep {r}: build {a / s:.1f} img/s, forward " + " / ".join(
            f"{n / v[-1]:.1f} ({k})" for k, v in fwd.items()) + " img/s" + "".join(
            f", embed loop {n / v[-1]:.1f} (decode in {k})" for k, v in decodes.items()))
    torch_best = [min(c, cl) for c, cl in zip(fwd["contiguous"], fwd["channels_last"])]
    best = [min(t, o) for t, o in zip(torch_best, fwd["onnxruntime"])] if use_ort else torch_best  # fp32 ceiling
    int8_row = {}
    if int8:
        fp32_build = [a / s for a, s in zip(added, builds)]
        int8_row = {"int8": {
            "forward_img_s": stats(n / t for t in fwd["int8"]),
            "forward_vs_fp32_ort": stats(o / t for t, o in zip(fwd["int8"], fwd["onnxruntime"])),
            **{f"build_{k}_img_s": stats(v) for k, v in int8_builds.items()},
            **{f"build_{k}_vs_fp32_build": stats(pairwise_ratios(v, fp32_build)) for k, v in int8_builds.items()},
            "prepare_s": {k: stats(v) for k, v in int8_prep.items()},
            "flops_per_image": flops_per_image(encoder), "gemm": gemm_limits(torch.get_num_threads())}}
        g = int8_row["int8"]
        # the gallery size from which a cold int8 build beats fp32: the int8 model's making (calibration photos,
        # quantisation, agreement check) over the time int8 saves per image
        per_image8 = 1 / g["build_warm_img_s"]["median"] - g["prepare_s"]["warm"]["median"] / n
        saved = 1 / stats(fp32_build)["median"] - per_image8
        g["break_even_images"] = g["prepare_s"]["cold"]["median"] / saved if saved > 0 else None
        g["limit_img_s"] = {k.split("_")[0]: v / g["flops_per_image"] for k, v in g["gemm"].items()}
    ratios, torch_ratios = [], []
    for r in range(reps):
        ratios.append((added[r] / builds[r]) / (n / ((best[r] + best[r + 1]) / 2)))
        torch_ratios.append((added[r] / builds[r]) / (n / ((torch_best[r] + torch_best[r + 1]) / 2)))
    return {
        "model": name, "images": n, "batch_size": batch_size, "workers": workers, "device": device, "amp": amp,
        "added_per_build": added, "build_img_s": stats(a / s for a, s in zip(added, builds)),
        "forward_img_s": {k: stats(n / t for t in v) for k, v in fwd.items()},
        "ceiling_img_s": stats(n / t for t in best),
        "ceiling": min((k for k in fwd if k != "int8"), key=lambda k: stats(fwd[k])["median"]),  # fp32 forwards
        "ratio": stats(ratios), "ratio_to_pytorch": stats(torch_ratios),
        **({"embed_loop_img_s": {k: stats(n / t for t in v) for k, v in decodes.items()},
            "threads_vs_processes": stats(p / t for p, t in zip(decodes["processes"], decodes["threads"]))}
           if decodes else {}),
        "raw": {"build_s": builds, "forward_s": fwd, "embed_loop_s": decodes, "int8_build_img_s": int8_builds},
        **int8_row,
    }


def data_only(folder: Path, step: int, n: int, workers: int, batch_size: int, encoder_name: str,
              device: str = "cpu") -> float:
    """Images/s of the build's data path alone (read, hash, decode, transform, collate; no forward), decoded as
    the build does on this device."""
    from torch.utils.data import DataLoader

    from engine.embed import decode_side
    from engine.encoder import create_encoder
    from indexer.sources import Item, ItemFiles, collate_items, cpu_batches

    from engine.backbones import backbone_spec

    enc = create_encoder(encoder_name, input_size=backbone_spec(encoder_name).input_size)
    items = [Item(p, p, None) for p in _items(folder, step, n)]
    ds = ItemFiles(items, enc.transform(), decode_side(enc))
    loader = (cpu_batches(ds, batch_size, workers) if device == "cpu" else
              DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_items))
    t = time.perf_counter()
    count = sum(len(b[1]) for b in loader)
    return count / (time.perf_counter() - t)


def markdown(res: dict) -> str:
    rows = []
    for m in res["models"]:
        target = TARGET["cuda" if m["device"].startswith("cuda") else "cpu"]
        ort_fwd = m["forward_img_s"].get("onnxruntime", {}).get("median")
        rows.append([m["model"], m["images"], m["device"], m["workers"], m["build_img_s"]["median"], ort_fwd,
                     m["forward_img_s"]["contiguous"]["median"], m["forward_img_s"]["channels_last"]["median"],
                     m["ceiling"], m["ratio"]["median"], f"{m['ratio']['min']:.2f}-{m['ratio']['max']:.2f}",
                     m["ratio_to_pytorch"]["median"], target, verdict(m["ratio"]["median"], target, True),
                     m.get("data_only_img_s")])
    lines = [f"Images: {res['source']}. Batch {res['batch_size']}; ratio = build img/s / ceiling img/s, the "
             "ceiling being the fastest forward on pre-decoded tensors (ONNX Runtime, PyTorch contiguous, PyTorch "
             "channels_last), timed on both sides of each build (median over builds); the ratio to PyTorch's best "
             "forward is kept beside it.\n",
             md_table(["model", "images", "device", "workers", "build img/s", "forward img/s (ONNX Runtime)",
                       "forward img/s (PyTorch contiguous)", "forward img/s (PyTorch channels_last)", "ceiling",
                       "ratio to ceiling", "range", "ratio to PyTorch forward", "target", "verdict",
                       "data path alone img/s"], rows)]
    loops = [[m["model"], m["embed_loop_img_s"]["threads"]["median"], m["embed_loop_img_s"]["processes"]["median"],
              m["threads_vs_processes"]["median"],
              f"{m['threads_vs_processes']['min']:.2f}-{m['threads_vs_processes']['max']:.2f}"]
             for m in res["models"] if "embed_loop_img_s" in m]
    if loops:
        lines.append("\nDecoding on CPU: the embedding loop alone (read, hash, decode, forward), decoders in turn with "
                     "the forward (threads, the build's CPU default) vs overlapping it (DataLoader worker processes), "
                     "same decoder count, alternating order in each repetition.\n")
        lines.append(md_table(["model", "img/s, threads in turn", "img/s, worker processes", "ratio", "range"], loops))
    int8 = [m for m in res["models"] if "int8" in m]
    if int8:
        lines.append("\nint8 (`--precision int8`, ONNX Runtime static quantisation, the settings of results/int8.md; "
                     "the model's real ImageNet weights). Cold: the build makes its int8 model (decodes and "
                     "calibrates on 256 of the photos, quantises); warm: the model is cached. Ratios pairwise with "
                     "the fp32 build of the same repetition; the int8 forward against the fp32 ONNX Runtime forward "
                     "timed beside it. Target (issue #25): int8 build >= 1.5x the fp32 build. Limits: measured GEMM "
                     "throughput / FLOPs per image.\n")
        rows8 = []
        for m in int8:
            g = m["int8"]
            rows8.append([m["model"], m["images"], m["build_img_s"]["median"], g["build_cold_img_s"]["median"],
                          g["build_cold_vs_fp32_build"]["median"], g["build_warm_img_s"]["median"],
                          g["build_warm_vs_fp32_build"]["median"],
                          verdict(g["build_warm_vs_fp32_build"]["median"], 1.5, True),
                          m["forward_img_s"]["onnxruntime"]["median"], g["forward_img_s"]["median"],
                          g["forward_vs_fp32_ort"]["median"], f"{g['flops_per_image'] / 1e9:.2f}",
                          f"{g['gemm']['fp32_ops_s'] / 1e9:.0f} / {g['gemm']['int8_ops_s'] / 1e9:.0f}",
                          f"{g['limit_img_s']['fp32']:.0f} / {g['limit_img_s']['int8']:.0f}",
                          g["prepare_s"]["cold"]["median"],
                          f"{g['break_even_images']:.0f}" if g["break_even_images"] else "never"])
        lines.append(md_table(["model", "images", "fp32 build img/s", "int8 build img/s (cold)", "ratio (cold)",
                               "int8 build img/s (warm)", "ratio (warm)", "verdict (warm)", "fp32 forward img/s (ORT)",
                               "int8 forward img/s", "int8 / fp32 forward", "GFLOP per image",
                               "GEMM GOP/s fp32 / int8", "limit img/s fp32 / int8", "int8 model made in s (cold)",
                               "cold int8 build pays from (images)"], rows8))
    for note in res.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def _rerender(args) -> int:
    """Rewrite the .md from the .json of the last run (its machine, command and load kept; the fp32 ceiling's name
    recomputed from its forwards, which an int8 forward does not belong to)."""
    import json

    from benchmarks.common import RESULTS

    name = args.name or ("embed_throughput_gpu" if args.device.startswith("cuda") else "embed_throughput")
    saved = json.loads((Path(args.out or RESULTS) / f"{name}.json").read_text())
    res = saved["results"]
    for m in res["models"]:
        m["ceiling"] = max((k for k in m["forward_img_s"] if k != "int8"), key=lambda k: m["forward_img_s"][k]["median"])
    res.setdefault("notes", [])
    note = "Table rewritten from the run's JSON by `python -m benchmarks.embed_throughput --table`; the rows are its."
    if note not in res["notes"]:
        res["notes"].append(note)
    write_results(name, res, markdown(res), title="Embedding throughput: index build vs forward alone",
                  info=saved["machine"], out_dir=args.out, end_load=saved["load_average_end"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2", "resnet50"],
                    help="backbones")
    ap.add_argument("--images", type=int, default=None,
                    help="images per build (default: 2048 for lite0, 384 for resnet50 on CPU; 4096 on CUDA)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of the build and of the ceiling")
    ap.add_argument("--workers", type=int, default=2, help="decoders of the build (its default: 2)")
    ap.add_argument("--reps", type=int, default=2, help="builds per model (ceilings interleaved)")
    ap.add_argument("--no-amp", action="store_true", help="disable AMP on CUDA (the build's default is on)")
    ap.add_argument("--data-only", action="store_true", help="also time the data path alone (explains a gap)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    ap.add_argument("--table", action="store_true", help="re-render the .md from the run's .json")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default=None, help="result file name (default embed_throughput[_gpu])")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.table:
        return _rerender(args)
    info = prepare_process(args.threads, args.device)
    gpu = args.device.startswith("cuda")
    want = max(args.images or (4096 if gpu else max(DEFAULT_IMAGES.get(m, 256) for m in args.models)), 1)
    work = Path(tempfile.mkdtemp(prefix="ppssl_embed_"))
    os.environ["PPSSL_HOME"] = str(work / "home")  # exports and int8 models of this run only
    try:
        folder, step, source = image_source(want, work / "jpegs")
        res = {"source": source, "batch_size": args.batch_size, "models": [], "notes": []}
        for name in args.models:
            n = args.images or (4096 if gpu else DEFAULT_IMAGES.get(name, 256))
            m_step = step if n >= want else max(1, step * want // n)
            print(f"{name}: {n} images on {args.device}", flush=True)
            row = bench_model(name, n, folder, m_step, device=args.device, batch_size=args.batch_size,
                              workers=args.workers, reps=args.reps, amp=gpu and not args.no_amp,
                              log=lambda s: print(s, flush=True), workdir=work, int8=not args.no_int8)
            if args.data_only:
                row["data_only_img_s"] = data_only(folder, m_step, n, args.workers, args.batch_size, name,
                                                   args.device)
            res["models"].append(row)
            print(f"  ratio {row['ratio']['median']:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = args.name or ("embed_throughput_gpu" if gpu else "embed_throughput")
    res = to_jsonable(res)
    paths = write_results(name, res, markdown(res), title="Embedding throughput: index build vs forward alone",
                          info=info, out_dir=args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
