"""Score one trained checkpoint on cub100's validation part with each pooling (its attention map, then GAP),
the retrieval head refitted per pooling on the training part: separates what the backbone learned from what
the attention map does to the feature (for the detached PP-SSL run of `cub100_lambda_val.md`).

    python -m benchmarks.cub100_pooling runs/val11/detach/val/ppssl_s0/last
"""

from __future__ import annotations

import sys

from benchmarks.common import CUB100, REPO


def main(argv=None) -> int:
    from benchmarks.cub100_finetune import evaluate
    from engine.encoder import create_encoder
    from engine.runtime import tune_allocator
    from training.config import load_yaml

    tune_allocator()
    recipe = load_yaml(REPO / "configs" / "finetune_lite0.yaml")
    root = str(CUB100)
    for ckpt in (sys.argv[1:] if argv is None else argv):
        for pooling in ("attention", "gap"):
            enc = create_encoder(ckpt)
            enc.set_whitening(None)
            enc.config.pooling = pooling
            m = evaluate(enc, root, "val", str(CUB100 / "val_ids.txt"), recipe)
            print(ckpt, pooling, {k: round(v, 2) for k, v in m.items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
