"""CPU forward and training-step throughput of Lite0 at 224 px (batch 32), glibc allocator default vs tuned
(engine/runtime.py), contiguous vs channels_last. Each setting in its own process (mallopt is process-wide).

    python -m benchmarks.allocator_speed
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from engine.runtime import tune_allocator
tune, cl = sys.argv[1] == "1", sys.argv[2] == "1"
if tune:
    tune_allocator()
from engine.encoder import create_encoder
torch.set_num_threads(2)
enc = create_encoder("efficientnet_lite0", weights="imagenet")
x = torch.randn(32, 3, 224, 224)
if cl:
    enc, x = enc.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    enc.eval(); enc.forward_features(x)
    t = time.perf_counter(); [enc.forward_features(x) for _ in range(3)]; fwd = 96 / (time.perf_counter() - t)
enc.train(); opt = torch.optim.SGD(enc.parameters(), lr=1e-3); steps = []
for _ in range(5):
    t = time.perf_counter(); enc.forward_features(x).mean().backward(); opt.step(); opt.zero_grad()
    steps.append(32 / (time.perf_counter() - t))
print(json.dumps({"forward_img_s": round(fwd, 1), "train_img_s": round(sorted(steps[1:])[2], 1)}))
"""


def main() -> int:
    rows = {}
    for tune in ("0", "1"):
        for cl in ("0", "1"):
            out = subprocess.run([sys.executable, "-c", CHILD, tune, cl], capture_output=True, text=True, check=True)
            rows[f"allocator={'tuned' if tune == '1' else 'default'} channels_last={cl == '1'}"] = json.loads(
                out.stdout.strip().splitlines()[-1])
    for k, v in rows.items():
        print(k, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
