#!/usr/bin/env bash
# Benchmarks 1 (embedding throughput), 2 (exact search) and 4 (training cost) on one CUDA GPU.
#
# Needs only this working tree and the Python packages of the machine (torch with CUDA, torchvision,
# numpy, faiss-cpu or faiss-gpu, open_clip_torch, timm, pillow): no network, no dataset (cub100 is used
# when ../shared/data/cub100 exists, else synthetic JPEGs are written to a temporary folder).
# About 3-4 minutes on an H100/H200. Results: benchmarks/results/*_gpu.{json,md} (and copied to $OUT
# when that variable names a folder). Record the card and the figures in benchmarks/results/gpu.md.
#
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'EOF' || exit 1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: torch sees no CUDA device")
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
try:
    import faiss
    print("faiss", faiss.__version__, "GPUs seen by faiss:", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
except ImportError:
    print("faiss not installed: the GPU search benchmark uses torch alone")
EOF

CPUS=$(nproc)
WORKERS=$(( CPUS > 4 ? CPUS - 2 : 2 ))
STATUS=0
run() {  # run <seconds> <command...>: a failing or slow benchmark does not stop the others
    local limit=$1; shift
    echo "== $*"
    timeout "$limit" "$@" || { echo "!! failed or timed out ($?): $*"; STATUS=1; }
}

# 1. index build (decode in $WORKERS DataLoader workers, pinned memory, AMP) vs forward alone (AMP, best layout)
run 150 python -m benchmarks.embed_throughput --device cuda --images 4096 --workers "$WORKERS" --reps 2
# 2. exact search on the GPU (torch fp32 GEMM + top-k; FAISS GPU when installed) vs the GPU's copy/matmul floor
run 120 python -m benchmarks.search --device cuda --sizes 100000 1000000 --dims 2048 1280 --reps 3 --ann-size 0
# 1b. embedding: PyTorch AMP vs ONNX Runtime's CUDA / TensorRT providers (when onnxruntime-gpu is installed)
run 120 python -m benchmarks.ort_gpu --models efficientnet_lite0 resnet50 --batch 256 --reps 10
# 4. training step: ppssl vs moco, resnet50 at 224 px, ViT-B-32 teacher at 224 px (random weights), AMP
run 120 python -m benchmarks.train_cost --device cuda --backbone resnet50 --input-size 224 --batch 64 \
    --teacher ViT-B-32 --queue 65536 --reps 5 --warmup 2

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp benchmarks/results/*_gpu.json benchmarks/results/*_gpu.md "$OUT"/ 2>/dev/null || true
fi
exit $STATUS
