"""GPU embedding: PyTorch AMP (fp16, channels_last) vs ONNX Runtime's CUDA (and TensorRT) providers.

The same encoder forward (engine/ort.py's export: backbone, pooling, L2 norm) on random batches already on the
device, timed alternately, median of repetitions; outputs compared (cosine). A provider that onnxruntime does
not offer on the machine is reported as unavailable, not failed.

    python -m benchmarks.ort_gpu --models efficientnet_lite0 resnet50 --batch 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import torch

    from benchmarks.common import md_table, to_jsonable, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("ort_gpu: no CUDA device")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        ort, providers = None, []
    from engine.encoder import create_encoder
    from engine.ort import export_onnx

    rows, res = [], {"providers_available": providers, "models": []}
    for name in args.models:
        enc = create_encoder(name).eval()
        size = enc.config.input_size
        x = torch.randn(args.batch, 3, size, size)
        entry = {"model": name, "batch": args.batch}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(enc, path, size)
            gpu = enc.cuda().to(memory_format=torch.channels_last)
            xg = x.cuda().contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                ref = gpu(xg).float()
            times = {"pytorch_amp": []}
            sessions = {}
            for prov in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
                if ort is not None and prov in providers:
                    try:
                        sessions[prov] = ort.InferenceSession(str(path), providers=[prov])
                        times[prov] = []
                    except Exception as exc:  # noqa: BLE001 - e.g. TensorRT libraries missing
                        entry[f"{prov}_error"] = str(exc)[:200]
            xn = x.numpy()
            for s in sessions.values():
                s.run(None, {"images": xn})  # warm-up (TensorRT builds its engine here)
            for _ in range(args.reps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                    gpu(xg).float().cpu()
                torch.cuda.synchronize()
                times["pytorch_amp"].append(time.perf_counter() - t)
                for prov, s in sessions.items():
                    t = time.perf_counter()
                    out = s.run(None, {"images": xn})[0]  # includes the host->device copy, as a build would
                    times[prov].append(time.perf_counter() - t)
            for prov, s in sessions.items():
                out = s.run(None, {"images": xn})[0]
                r = ref.cpu().numpy()
                entry[f"{prov}_min_cosine"] = float(((out * r).sum(1) / (np.linalg.norm(out, axis=1)
                                                                         * np.linalg.norm(r, axis=1))).min())
        entry["img_s"] = {k: args.batch / float(np.median(v)) for k, v in times.items()}
        res["models"].append(entry)
        rows.append([name, args.batch] + [entry["img_s"].get(k) for k in
                                          ("pytorch_amp", "CUDAExecutionProvider", "TensorrtExecutionProvider")])
        print(name, {k: round(v, 1) for k, v in entry["img_s"].items()}, flush=True)
    md = ("Random batches on the device for PyTorch (AMP fp16, channels_last); ONNX Runtime sessions take host "
          "arrays (the copy is included). onnxruntime providers here: " + ", ".join(providers or ["none"]) + ".\n\n"
          + md_table(["model", "batch", "PyTorch AMP img/s", "ORT CUDA img/s", "ORT TensorRT img/s"], rows))
    write_results("ort_gpu", to_jsonable(res), md, title="GPU embedding: PyTorch AMP vs ONNX Runtime",
                  out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
