"""Zero-shot accuracy of an AIS teacher on real photos, under every built-in corpus.

Each corpus has 8 descriptions; bird photos are scored correct when their highest-scoring description is the
corpus's bird line ("an animal characterized by feathers, wings, ..."), car photos when it is the corpus's car
line ("a passenger car ..." / "a motor vehicle ..."), so one labelled photo set measures the teacher under every
corpus. ``--split val`` (the default) scores the validation parts (cub100's ``val_ids.txt`` photos, cars98's
held-out 20 %), where choices are made; ``--split test`` cub100's test split, once per table. With
``--centring both`` the offline teacher is scored with and without centring its class-name embeddings (the choice
``training.teacher_offline`` documents). With ``--synth WORLD`` the synthetic corpus is also scored on the world's
held-out coarse-family images (each family's own line).

    python -m benchmarks.teacher_zero_shot --centring both --name teacher_zero_shot_val
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import CUB100, machine_info, md_table, write_results

BIRD_LINE = "an animal characterized by feathers"
CAR_WORDS = ("a passenger car", "a motor vehicle")


def image_embeddings(teacher, dataset, batch_size: int = 64):
    import torch
    from torch.utils.data import DataLoader

    with torch.inference_mode():
        return torch.cat([teacher.encode_image(x.to(teacher.device))
                          for x, *_ in DataLoader(dataset, batch_size=batch_size, num_workers=1)])


def photo_sets(split: str, root: Path, transform) -> dict:
    """``{label: (dataset, line rule)}``: the bird (and, on validation, car) photos to score."""
    from engine.datasets import build_dataset
    from engine.datasets.holdout import split_holdout

    def bird(c: str) -> bool:
        return c.startswith(BIRD_LINE) or "bird" in c.lower()

    def car(c: str) -> bool:
        return c.startswith(CAR_WORDS)

    if split == "test":
        return {"bird photos, cub100 test": (build_dataset("cub200", root, split="test", transform=transform), bird)}
    out = {"bird photos, cub100 val_ids.txt": (
        split_holdout(build_dataset("cub200", root, split="train"), str(root / "val_ids.txt"))[1], bird)}
    cars = root.parent / "cars98" / "images"
    if cars.is_dir():
        out["car photos, cars98 held-out 20 %"] = (split_holdout(build_dataset("images", cars, split="train"),
                                                                 "0.2")[1], car)
    for ds, _ in out.values():
        ds.transform = transform
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="imagenet-text")
    ap.add_argument("--root", default=str(CUB100), help="CUB-layout bird photos (cars98 beside it on validation)")
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="val: the validation parts (choices); test: cub100's test split (once per table)")
    ap.add_argument("--centring", choices=("on", "off", "both"), default="on",
                    help="offline teacher: centre the class-name embeddings (the default), not, or both")
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
    if args.centring != "on" and args.teacher != "imagenet-text":
        raise SystemExit("--centring applies to the offline teacher (imagenet-text) only")
    teachers = {}
    for centre in {"on": (True,), "off": (False,), "both": (True, False)}[args.centring]:
        if args.teacher == "imagenet-text":
            from training.teacher_offline import load_imagenet_text_teacher

            teachers["centred" if centre else "not centred"] = load_imagenet_text_teacher(centre=centre)
        else:
            teachers["-"] = load_teacher(args.teacher)
    rows = []
    for label, teacher in teachers.items():
        for what, (photos, rule) in photo_sets(args.split, Path(args.root), teacher_transform(teacher)).items():
            emb = image_embeddings(teacher, photos)
            for name in BUILTIN_CORPORA:
                corpus = read_corpus(builtin_corpus_path(name))
                line = next((i for i, c in enumerate(corpus) if rule(c)), None)
                if line is None:
                    continue
                acc = float(((emb @ teacher.encode_text(corpus).T).argmax(1) == line).float().mean())
                rows.append([label, name, f"{what} ({len(photos)})", line + 1, f"{100 * acc:.1f}", "12.5"])
        if args.synth:
            from training.teacher_fit import SYNTHETIC_CORPUS_FAMILIES

            coarse = build_dataset("cub200", Path(args.synth) / "coarse", split="test",
                                   transform=teacher_transform(teacher))
            corpus = read_corpus(builtin_corpus_path("synthetic"))
            fam = [c.split(".", 1)[-1].lower() for c in coarse.classes]
            pred = (image_embeddings(teacher, coarse) @ teacher.encode_text(corpus).T).argmax(1).tolist()
            acc = sum(SYNTHETIC_CORPUS_FAMILIES[p] == fam[y] for p, (_, y) in zip(pred, coarse.samples)) / len(pred)
            rows.append([label, "synthetic", f"held-out coarse images ({len(pred)})", "own family",
                         f"{100 * acc:.1f}", "12.5"])
    teacher = next(iter(teachers.values()))
    columns = ["class-name embeddings", "corpus", "photos", "correct line", "zero-shot top-1 %", "chance %"]
    table = md_table(columns, rows)
    split = ("validation parts only (no test split read)" if args.split == "val"
             else "cub100 test split (read once for this table)")
    text = (f"Teacher: {teacher.spec} (embedding {teacher.embed_dim}-d, input {teacher.image_size} px). Photos: "
            f"{split}.\n\n{table}\n")
    write_results(args.name, {"teacher": str(teacher.spec), "split": args.split, "rows": [dict(zip(columns, r)) for r in rows]}, text,
                  title=f"Zero-shot accuracy of the AIS teacher `{args.teacher}`", info=info)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
