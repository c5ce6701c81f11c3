"""``ppssl teacher fit``: train a small CLIP offline on the captioned synthetic world, as the AIS teacher.

The model is open_clip's own :class:`open_clip.CLIP` built from a config dict (a small ViT and text
transformer), trained with open_clip's :class:`open_clip.loss.ClipLoss` on the synthetic birds and the
coarse families (``SYNTH/coarse``), both train splits. It is saved in open_clip's ``local-dir`` layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``), so ``load_teacher(DIR)`` and
``open_clip.create_model("local-dir:DIR")`` both load it. Zero-shot accuracy on the held-out coarse
images against the 8 synthetic corpus descriptions is measured at the end and recorded in the config.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from tqdm.auto import tqdm

from engine.errors import PPSSLError
from training.teacher import OPENAI_MEAN, OPENAI_STD, save_teacher_dir

#: the coarse family each line of training/corpora/synthetic.txt describes (None: not in the world)
SYNTHETIC_CORPUS_FAMILIES = ("bird", "fish", "butterfly", "flower", "vehicle", "aircraft", "empty_scene", None)


@dataclass
class TeacherFitConfig:
    """A tiny CLIP for the synthetic world, and how to train it."""

    data: str = ""  # synthetic world directory (ppssl synth --out), with coarse/ and captions.txt
    out: str = "runs/teacher"  # output directory (open_clip local-dir layout)
    image_size: int = 64  # teacher input side (images are resized to it)
    patch_size: int = 8  # ViT patch side
    vision_width: int = 128  # ViT width
    vision_layers: int = 4  # ViT depth
    text_width: int = 128  # text transformer width
    text_layers: int = 4  # text transformer depth
    heads_width: int = 64  # width per attention head (heads = width / heads_width)
    context_length: int = 32  # text tokens (SimpleTokenizer BPE, truncated/padded)
    embed_dim: int = 128  # joint embedding width
    epochs: int = 60  # passes over one balanced epoch (all coarse train images + an equal share of fine birds)
    fine_share: float = 1.0  # fine-grained bird images per epoch, as a multiple of one coarse family's size
    batch_size: int = 64  # image-caption pairs per step
    lr: float = 1e-3  # AdamW peak learning rate (cosine decay after a 1-epoch warm-up)
    weight_decay: float = 0.1  # AdamW weight decay
    seed: int = 0  # init, data order and augmentation seed
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True  # tqdm progress bar

    def model_cfg(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size,
                           "width": self.vision_width, "layers": self.vision_layers,
                           "head_width": self.heads_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408,
                         "width": self.text_width, "heads": max(1, self.text_width // self.heads_width),
                         "layers": self.text_layers},
        }


class TeacherFitError(PPSSLError, ValueError):
    """The synthetic world cannot train a teacher (missing captions, no coarse families)."""


def _captioned(root: Path, split: str):
    from engine.datasets import build_dataset

    ds = build_dataset("cub200", root, split=split)
    caps = getattr(ds, "captions", None)
    if caps is None:
        raise TeacherFitError(f"{root}: no captions.txt; generate the world with `ppssl synth`")
    return [(p, c) for (p, _y), c in zip(ds.samples, caps) if c], ds


def _load_images(paths: list[str], size: int) -> torch.Tensor:
    """Decode once into a uint8 tensor (N, 3, size, size); the synthetic world is small."""
    from engine.imageio import open_image

    resize = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])
    return torch.stack([resize(open_image(p)) for p in paths])


def fit_teacher(cfg: TeacherFitConfig) -> dict:
    """Train, evaluate zero-shot, save; returns the summary written into the config's ``ppssl`` field."""
    import open_clip
    from open_clip.loss import ClipLoss

    from training.ais import builtin_corpus_path, read_corpus

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.data)
    if not (root / "coarse" / "images.txt").is_file():
        raise TeacherFitError(f"{root}: no coarse/ families; generate the world with --coarse-per-family > 0")
    t0 = time.perf_counter()
    fine_pairs, _ = _captioned(root, "train")
    coarse_pairs, coarse_ds = _captioned(root / "coarse", "train")
    pairs = coarse_pairs + fine_pairs
    paths, captions = [p for p, _ in pairs], [c for _, c in pairs]
    n_coarse, n_fine = len(coarse_pairs), len(fine_pairs)
    # balance: the fine-grained birds outnumber every coarse family; each epoch takes all coarse images and
    # a fresh random share of the birds the size of one family, so family-level concepts are not drowned out
    fine_per_epoch = min(n_fine, int(round(cfg.fine_share * n_coarse / max(1, len(coarse_ds.classes)))))
    images = _load_images(paths, cfg.image_size)

    torch.manual_seed(cfg.seed)
    model = open_clip.CLIP(**cfg.model_cfg())
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
    tokens = tokenizer(captions)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug = v2.Compose([v2.RandomResizedCrop(cfg.image_size, scale=(0.6, 1.0), antialias=True),
                      v2.RandomHorizontalFlip()])
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    n = n_coarse + fine_per_epoch
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    step, losses = 0, []
    bar = tqdm(total=total, desc="teacher fit", disable=not cfg.progress, unit="step")
    model.train()
    for _epoch in range(cfg.epochs):
        fine = n_coarse + torch.randperm(n_fine, generator=gen)[:fine_per_epoch]
        pool = torch.cat([torch.arange(n_coarse), fine])
        perm = pool[torch.randperm(len(pool), generator=gen)]
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            batch = torch.stack([aug(images[i]) for i in idx.tolist()]).float().div(255)
            batch = (batch - mean) / std
            lr = cfg.lr * min(1.0, (step + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            img_f = model.encode_image(batch, normalize=True)
            txt_f = model.encode_text(tokens[idx], normalize=True)
            loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()

    corpus = read_corpus(builtin_corpus_path("synthetic"))
    zs = zero_shot(model, tokenizer, corpus, root / "coarse", cfg.image_size)
    summary = {
        "trained_on": str(root),
        "train_pairs": len(paths),
        "pairs_per_epoch": n,
        "steps": step,
        "final_loss": sum(losses[-steps_per_epoch:]) / min(len(losses), steps_per_epoch),
        "seconds": round(time.perf_counter() - t0, 1),
        "fit_config": asdict(cfg),
        "zero_shot": zs,
    }
    summary["fingerprint"] = save_teacher_dir(model, cfg.model_cfg(), cfg.out, cfg.image_size, info=summary)
    return summary


@torch.no_grad()
def zero_shot(model, tokenizer, corpus: list[str], coarse_root: Path, image_size: int) -> dict:
    """Top-1 accuracy of classifying held-out coarse images into the 8 corpus descriptions.

    Line ``i`` of the synthetic corpus describes family ``SYNTHETIC_CORPUS_FAMILIES[i]``; an image is
    correct when its highest-scoring description is its own family's.
    """
    if len(corpus) != len(SYNTHETIC_CORPUS_FAMILIES):
        raise TeacherFitError(f"the synthetic corpus has {len(corpus)} lines, expected {len(SYNTHETIC_CORPUS_FAMILIES)}")
    from engine.datasets import build_dataset

    ds = build_dataset("cub200", coarse_root, split="test")
    fam_of_class = [c.split(".", 1)[-1].lower() for c in ds.classes]
    images = _load_images([p for p, _ in ds.samples], image_size).float().div(255)
    images = (images - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(corpus)), dim=-1)
    pred = (img @ txt.t()).argmax(dim=1).tolist()
    per_family: dict[str, list[int]] = {}
    for (_, y), p in zip(ds.samples, pred):
        fam = fam_of_class[y]
        per_family.setdefault(fam, []).append(int(SYNTHETIC_CORPUS_FAMILIES[p] == fam))
    correct = sum(sum(v) for v in per_family.values())
    return {"accuracy": correct / max(1, len(pred)), "images": len(pred), "chance": 1 / len(corpus),
            "per_family": {k: sum(v) / len(v) for k, v in sorted(per_family.items())}}
