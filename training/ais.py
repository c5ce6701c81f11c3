"""AIS: the fine-grained text corpus, the teacher's image view, and the image-text logits (Eq. 2-4).

The corpus is 8 attribute descriptions, one relevant to the dataset's domain and seven not. Its
text embeddings come from the frozen teacher once per run (they are constants), and both the teacher
image embedding and the student embedding are turned into logits against them: ``logits = img · textᵀ``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from engine.errors import PPSSLError

#: dataset reader name -> built-in corpus (training/corpora/<name>.txt)
DATASET_CORPUS = {
    "cub200": "birds", "nabirds": "birds", "cars": "cars", "aircraft": "aircraft",
    "flowers102": "flowers", "butterfly200": "butterflies", "dogs": "dogs",
}
BUILTIN_CORPORA = ("birds", "cars", "aircraft", "flowers", "butterflies", "dogs", "synthetic")


class CorpusError(PPSSLError, ValueError):
    """An AIS corpus file that is missing, empty or malformed."""


def read_corpus(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a UTF-8 text file (``#`` starts a comment line)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) < 2:
        raise CorpusError(f"{path}: a corpus needs at least 2 descriptions (the paper uses 8), found {len(lines)}")
    return lines


def builtin_corpus_path(name: str) -> Path:
    if name not in BUILTIN_CORPORA:
        raise CorpusError(f"no built-in corpus {name!r}; known: {', '.join(BUILTIN_CORPORA)}")
    return Path(__file__).resolve().parent / "corpora" / f"{name}.txt"


def resolve_corpus(dataset: str, root: str | None = None, corpus_file: str | None = None,
                   corpus_name: str | None = None) -> tuple[list[str], str]:
    """The descriptions to use and where they came from.

    Order: an explicit file; an explicit built-in name; a synthetic world (a ``coarse/`` folder next to
    ``captions.txt`` under ``root``) gets ``synthetic``; otherwise the dataset's domain corpus.
    """
    if corpus_file:
        return read_corpus(corpus_file), str(corpus_file)
    if corpus_name is None:
        if root and (Path(root) / "coarse").is_dir() and (Path(root) / "captions.txt").is_file():
            corpus_name = "synthetic"
        else:
            corpus_name = DATASET_CORPUS.get(dataset)
    if corpus_name is None:
        raise CorpusError(f"no default corpus for dataset {dataset!r}: pass --corpus FILE or --corpus-name NAME")
    path = builtin_corpus_path(corpus_name)
    return read_corpus(path), f"builtin:{corpus_name}"


def teacher_view(x: torch.Tensor, mean, std, teacher_mean, teacher_std, size: int) -> torch.Tensor:
    """Re-express a student batch (normalised with ``mean``/``std``) as the teacher's input.

    Undo the student normalisation, resize to the teacher's ``size`` (bilinear, antialiased), apply the
    teacher's (CLIP) normalisation. Runs on the training device, so no second data pipeline is needed.
    """
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    img = (x.detach() * s + m).clamp(0, 1)
    if img.shape[-1] != size or img.shape[-2] != size:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    tm = torch.tensor(teacher_mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    ts = torch.tensor(teacher_std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (img - tm) / ts


def corpus_logits(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``image · textᵀ`` for L2-normalised embeddings: (B, D) x (M, D) -> (B, M) cosine logits."""
    return image_emb.float() @ text_emb.float().t()
