"""The PP-SSL training loop: MoCo v2 + AIS + IADM, checkpoints every epoch, exact resume, logs, evaluation.

Output directory layout::

    OUT/config.yaml       the resolved TrainConfig
    OUT/last/             engine encoder checkpoint after the latest epoch (query encoder + attention head)
    OUT/best/             the checkpoint with the best test rank-1 so far (chosen ON THE TEST SPLIT)
    OUT/resume/           everything needed to continue (safetensors + JSON, no pickle)
    OUT/teacher_cache/    the AIS teacher's embedding of every training image (``teacher_view: image``)
    OUT/train_log.csv     one row per ``log_every`` steps: each loss term, lr, img/s
    OUT/eval_log.csv      one row per evaluation: rank-1/5/10, mAP, MAP@R for both poolings
    OUT/tb/               TensorBoard events
    OUT/report.json       final figures, last epoch and best epoch labelled separately
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from engine.atomic import atomic_write_json
from engine.batches import thread_batches
from engine.checkpoint import save_checkpoint
from engine.embed import autocast_for
from engine.encoder import create_encoder
from training import ddp
from training.augment import EpochSampler, TwoViewDataset, collate_views, moco_v2_transform, sample_seed
from training.config import ConfigError, TrainConfig, save_yaml
from training.losses import infonce_loss
from training.moco import MomentumEncoder, Student, unwrap
from training.queue import MoCoQueue
from training.runlog import RunLog
from training.state import Checkpointer, ResumeError
from training.terms import LOSS_TERMS, Step, build_terms, merged_needs

#: train_log.csv columns: the total, the contrastive loss and every registered loss term (0 when it is off)
TRAIN_FIELDS = ["epoch", "step", "loss", "loss_moco", *(f"loss_{name}" for name in LOSS_TERMS), "lr", "img_per_s"]


@dataclass
class StepResult:
    loss: float  # the total, Eq. 9
    loss_moco: float
    terms: dict[str, float]  # each registered loss term's unweighted value (0 when it is off)

    def meters(self) -> dict[str, float]:
        """The train_log.csv loss columns."""
        return {"loss": self.loss, "loss_moco": self.loss_moco, **{f"loss_{n}": v for n, v in self.terms.items()}}


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0, as a pure function of the step."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Args:
        cfg: the configuration.
        resume: continue from ``OUT/resume`` (refused if the saved config differs in a result-changing key).
        teacher: an already-loaded teacher (tests); default ``load_teacher(cfg.teacher)`` when AIS is on.
        train_dataset / eval_dataset: engine datasets overriding ``build_dataset`` (tests); the train set
            must yield PIL images (no transform), the eval set tensors.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, teacher=None, train_dataset=None,
                 eval_dataset=None):
        self.cfg = cfg.validate()  # process-wide settings (engine.runtime) are applied by entry points, not here
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.resume = resume
        self.device = ddp.init_from_env(cfg.device)
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.out = Path(cfg.out)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        torch.manual_seed(cfg.seed)
        # the encoder's own input size is the one it embeds at (eval_size); training views are input_size crops
        self.encoder = create_encoder(cfg.backbone, cfg.weights, pooling=cfg.pooling, attn_k=cfg.attn_k,
                                      input_size=cfg.eval_size or cfg.input_size, view=cfg.view)
        self.initial_backbone = {k: v.detach().clone() for k, v in self.encoder.backbone.state_dict().items()} \
            if cfg.wise_alpha < 1 else None
        stages = self.encoder.backbone.stages  # stage names are the backbone's own (engine.backbones)
        for key, extra in (("cam_layer", ("input",)), ("frozen_through", (None,))):
            name = getattr(cfg, key)
            if name not in extra and name not in stages:
                raise ConfigError(f"{key}: backbone {cfg.backbone} has no stage {name!r} (stages: "
                                  f"{', '.join(stages)}{'; or input' if key == 'cam_layer' else ''})")
        if cfg.frozen_through:
            freeze_through(self.encoder.backbone, cfg.frozen_through)
        self.whitening: tuple[torch.Tensor, torch.Tensor] | None = None  # fitted after the last epoch
        # the weighted terms of Eq. 9 beyond L_moco (training/terms.py), and what they need of the student
        self.terms = build_terms(cfg, self.device, teacher=teacher,
                                 input_norm=(self.encoder.config.mean, self.encoder.config.std))
        self.needs = merged_needs(self.terms)
        student = Student(self.encoder, cfg.proj_hidden, cfg.proj_dim, ais_dim=self.needs.ais_dim,
                          hook_stage=self.needs.hook_stage, aux_to_backbone=cfg.aux_to_backbone)
        self.momentum = MomentumEncoder(student).to(self.device)
        student.to(self.device, memory_format=torch.channels_last)  # 1.4-2x faster convs on CPU and GPU
        self.momentum.to(memory_format=torch.channels_last)
        if self.world > 1:
            if cfg.sync_bn and self.device.type == "cuda":
                student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            student = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not self.terms)
        self.student = student
        self.optimizer = torch.optim.SGD(param_groups(unwrap(student), cfg.backbone_lr_mult), lr=cfg.lr,
                                         momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._build_data(train_dataset, eval_dataset)
        qgen = torch.Generator().manual_seed(sample_seed(cfg.seed, -1, -3))
        self.queue = MoCoQueue(cfg.proj_dim, self.queue_size(), generator=qgen).to(self.device)
        self.epoch, self.step = 0, 0
        self.baselines: dict | None = None
        self.history: list[dict] = []
        self.best: dict | None = None
        # what resumes a run (learnable + momentum-updated state) and what it tells the outside
        self.checkpoints = Checkpointer(self.out / "resume", {"student": unwrap(self.student),
                                                             "momentum": self.momentum, "queue": self.queue},
                                        self.optimizer, self.scaler if self.amp else None)
        self.log = RunLog(self.out, TRAIN_FIELDS, cfg.tensorboard)

    # --- data -------------------------------------------------------------------------------------
    def _build_data(self, train_dataset, eval_dataset) -> None:
        from engine.datasets import build_dataset

        cfg = self.cfg
        base = train_dataset if train_dataset is not None else build_dataset(cfg.dataset, cfg.root, split="train")
        if (cfg.check_images or cfg.resize_cache) and hasattr(base, "samples"):  # every rank decides alike
            base = self._skip_unreadable(base)
        self._held_out = None
        self._start_feats = None
        if cfg.holdout:
            from engine.datasets.holdout import split_holdout

            base, self._held_out = split_holdout(base, cfg.holdout)
        enc_cfg = self.encoder.config
        tf = moco_v2_transform(cfg.input_size, enc_cfg.mean, enc_cfg.std, min_scale=cfg.crop_min_scale,
                               jitter=cfg.color_jitter, hue=cfg.hue_jitter, blur=cfg.blur_prob)
        self.train_set = TwoViewDataset(base, tf, seed=cfg.seed,
                                        partners=self._neighbours(base) if cfg.neighbour_positives else None)
        self.sampler = EpochSampler(len(base), cfg.batch_size, cfg.seed, self.rank, self.world,
                                    max_steps=cfg.max_steps_per_epoch)
        if self.sampler.steps == 0:
            raise ConfigError(f"{len(base)} training images give no full batch of {cfg.batch_size} x "
                              f"{self.world} rank(s); lower batch_size")
        self.steps_per_epoch = self.sampler.steps
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.head_warmup_steps = int(round(cfg.head_warmup_epochs * self.steps_per_epoch))
        self._eval_set = eval_dataset
        self._eval_built = eval_dataset is not None

    def queue_size(self) -> int:
        """``queue_size``, or (0) a quarter of the training photos, as a multiple of the global batch."""
        cfg = self.cfg
        step = cfg.batch_size * self.world
        want = cfg.queue_size or len(self.train_set.base) // 4
        return max(step, want // step * step)

    def _neighbours(self, base) -> torch.Tensor:
        """Each training image's ``neighbour_positives`` nearest neighbours under the start encoder (its
        retrieval feature, PCA-whitened as the retrieval head's start, or through a retrieval head fitted on
        the training photos: ``neighbour_space``), found once; deterministic."""
        from engine.embed import extract_features
        from engine.whitening import neighbour_indices

        feats, _ = extract_features(self.encoder, _Transformed(base, self.encoder.transform()),
                                    batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers,
                                    device=self.device, amp=self.amp, progress=self.cfg.progress,
                                    desc="finding neighbours")
        if self._start_feats is None and not getattr(self, "step", 0):
            self._start_feats = feats  # the start encoder's training features: the head-alone baseline reuses them
        head = None
        if self.cfg.neighbour_space == "head":
            from engine.whitening import fit_neighbour_head

            cfg, n = self.cfg, len(feats)
            head = fit_neighbour_head(feats, min(cfg.whiten_dim or 128, n - 2, feats.shape[1]),
                                      min(cfg.whiten_neighbours or 10, n - 1), seed=cfg.seed)
        nn = neighbour_indices(feats, min(self.cfg.neighbour_positives, len(feats) - 1), head=head)
        return mutual_only(nn) if self.cfg.neighbour_mutual else nn

    def _skip_unreadable(self, base):
        """Drop images that cannot be decoded, with a report (stderr line + OUT/skipped_images.json)."""
        import sys

        from engine.datasets.holdout import subset
        from engine.imageio import find_unreadable

        paths = [p for p, _ in base.samples]
        show = self.cfg.progress and ddp.is_main()
        if self.cfg.resize_cache:  # the check pass also makes the resized copies of large photos
            from engine.resized import copy_side, prepare

            side = copy_side(self.cfg.input_size, self.cfg.crop_min_scale, self.cfg.eval_size or self.cfg.input_size)
            use, bad = prepare(paths, side, self.cfg.resize_cache_dir, workers=2, progress=show)
            if use != paths:
                base = subset(base, list(range(len(base))))
                base.decode_from = use
        else:
            bad = find_unreadable(paths, workers=max(1, self.cfg.workers), progress=show)
        if not bad:
            return base
        if ddp.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "skipped_images.json", [{"path": p, "reason": r} for p, r in bad])
            print(f"ppssl train: skipping {len(bad)} unreadable image(s) of {len(base)} "
                  f"(listed in {self.out / 'skipped_images.json'}); first: {bad[0][1]}", file=sys.stderr)
        skip = {p for p, _ in bad}
        return subset(base, [i for i, p in enumerate(paths) if p not in skip])

    def eval_set(self):
        if not self._eval_built:
            from engine.datasets import build_dataset

            if self.cfg.eval_split == "holdout":
                from engine.datasets.holdout import subset

                held = self._held_out
                self._eval_set = subset(held, list(range(len(held))))
                self._eval_set.transform = self.encoder.transform()
            else:
                self._eval_set = build_dataset(self.cfg.dataset, self.cfg.root, split=self.cfg.eval_split,
                                               transform=self.encoder.transform())
            self._eval_built = True
        return self._eval_set

    def loader(self, epoch: int):
        """The epoch's batches. On a GPU, DataLoader worker processes prepare them while the GPU trains; on a
        CPU, ``workers`` threads of this process prepare each batch in turn between steps: the step already uses
        every core, and a worker process running beside it preempts the step's threads (1.04 vs 0.81 s per
        step on 2 cores: benchmarks/results/train_data_path.md), as in the build (docs/performance.md §1)."""
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        if self.device.type == "cpu":
            return thread_batches(self.train_set.__getitem__, list(self.sampler), self.cfg.batch_size,
                                  self.cfg.workers, collate_views, drop_last=True, prefetch=self.cfg.cpu_prefetch,
                                  name="ppssl-views")
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.workers, drop_last=True,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def prepare_terms(self) -> None:
        """Each loss term's once-per-run preparation (AIS, ``teacher_view: image``: the teacher's logits of every
        training image)."""
        for term in self.terms.values():
            term.prepare(self)

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self, x_q: torch.Tensor, x_k: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One SGD step on a batch of two views (Eq. 9: L = L_moco + sum of lambda x term); updates the momentum
        encoder and the queue. ``index`` (the images' dataset indices) is handed to the loss terms."""
        cfg, dev = self.cfg, self.device
        x_q = x_q.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x_k = x_k.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.needs.input_grad:
            x_q.requires_grad_(True)
        with autocast_for(dev, self.amp):
            out = self.student(x_q)
        k = self._keys(x_k)
        l_moco = infonce_loss(out["q"].float(), k, self.queue.keys, cfg.temperature)
        step = Step(x_q, out, index, l_moco, self.scaler, self.amp)
        parts = {name: term(step) for name, term in self.terms.items()}
        loss = l_moco + sum(term.weight * parts[name] for name, term in self.terms.items())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.queue.enqueue(k)
        return StepResult(float(loss.detach()), float(l_moco.detach()),
                          {n: float(parts[n].detach()) if n in parts else 0.0 for n in LOSS_TERMS})

    @torch.no_grad()
    def _keys(self, x_k: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's keys of the key views, after its EMA update (batch-shuffled across ranks for
        the momentum BatchNorm, as MoCo does)."""
        cfg = self.cfg
        self.momentum.update(unwrap(self.student), cfg.moco_momentum)
        shuffle = self.world > 1 and cfg.shuffle_bn
        gen = torch.Generator().manual_seed(sample_seed(cfg.seed, self.step, -2)) if shuffle else None
        x_k_in, unshuffle = ddp.batch_shuffle(x_k, gen) if shuffle else (x_k, None)
        with autocast_for(self.device, self.amp):
            k = self.momentum(x_k_in)
        return ddp.batch_unshuffle(k.float(), unshuffle)

    # --- state ------------------------------------------------------------------------------------
    def _save(self) -> None:
        """Per-epoch checkpoint (engine encoder) and resume state; rank 0 writes, others wait."""
        if ddp.is_main():
            self._save_encoder(self.out / "last", {"epoch": self.epoch, "step": self.step})
            self.checkpoints.save({"epoch": self.epoch, "step": self.step, "config": self.cfg.to_dict(),
                                   "history": self.history, "best": self.best, "world_size": self.world})
        ddp.barrier()

    def export_encoder(self):
        """The encoder that checkpoints hold and evaluation measures: the student's, or with ``wise_alpha < 1``
        a copy interpolated towards the initial backbone (training continues from the un-averaged weights)."""
        enc = unwrap(self.student).encoder
        enc.config.pooling = self.cfg.pooling
        if self.initial_backbone is not None or self.whitening is not None:
            import copy

            enc = copy.deepcopy(enc)
        if self.initial_backbone is not None:
            interpolate_(enc.backbone, self.initial_backbone, self.cfg.wise_alpha)
        if self.whitening is not None:
            enc.set_whitening(*self.whitening)
        return enc

    def fit_whitening(self) -> None:
        """``whiten_dim > 0``: fit the PCA whitening on the training images (eval view, no labels) with the
        final encoder; every later export carries it."""
        if not self.cfg.whiten_dim or self.whitening is not None or not ddp.is_main():
            return
        from engine.embed import extract_features
        from engine.whitening import fit_neighbour_head, fit_whitening

        enc = self.export_encoder()
        feats, _ = extract_features(enc, _Transformed(self.train_set.base, enc.transform()),
                                    batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers,
                                    device=self.device, amp=self.amp, progress=self.cfg.progress,
                                    desc="fitting whitening")
        dim = min(self.cfg.whiten_dim, len(feats) - 1)
        if self.cfg.whiten_neighbours:
            self.whitening = fit_neighbour_head(feats, dim, min(self.cfg.whiten_neighbours, len(feats) - 1),
                                                seed=self.cfg.seed, progress=self.cfg.progress)
        else:
            self.whitening = fit_whitening(feats, dim, self.cfg.whiten_power)

    def _save_encoder(self, path: Path, extra: dict) -> str:
        enc = self.export_encoder()
        info = {"method": self.cfg.method, "corpus": None, "teacher": None}
        for term in self.terms.values():
            info.update(term.record())
        info.update(extra)
        return save_checkpoint(enc, path, training=self.cfg.to_dict(), extra=info)

    def _load(self) -> None:
        scalars = self.checkpoints.load(self.cfg.to_dict(), self.world, self.device)
        self.epoch, self.step = int(scalars["epoch"]), int(scalars["step"])
        self.history, self.best = list(scalars.get("history", [])), scalars.get("best")

    # --- logging ----------------------------------------------------------------------------------
    def _progress(self, phase: str, **extra) -> None:
        """``OUT/progress.json`` (training.runlog.RunLog.progress), from rank 0."""
        if ddp.is_main():
            self.log.progress(phase, epoch=self.epoch, epochs=self.cfg.epochs, step=self.step,
                              total_steps=getattr(self, "total_steps", None), **extra)

    def open_logs(self) -> None:
        """Open train_log.csv / eval_log.csv (and TensorBoard) under OUT, keeping the rows of a resumed run."""
        self.log.open((self.step, self.epoch) if self.resume else None)

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> dict:
        """Train to ``cfg.epochs`` (or stop early after ``stop_after_epochs`` more epochs, as if killed).

        Returns the final report (also written to ``OUT/report.json`` when training completes).
        """
        cfg = self.cfg
        if self.resume:
            self._load()
        elif self.checkpoints.exists():
            raise ResumeError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if ddp.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.out / "config.yaml")
            self.open_logs()
        self.prepare_terms()
        self._progress("scoring the start")
        self.baselines = self._baselines()
        done_now = 0
        while self.epoch < cfg.epochs:
            if stop_after_epochs is not None and done_now >= stop_after_epochs:
                return {"stopped_at_epoch": self.epoch}
            self.train_epoch(self.epoch)
            self.epoch += 1
            done_now += 1
            due = cfg.eval_every > 0 and (self.epoch % cfg.eval_every == 0)
            if self.epoch == cfg.epochs:
                self._progress("fitting the retrieval head")
                self.fit_whitening()
            if (due or self.epoch == cfg.epochs) and cfg.eval_split != "none":
                self._progress("evaluating")
                self._evaluate(self.epoch)
            self._save()
        report = self._report()
        if ddp.is_main():
            atomic_write_json(self.out / "report.json", report)
            self._progress("done")
            if self.log.tb:
                self.log.tb.close()
        return report

    def set_train_mode(self) -> None:
        """Student and momentum encoder in training mode, BatchNorm statistics frozen when ``freeze_bn``: the state
        every training step runs in (a step with live BatchNorm statistics is also much slower on a CPU)."""
        self.student.train()
        self.momentum.train()
        if self.cfg.freeze_bn:
            freeze_batchnorm(unwrap(self.student).encoder.backbone)
            freeze_batchnorm(self.momentum.backbone)

    def train_epoch(self, epoch: int) -> None:
        """One epoch of :meth:`train_step` over :meth:`loader`, logging every ``log_every`` steps (after
        :meth:`open_logs`; :meth:`fit` runs the whole schedule)."""
        cfg = self.cfg
        if cfg.neighbour_positives and cfg.neighbour_refresh and epoch > 0 and epoch % cfg.neighbour_refresh == 0:
            self._progress("finding neighbours again")
            self.train_set.partners = self._neighbours(self.train_set.base)  # a function of the weights: resumable
        self.set_train_mode()
        loader = self.loader(epoch)
        meters = {k: 0.0 for k in TRAIN_FIELDS[2:-2]}
        count, bad, t0 = 0, 0, time.perf_counter()
        t_epoch, steps_at_start = time.perf_counter(), self.step
        bar = tqdm(loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and ddp.is_main()), unit="step", leave=False)
        for (x_q, x_k), idx in bar:
            lr = lr_at(self.step, self.total_steps, cfg.lr, self.warmup_steps)
            heads_only = self.step < self.head_warmup_steps
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0 if (heads_only and group.get("backbone")) else lr * group["lr_scale"]
            res = self.train_step(x_q, x_k, idx)
            if math.isfinite(res.loss):
                bad = 0
            else:  # with AMP, GradScaler skips such a step and lowers its scale; persistent NaN is an error
                bad += 1
                if not self.amp or bad > 20:
                    raise FloatingPointError(f"loss became {res.loss} at step {self.step}; lower lr or check the data")
            self.step += 1
            count += 1
            for k, v in res.meters().items():
                meters[k] += v
            bar.set_postfix(loss=f"{res.loss:.3f}", lr=f"{lr:.4f}")
            done = self.step - steps_at_start
            rate = done / max(time.perf_counter() - t_epoch, 1e-9)  # steps/s over this epoch so far
            self._progress("training", img_per_s=round(rate * cfg.batch_size * self.world, 2),
                           eta_s=round((self.total_steps - self.step) / max(rate, 1e-9), 1), loss=res.loss)
            if count % cfg.log_every == 0 or count == self.steps_per_epoch:
                elapsed = time.perf_counter() - t0
                row = {"epoch": epoch + 1, "step": self.step, "lr": lr,
                       "img_per_s": round(count * cfg.batch_size * self.world / max(elapsed, 1e-9), 2)}
                row.update({k: ddp.all_reduce_mean(v / count, self.device) for k, v in meters.items()})
                if ddp.is_main():
                    self.log.train(row)
                meters = {k: 0.0 for k in meters}
                count, t0 = 0, time.perf_counter()
        bar.close()

    def _evaluate(self, epoch: int) -> None:
        if ddp.is_main():
            from training.evaluate import retrieval_eval

            metrics = retrieval_eval(self.export_encoder(), self.eval_set(), self.device,
                                     batch_size=self.cfg.eval_batch_size, amp=self.amp,
                                     num_workers=self.cfg.workers, progress=self.cfg.progress)
            entry = {"epoch": epoch, "metrics": metrics}
            self.history.append(entry)
            self.log.eval(epoch, metrics)
            key = metrics[self.cfg.pooling]["rank-1"]
            if self.best is None or key > self.best["metrics"][self.cfg.pooling]["rank-1"]:
                self.best = entry
                self._save_encoder(self.out / "best", {"epoch": epoch, "step": self.step, "metrics": metrics})
        ddp.barrier()

    def _baselines(self) -> dict | None:
        """The start encoder, and the start encoder + a retrieval head fitted on the training photos, scored
        on the evaluation split before the first step (``OUT/baselines.json``, kept across a resume)."""
        cfg = self.cfg
        if not (cfg.baselines and cfg.eval_split != "none" and ddp.is_main()):
            return None
        path = self.out / "baselines.json"
        if path.is_file() and self.resume:
            import json

            return json.loads(path.read_text())
        if self.step > 0:  # resumed past the start without them: the start encoder is gone
            return None
        import copy

        from engine.embed import extract_features
        from engine.whitening import fit_neighbour_head, fit_whitening
        from training.evaluate import retrieval_eval

        start = copy.deepcopy(unwrap(self.student).encoder).eval()
        start.config.pooling = cfg.pooling
        out = {"start": retrieval_eval(start, self.eval_set(), self.device, batch_size=cfg.eval_batch_size,
                                       amp=self.amp, num_workers=cfg.workers, progress=cfg.progress)}
        if cfg.whiten_dim:
            feats = self._start_feats
            if feats is None:
                feats, _ = extract_features(start, _Transformed(self.train_set.base, start.transform()),
                                            batch_size=cfg.eval_batch_size, num_workers=cfg.workers,
                                            device=self.device, amp=self.amp, progress=cfg.progress,
                                            desc="baseline features")
            dim = min(cfg.whiten_dim, len(feats) - 1)
            head = (fit_neighbour_head(feats, dim, min(cfg.whiten_neighbours, len(feats) - 1), seed=cfg.seed)
                    if cfg.whiten_neighbours else fit_whitening(feats, dim, cfg.whiten_power))
            start.set_whitening(*head)
            out["start+head"] = retrieval_eval(start, self.eval_set(), self.device, batch_size=cfg.eval_batch_size,
                                               amp=self.amp, num_workers=cfg.workers, progress=cfg.progress)
        self._start_feats = None
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, out)
        return out

    def _verdict(self, last: dict | None) -> dict | None:
        """Did training pay? The trained encoder against the better baseline (the head alone when there is one)."""
        base = self.baselines or {}
        key = "start+head" if "start+head" in base else "start"
        if not last or key not in base:
            return None
        p = self.cfg.pooling
        trained, ref = last["metrics"][p], base[key][p]
        d_map, d_r1 = trained["mAP"] - ref["mAP"], trained["rank-1"] - ref["rank-1"]
        won = d_map > 0
        against = "the head alone (no training)" if key == "start+head" else "the start encoder"
        text = (f"training added {100 * d_map:+.1f} mAP and {100 * d_r1:+.1f} rank-1 points over {against}"
                if won else
                f"training did not pay: {100 * d_map:+.1f} mAP and {100 * d_r1:+.1f} rank-1 points against {against}"
                + (" — use the adapted index (ppssl index build adapts by default)" if key == "start+head" else ""))
        return {"trained_won": bool(won), "against": key, "delta_mAP": d_map, "delta_rank-1": d_r1, "text": text}

    def _report(self) -> dict:
        cfg = self.cfg
        last = self.history[-1] if self.history else None
        return {
            "method": cfg.method, "dataset": cfg.dataset, "root": cfg.root, "backbone": cfg.backbone,
            "epochs": cfg.epochs, "steps": self.step, "pooling": cfg.pooling, "eval_split": cfg.eval_split,
            "baselines": self.baselines,
            "last": last,
            "verdict": self._verdict(last),
            "best": self.best,
            "note": (f"'last' = after the final epoch ({cfg.epochs}); 'best' = the epoch with the highest "
                     f"{cfg.eval_split} rank-1 ({cfg.pooling} pooling) among evaluated epochs, i.e. selected on the "
                     f"{cfg.eval_split} split itself (the paper's protocol; optimistic)."),
            "checkpoints": {"last": str(self.out / "last"), "best": str(self.out / "best")},
        }


def mutual_only(nn: torch.Tensor) -> list[list[int]]:
    """Per image, the neighbours ``j`` of ``nn`` (N, k) whose own row holds the image too (mutual k-NN)."""
    rows = nn.tolist()
    sets = [set(r) for r in rows]
    return [[j for j in r if i in sets[j]] for i, r in enumerate(rows)]


class _Transformed(torch.utils.data.Dataset):
    """``(transform(image), label, path)`` items of a dataset that yields PIL images."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, *rest = self.base[i]
        return (self.transform(image), *rest)


def freeze_through(backbone, stage: str) -> None:
    """``requires_grad=False`` for every backbone parameter registered up to the last one of ``stage``.

    Parameters are registered in forward order by every backbone here, so this freezes the early layers.
    Their BatchNorm statistics are frozen separately (``freeze_bn``).
    """
    stages = backbone.stages
    if stage not in stages:
        raise ConfigError(f"backbone has no stage {stage!r} (has {', '.join(stages)})")
    last = list(stages[stage].parameters())[-1]
    for p in backbone.parameters():
        p.requires_grad_(False)
        if p is last:
            break


def param_groups(student, backbone_lr_mult: float) -> list[dict]:
    """SGD groups: trainable backbone parameters at ``lr x backbone_lr_mult``, heads at ``lr``.

    Each group carries ``lr_scale``, which the schedule multiplies in at every step.
    """
    backbone = {id(p) for p in student.encoder.backbone.parameters()}
    params = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in backbone], "lr_scale": backbone_lr_mult, "backbone": True},
              {"params": [p for p in params if id(p) not in backbone], "lr_scale": 1.0, "backbone": False}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def interpolate_(module: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """``w <- alpha w + (1 - alpha) w_start`` for every floating tensor of ``module``'s state (WiSE-FT)."""
    for name, t in module.state_dict().items():
        if t.is_floating_point():
            t.mul_(alpha).add_(start[name].to(t.device, t.dtype), alpha=1.0 - alpha)


#: every BatchNorm type (the public classes; torch's common base class is private)
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: running statistics are used, not updated.

    Their affine weights stay trainable. Called after ``.train()`` at the start of each epoch.
    """
    for m in module.modules():
        if isinstance(m, BATCH_NORMS):
            m.eval()


def train(cfg: TrainConfig, resume: bool = False, **kw) -> dict:
    """Run one training job (the ``ppssl train`` entry point)."""
    try:
        return Trainer(cfg, resume=resume, **kw).fit()
    finally:
        ddp.cleanup()
