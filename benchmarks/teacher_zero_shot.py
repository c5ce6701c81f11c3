"""Zero-shot accuracy of an AIS teacher on real photos, under every built-in corpus.

Each corpus has 8 descriptions; bird photos are scored correct when their highest-scoring description is the
corpus's bird line ("an animal characterized by feathers, wings, ..."), so one labelled photo set measures the
teacher under every corpus. With ``--synth WORLD`` the synthetic corpus is also scored on the world's held-out
coarse-family images (each family's own line).

    python -m benchmarks.teacher_zero_shot --teacher imagenet-text --root ../shared/data/cub100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import CUB100, machine_info, md_table, write_results

BIRD_LINE = "an animal characterized by feathers"


def image_embeddings(teacher, dataset, batch_size: int = 64):
    import torch
    from torch.utils.data import DataLoader

    with torch.inference_mode():
        return torch.cat([teacher.encode_image(x.to(teacher.device))
                          for x, *_ in DataLoader(dataset, batch_size=batch_size, num_workers=1)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="imagenet-text")
    ap.add_argument("--root", default=str(CUB100), help="CUB-layout bird photos (test split is scored)")
    ap.add_argument("--synth", default=None, help="a synthetic world (ppssl synth) for the synthetic corpus")
    ap.add_argument("--name", default="teacher_zero_shot")
    args = ap.parse_args(argv)
    info = machine_info()

    import torch

    from engine.datasets import build_dataset
    from engine.runtime import tune_allocator
    from training.ais import BUILTIN_CORPORA, builtin_corpus_path, read_corpus
    from training.teacher import load_teacher
    from training.teacher_cache import teacher_transform

    tune_allocator()
    torch.set_num_threads(2)
    teacher = load_teacher(args.teacher)
    birds = build_dataset("cub200", args.root, split="test", transform=teacher_transform(teacher))
    rows = []
    bird_emb = image_embeddings(teacher, birds)
    for name in BUILTIN_CORPORA:
        corpus = read_corpus(builtin_corpus_path(name))
        line = next((i for i, c in enumerate(corpus) if c.startswith(BIRD_LINE) or "bird" in c.lower()), None)
        if line is None:
            continue
        s = bird_emb @ teacher.encode_text(corpus).T
        acc = float((s.argmax(1) == line).float().mean())
        rows.append([name, f"bird photos ({len(birds)}, cub100 test)", line + 1, f"{100 * acc:.1f}", "12.5"])
    if args.synth:
        from training.teacher_fit import SYNTHETIC_CORPUS_FAMILIES

        coarse = build_dataset("cub200", Path(args.synth) / "coarse", split="test",
                               transform=teacher_transform(teacher))
        corpus = read_corpus(builtin_corpus_path("synthetic"))
        fam = [c.split(".", 1)[-1].lower() for c in coarse.classes]
        pred = (image_embeddings(teacher, coarse) @ teacher.encode_text(corpus).T).argmax(1).tolist()
        acc = sum(SYNTHETIC_CORPUS_FAMILIES[p] == fam[y] for p, (_, y) in zip(pred, coarse.samples)) / len(pred)
        rows.append(["synthetic", f"held-out coarse images ({len(pred)})", "own family", f"{100 * acc:.1f}", "12.5"])
    columns = ["corpus", "photos", "correct line", "zero-shot top-1 %", "chance %"]
    table = md_table(columns, rows)
    text = (f"Teacher: {teacher.spec} (embedding {teacher.embed_dim}-d, input {teacher.image_size} px).\n\n{table}\n")
    write_results(args.name, {"teacher": str(teacher.spec), "rows": [dict(zip(columns, r)) for r in rows]}, text,
                  title=f"Zero-shot accuracy of the AIS teacher `{args.teacher}`", info=info)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
