"""How the embedded demo's size and epochs were chosen: the whole demo pipeline (``ppssl.demo.build_demo``) on
validation worlds (seeds other than the demo's 0), leave-one-out on each world's test split, ImageNet-only vs
the trained encoder, for each candidate number of epochs. The demo's own world is never scored here.

    python -m benchmarks.demo_validation --seeds 1,2,3 --epochs 3,6 --work runs/demo_validation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path



def main(argv=None) -> int:
    from benchmarks.common import md_table, prepare_process, write_results
    from ppssl.demo import DemoConfig, build_demo, step_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3", help="validation world seeds (never 0, the demo's)")
    ap.add_argument("--epochs", default="3,6", help="candidate training epochs")
    ap.add_argument("--work", default="runs/demo_validation")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    info = prepare_process(None)
    seeds = [int(s) for s in args.seeds.split(",")]
    if 0 in seeds:
        raise SystemExit("seed 0 is the demo's own world: choose on other seeds")
    rows = []
    for seed in seeds:
        for ep in (int(e) for e in args.epochs.split(",")):
            home = Path(args.work) / f"s{seed}_e{ep}"
            cfg = DemoConfig(home=str(home), seed=seed, train_epochs=ep)
            build_demo(cfg, progress=False)
            res = step_result(home, "baseline")["leave_one_out"]
            rows.append({"seed": seed, "epochs": ep, "threads": cfg.threads, **res})
            print(json.dumps(rows[-1]), flush=True)
    import statistics

    head = ["world seed", "epochs", "ImageNet-only, plain rank-1 / mAP %", "ImageNet, adapted index (no training)",
            "trained rank-1 / mAP %"]
    table = []
    for r in rows:
        plain = r.get("imagenet_plain") or r["imagenet"]
        adapted = f"{r['imagenet']['rank-1']} / {r['imagenet']['mAP']}" if r.get("imagenet_plain") else "(not adapted)"
        table.append([r["seed"], r["epochs"], f"{plain['rank-1']} / {plain['mAP']}", adapted,
                      f"{r['trained']['rank-1']} / {r['trained']['mAP']}"])
    notes = []
    for ep in sorted({r["epochs"] for r in rows}):
        sel = [r for r in rows if r["epochs"] == ep]
        m = [r["trained"]["mAP"] for r in sel]
        gain = [r["trained"]["mAP"] - (r.get("imagenet_plain") or r["imagenet"])["mAP"] for r in sel]
        notes.append(f"- {ep} epochs: trained mAP {statistics.mean(m):.1f} (range {min(m)}-{max(m)}), "
                     f"{min(gain):+.1f} to {max(gain):+.1f} over ImageNet-only, on {len(sel)} validation worlds; "
                     f"torch threads {sel[0].get('threads')}.")
    body = ("Each row builds the whole demo (`ppssl/demo.py` `build_demo`, 12 species x 40 images at 128 px) on "
            "another world seed (never 0, the demo's own); leave-one-out on that world's test split.\n\n"
            + md_table(head, table) + "\n\n" + "\n".join(notes))
    write_results("demo_validation", {"rows": rows}, body, title="Demo size and epochs, chosen on validation worlds",
                  info=info, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
