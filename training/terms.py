"""The loss terms of Eq. 9 beyond the contrastive one: L = L_moco + lambda1 L_AIS + lambda2 L_IADM.

Each term is a component that owns its settings and state (AIS: the frozen teacher, the corpus and its text
embeddings, the cached teacher logits; IADM: where its GradCAM comes from), declares what it needs of the student
(an AIS projection, a hooked stage, a gradient on the input views) and computes its value from one
:class:`Step`. The trainer builds the enabled terms from the registry and never branches on their names; a new
term is one class here (and its weight in training/config.py): docs/extending.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.embed import autocast_for
from training.ais import corpus_logits, resolve_corpus, teacher_view
from training.iadm import cam_target, gradient_cam
from training.losses import ais_kl_loss, attention_kl_loss


@dataclass
class Step:
    """What one training step hands its loss terms."""

    x_q: torch.Tensor  # the query views, on the device (requires grad when a term asked for it)
    out: dict  # the student's outputs (training.moco.Student): q, attn, ais, stages
    index: torch.Tensor | None  # the batch's dataset indices
    l_moco: torch.Tensor  # the contrastive loss (IADM takes its GradCAM from it)
    scaler: torch.amp.GradScaler  # the AMP loss scaler (a CAM of the scaled loss matches the backward pass)
    amp: bool  # fp16 autocast on CUDA


@dataclass(frozen=True)
class StudentNeeds:
    """What a term needs the student to compute (merged over the enabled terms)."""

    ais_dim: int | None = None  # an AIS projection of the attention-pooled feature to this width
    hook_stage: str | None = None  # an intermediate map captured in the forward pass
    input_grad: bool = False  # the query views require grad (a CAM with respect to the image)


class LossTerm:
    """One weighted term of the loss. Subclass, set ``name`` and ``weight_field`` (the TrainConfig field holding
    its lambda), implement :meth:`enabled` and :meth:`__call__`, and decorate with :func:`register_loss_term`."""

    name: ClassVar[str]  # the column of train_log.csv is ``loss_<name>``
    weight_field: ClassVar[str]  # TrainConfig field with the term's weight
    switch_on: ClassVar[dict]  # TrainConfig overrides that enable the term (the contract tests train with them)

    def __init__(self, cfg, device: torch.device, **resources):
        self.cfg, self.device = cfg, device

    @classmethod
    def enabled(cls, cfg) -> bool:
        """Whether the run's config asks for this term."""
        raise NotImplementedError

    @property
    def weight(self) -> float:
        return float(getattr(self.cfg, self.weight_field))

    def needs(self) -> StudentNeeds:
        return StudentNeeds()

    def prepare(self, trainer) -> None:
        """Once before the first step (e.g. a cache over the training images)."""

    def record(self) -> dict:
        """What a checkpoint records about the term (its teacher, its corpus)."""
        return {}

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError


LOSS_TERMS: dict[str, type[LossTerm]] = {}


def register_loss_term(cls: type[LossTerm]) -> type[LossTerm]:
    if cls.name in LOSS_TERMS:
        raise ValueError(f"loss term {cls.name!r} is already registered")
    LOSS_TERMS[cls.name] = cls
    return cls


def build_terms(cfg, device: torch.device, **resources) -> dict[str, LossTerm]:
    """The enabled terms, in registry order; ``resources`` go to every term (``teacher=``: an already-loaded AIS
    teacher; ``input_norm=``: the student's input mean and std)."""
    return {name: cls(cfg, device, **resources) for name, cls in LOSS_TERMS.items() if cls.enabled(cfg)}


def merged_needs(terms: dict[str, LossTerm]) -> StudentNeeds:
    """One :class:`StudentNeeds` for all terms (two terms hooking different stages is refused)."""
    ais_dim, hook, grad = None, None, False
    for term in terms.values():
        n = term.needs()
        ais_dim = n.ais_dim or ais_dim
        if n.hook_stage is not None and hook not in (None, n.hook_stage):
            raise ValueError(f"loss terms hook two stages: {hook} and {n.hook_stage}")
        hook = n.hook_stage or hook
        grad = grad or n.input_grad
    return StudentNeeds(ais_dim, hook, grad)


@register_loss_term
class AISTerm(LossTerm):
    """L_AIS: KL between the frozen CLIP teacher's and the student's image-to-text logits over the fine-grained
    corpus (the student's embedding is the attention-pooled feature through its AIS projection)."""

    name, weight_field, switch_on = "ais", "lambda_ais", {"method": "moco+ais"}

    def __init__(self, cfg, device, teacher=None, input_norm=None, **resources):
        super().__init__(cfg, device)
        from training.teacher import load_teacher

        self.teacher = teacher if teacher is not None else load_teacher(cfg.teacher)
        self.teacher.to(device)
        self.corpus, self.corpus_source = resolve_corpus(cfg.dataset, cfg.root, cfg.corpus, cfg.corpus_name)
        self.text_emb = self.teacher.encode_text(self.corpus).to(device)  # frozen teacher: an exact cache
        self.teacher_logits: torch.Tensor | None = None  # (N, M) per training image, teacher_view "image"
        self.input_norm = input_norm  # the student's input (mean, std): teacher_view "query" re-normalises its views

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.use_ais

    def needs(self) -> StudentNeeds:
        return StudentNeeds(ais_dim=self.teacher.embed_dim)

    def prepare(self, trainer) -> None:
        """``teacher_view: image``: the teacher's logits for every training image, once per run (exact): the
        teacher is frozen and its view deterministic, so they are constants; the teacher then leaves the device."""
        if self.cfg.teacher_view != "image" or self.teacher_logits is not None:
            return
        from training.teacher_cache import cache_key, teacher_embeddings

        cfg, base = self.cfg, trainer.train_set.base
        key = cache_key(self.teacher, cfg.dataset, cfg.root, len(base))
        emb = teacher_embeddings(self.teacher, base, trainer.out / "teacher_cache", key,
                                 batch_size=cfg.eval_batch_size, num_workers=cfg.workers, device=self.device,
                                 progress=cfg.progress)
        self.teacher_logits = corpus_logits(emb.to(self.device), self.text_emb)
        self.teacher.to("cpu")

    def record(self) -> dict:
        return {"corpus": self.corpus_source, "teacher": self.teacher.spec}

    def __call__(self, step: Step) -> torch.Tensor:
        if self.cfg.teacher_view == "image":
            if self.teacher_logits is None or step.index is None:
                raise RuntimeError("teacher_view 'image' needs Trainer.prepare_terms() and the batch's indices")
            teacher = self.teacher_logits[step.index.to(self.teacher_logits.device)]
        else:
            t = self.teacher
            with torch.no_grad(), autocast_for(self.device, step.amp):
                tv = teacher_view(step.x_q.float(), *self.input_norm, t.mean, t.std, t.image_size)
                teacher = corpus_logits(t.encode_image(tv), self.text_emb)
        return ais_kl_loss(corpus_logits(step.out["ais"], self.text_emb), teacher, self.cfg.ais_tau)


@register_loss_term
class IADMTerm(LossTerm):
    """L_IADM: KL from the student's attention map A to the GradCAM of the contrastive loss (with respect to the
    original image, or an intermediate stage), pooled to A's grid."""

    name, weight_field, switch_on = "iadm", "lambda_iadm", {"method": "moco+iadm"}

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.use_iadm

    def needs(self) -> StudentNeeds:
        on_input = self.cfg.cam_layer == "input"
        return StudentNeeds(hook_stage=None if on_input else self.cfg.cam_layer, input_grad=on_input)

    def __call__(self, step: Step) -> torch.Tensor:
        source = step.x_q if self.cfg.cam_layer == "input" else step.out["stages"][self.cfg.cam_layer]
        cam = gradient_cam(source, step.scaler.scale(step.l_moco))  # scale-free: the CAM is sum-normalised
        target = cam_target(cam, tuple(step.out["attn"].shape[-2:]))
        return attention_kl_loss(step.out["attn"], target, self.cfg.iadm_attn)
