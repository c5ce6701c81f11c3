"""How much species information the AIS target carries: a no-training check of the teacher, per world.

AIS distils the teacher's distribution over the corpus's 8 descriptions, p = softmax(teacher logits / ais_tau),
into the student. If p is the same for every species it can only pull species together. For each world this
scores p itself as a retrieval feature on the test split (leave-one-out, rank-1 and mAP, beside random features
of the same size), and reports how peaked p is (mean entropy, ln 8 = 2.08 is uniform), how much it varies
between images (mean KL of each p to the mean p) and the share of that variation explained by species (R²).

    python -m benchmarks.teacher_information --root ../shared/data/cub100 \
        --synth-root runs/ablation_lite0_v2/synth_high_w0 --synth-teacher runs/ablation_lite0_v2/teacher_synth_high_w0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import CUB100, machine_info, md_table, write_results
from benchmarks.teacher_zero_shot import image_embeddings

COLUMNS = ["world", "teacher", "corpus", "test images", "species", "rank-1 %", "random rank-1 %", "mAP %",
           "random mAP %", "mAP / random", "mean entropy (nats)", "mean KL to mean p", "species R²"]


def target_statistics(p, labels) -> dict:
    """Peakedness, spread and species share of the per-image target distributions ``p`` (N, M)."""
    import torch

    p = p.double()
    y = torch.as_tensor(labels)
    mean = p.mean(0, keepdim=True)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
    kl_to_mean = (p * (p.clamp_min(1e-12).log() - mean.clamp_min(1e-12).log())).sum(1).mean()
    total = ((p - mean) ** 2).sum()
    between = sum(int((y == c).sum()) * ((p[y == c].mean(0) - mean[0]) ** 2).sum() for c in y.unique())
    return {"entropy": float(entropy), "kl_to_mean": float(kl_to_mean),
            "species_r2": float(between / total) if total > 0 else 0.0}


def world_row(name: str, teacher_spec: str, root: str, tau: float, seed: int = 0) -> list:
    """One table row for the test split of the CUB-layout world at ``root``, under the corpus the trainer would
    pick for it (``resolve_corpus``)."""
    import torch

    from engine.datasets import build_dataset
    from engine.metrics import retrieval_metrics
    from training.ais import corpus_logits, resolve_corpus
    from training.teacher import load_teacher
    from training.teacher_cache import teacher_transform

    teacher = load_teacher(teacher_spec)
    ds = build_dataset("cub200", root, split="test", transform=teacher_transform(teacher))
    corpus, source = resolve_corpus("cub200", root)
    labels = [y for _, y in ds.samples]
    with torch.inference_mode():
        p = torch.softmax(corpus_logits(image_embeddings(teacher, ds), teacher.encode_text(corpus)) / tau, dim=1)
    p = p.float().cpu()
    got = retrieval_metrics(torch.nn.functional.normalize(p, dim=1), labels)
    rand = torch.nn.functional.normalize(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)), dim=1)
    chance = retrieval_metrics(rand, labels)
    st = target_statistics(p, labels)
    got, chance = got.summary, chance.summary
    return [name, f"`{teacher.spec}`", source, len(ds), len(set(labels)),
            f"{100 * got['rank-1']:.1f}", f"{100 * chance['rank-1']:.1f}",
            f"{100 * got['mAP']:.2f}", f"{100 * chance['mAP']:.2f}", f"{got['mAP'] / chance['mAP']:.2f}",
            f"{st['entropy']:.2f}", f"{st['kl_to_mean']:.3f}", f"{st['species_r2']:.3f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="imagenet-text", help="teacher of the real-photo world")
    ap.add_argument("--root", default=str(CUB100), help="CUB-layout photos (test split)")
    ap.add_argument("--synth-root", default=None, help="a synthetic world (ppssl synth), optional")
    ap.add_argument("--synth-teacher", default=None, help="its teacher (ppssl teacher fit)")
    ap.add_argument("--tau", type=float, default=0.1, help="ais_tau of the target softmax (the configs' value)")
    ap.add_argument("--name", default="teacher_information")
    args = ap.parse_args(argv)
    info = machine_info()

    import torch

    from engine.runtime import tune_allocator

    tune_allocator()
    torch.set_num_threads(2)
    rows = [world_row(Path(args.root).name, args.teacher, args.root, args.tau)]
    if args.synth_root:
        if not args.synth_teacher:
            ap.error("--synth-root needs --synth-teacher")
        rows.append(world_row(Path(args.synth_root).name, args.synth_teacher, args.synth_root, args.tau))
    table = md_table(COLUMNS, rows)
    text = (f"Target p = softmax(teacher image-to-text logits / {args.tau}) over the world's 8-line corpus, as "
            "AIS distils it. Retrieval: p (L2-normalised) as the feature, leave-one-out on the test split; random: "
            "Gaussian features of the same size (seed 0).\n\n" + table + "\n")
    write_results(args.name, {"tau": args.tau, "rows": [dict(zip(COLUMNS, r)) for r in rows]}, text,
                  title="Species information in the AIS target", info=info)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
