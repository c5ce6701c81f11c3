"""Frozen CLIP teachers for AIS, all built by open_clip.

``load_teacher(spec)`` accepts:

* ``"ViT-B-32:openai"`` - an open_clip model name and pretrained tag (the paper's teacher; needs the
  weights in open_clip's cache or network access);
* ``"ViT-B-32:/path/to/weights.safetensors"`` - a model name and a local weights file;
* ``"ViT-B-32"`` - a model name alone: random initialisation (tests, GPU timing);
* ``"imagenet-text"`` - the offline zero-shot teacher for real photos (``training.teacher_offline``: the
  packaged ImageNet Lite0 classifier mapped into all-MiniLM-L6-v2's sentence space);
* a directory written by ``ppssl teacher fit`` (open_clip's ``local-dir`` layout:
  ``open_clip_config.json`` + ``open_clip_model.safetensors``), loaded through ``local-dir:``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.errors import PPSSLError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class TeacherError(PPSSLError, RuntimeError):
    """A teacher that cannot be built or loaded (unknown name, missing weights, tampered file)."""


class Teacher:
    """A frozen open_clip model with L2-normalised ``encode_image`` / ``encode_text``.

    Attributes:
        spec: what was loaded (for logs and checkpoints).
        image_size: the side of the teacher's square input.
        mean, std: the teacher's input normalisation.
        preprocess: the rest of open_clip's preprocess config (``resize_mode``, ``interpolation``).
        embed_dim: width of the joint embedding.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, spec: str, image_size: int, mean, std,
                 preprocess: dict | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.preprocess = {k: v for k, v in (preprocess or {}).items() if k in ("resize_mode", "interpolation")}
        self._fingerprint: str | None = None
        self.embed_dim = int(_embed_dim(model))
        self.device = torch.device("cpu")

    def to(self, device) -> "Teacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def fingerprint(self) -> str:
        """Content hash of the teacher's weights (what a cache of its outputs depends on)."""
        if self._fingerprint is None:
            from engine.checkpoint import fingerprint_state

            self._fingerprint = fingerprint_state(self.model.state_dict())
        return self._fingerprint

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher-normalised images (B, 3, S, S) -> L2-normalised float embeddings (B, D)."""
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Strings -> L2-normalised float embeddings (M, D)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def _embed_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return proj.out_features
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    return getattr(model.visual, "output_dim")


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def is_teacher_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def load_teacher(spec: str, device: str | torch.device = "cpu"):
    """Build a frozen teacher from ``spec`` (see the module docstring)."""
    if spec == "imagenet-text":
        from training.teacher_offline import load_imagenet_text_teacher

        return load_imagenet_text_teacher().to(device)
    import open_clip

    if is_teacher_dir(spec):
        _verify_teacher_dir(Path(spec))
        ident = f"local-dir:{Path(spec).resolve()}"
        try:
            model = open_clip.create_model(ident)
            tokenizer = open_clip.get_tokenizer(ident)
        except Exception as exc:  # noqa: BLE001 - open_clip raises many types; report one line
            raise TeacherError(f"{spec}: open_clip could not load this teacher ({exc})") from None
    else:
        if Path(spec).exists():
            raise TeacherError(f"{spec}: not a teacher directory (no {CONFIG_FILE}); "
                               "for a weights file use NAME:/path/to/file")
        name, _, tag = spec.partition(":")
        if name not in open_clip.list_models():
            raise TeacherError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
        try:
            model = open_clip.create_model(name, pretrained=tag or None)
        except Exception as exc:  # noqa: BLE001
            raise TeacherError(
                f"teacher {spec!r}: could not load weights {tag!r} ({exc}). Offline, use a teacher "
                "directory from `ppssl teacher fit`, NAME:/local/weights.safetensors, or NAME alone (random)."
            ) from None
        tokenizer = open_clip.get_tokenizer(name)
    pre = open_clip.get_model_preprocess_cfg(model) if hasattr(open_clip, "get_model_preprocess_cfg") else {}
    mean = pre.get("mean") or OPENAI_MEAN
    std = pre.get("std") or OPENAI_STD
    size = pre.get("size") or _image_size(model)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Teacher(model, tokenizer, spec, int(size), mean, std, preprocess=pre).to(device)


def save_teacher_dir(model: torch.nn.Module, model_cfg: dict, out: str | Path, image_size: int,
                     mean=OPENAI_MEAN, std=OPENAI_STD, info: dict | None = None) -> str:
    """Write an open_clip ``local-dir`` teacher atomically; returns the weights' fingerprint.

    ``info`` (JSON) is stored under the config's ``ppssl`` key together with the fingerprint that
    :func:`load_teacher` checks.
    """
    from safetensors.torch import save_file

    from engine.atomic import atomic_dir
    from engine.checkpoint import fingerprint_state

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fp = fingerprint_state(state)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"size": int(image_size), "mean": list(mean), "std": list(std),
                                 "interpolation": "bicubic", "resize_mode": "shortest"},
              "ppssl": {**(info or {}), "fingerprint": fp}}
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return fp


def _verify_teacher_dir(path: Path) -> None:
    """Refuse a teacher whose weights do not hash to the fingerprint recorded at fit time."""
    from safetensors.torch import load_file

    from engine.checkpoint import fingerprint_state

    try:
        cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TeacherError(f"{path / CONFIG_FILE}: not valid JSON ({exc})") from None
    if "model_cfg" not in cfg:
        raise TeacherError(f"{path / CONFIG_FILE}: missing 'model_cfg'")
    expected = cfg.get("ppssl", {}).get("fingerprint")
    weights = path / WEIGHTS_FILE
    if expected is None:
        return  # a plain open_clip local-dir written elsewhere: nothing recorded to check
    if not weights.is_file():
        raise TeacherError(f"{path}: missing {WEIGHTS_FILE}")
    try:
        actual = fingerprint_state(load_file(str(weights)))
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{weights}: unreadable safetensors file ({exc})") from None
    if actual != expected:
        raise TeacherError(f"{weights}: weights hash to {actual} but {CONFIG_FILE} records {expected}")
