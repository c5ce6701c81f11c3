"""The training configuration: one dataclass, loaded from YAML and overridden from the command line.

Precedence (lowest first): dataclass defaults, ``--config FILE.yaml``, ``--set key=value`` pairs,
explicit CLI flags. Unknown keys are refused so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.cliargs import BACKBONE_NAMES
from engine.errors import PPSSLError

METHODS = ("moco", "moco+ais", "moco+iadm", "ppssl")
TEACHER_VIEWS = ("image", "query")


def opt(default: Any = MISSING, *, help: str, cli: bool = False, factory=MISSING):
    """A TrainConfig field: its default, its one-line help (the YAML key's and the flag's documentation) and
    whether ``ppssl train`` has an explicit ``--flag`` for it (every key is also settable with ``--set``)."""
    return field(default=default, default_factory=factory, metadata={"help": help, "cli": cli})


def cli_fields() -> list:
    """The TrainConfig fields that ``ppssl train`` exposes as explicit flags, in declaration order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("cli")]


def field_type(key: str) -> tuple[type, bool]:
    """``(base type, nullable)`` of a TrainConfig key, from its annotation (``str | None`` -> ``(str, True)``)."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return (typing.get_origin(hint) or hint), False


class ConfigError(PPSSLError, ValueError):
    """A training configuration that cannot be used (unknown key, bad value, unreadable YAML)."""


@dataclass
class TrainConfig:
    """Everything one PP-SSL training run depends on (saved with every checkpoint)."""

    # --- data -------------------------------------------------------------------------------------
    dataset: str = opt("cub200", cli=True, help="engine dataset reader name (cub200, cars, aircraft, ..., folder)")
    root: str = opt("", cli=True, help="dataset root directory")
    out: str = opt("runs/ppssl", cli=True, help="output directory: checkpoints, resume state, logs, report")
    input_size: int = opt(224, cli=True, help="training crop side and evaluation centre-crop side")
    eval_size: int = opt(0, help="the saved encoder's input size: what it embeds at for neighbours, the head, "
                                 "evaluation and search (0 = input_size); training views stay at input_size (a "
                                 "network trained on crops retrieves better at a larger test size: FixRes)")
    view: str = opt("full", help="how the saved encoder turns a photo into its square input at evaluation and "
                                   "search time (engine.preprocess.view_transform): center (crop of a short-side "
                                   "resize; the paper's protocol), full (the whole photo resized; engine.encoder.DEFAULT_VIEW) "
                                   "or pad")
    crop_min_scale: float = opt(0.2, help="RandomResizedCrop lower scale bound (MoCo v2: 0.2)")
    color_jitter: float = opt(0.4, help="brightness/contrast/saturation jitter strength (MoCo v2: 0.4)")
    hue_jitter: float = opt(0.1, help="hue jitter (MoCo v2: 0.1)")
    blur_prob: float = opt(0.5, help="probability of the Gaussian blur of a view (MoCo v2: 0.5); at 0.5 about "
                                     "a fifth of the views' CPU time (benchmarks/results/train_data_path.md)")
    workers: int = opt(2, cli=True, help="DataLoader worker processes per rank (on a CPU: threads that make the views)")
    cpu_prefetch: bool = opt(False, help="on a CPU, make the next batch's views while the step runs, in threads at the "
                                         "lowest scheduling priority (they use what the step leaves idle); off: "
                                         "between steps (benchmarks/results/train_data_path.md compares both)")
    check_images: bool = opt(True, help="decode every training image once before training; unreadable ones are "
                                        "skipped and listed in OUT/skipped_images.json instead of failing the run "
                                        "mid-epoch")
    resize_cache: bool = opt(True, help="decode each photo larger than the training crops need once, to a resized "
                                        "copy kept by content hash (engine.resized; camera photos train several "
                                        "times faster); smaller photos are used as they are")
    resize_cache_dir: str | None = opt(None, help="where the resized copies are kept (default $PPSSL_HOME/resized)")
    holdout: str | None = opt(None, help="a validation part carved out of the train split, for choosing settings: a "
                                         "file of image ids (CUB's val_ids.txt) or a per-class fraction such as 0.2; "
                                         "training then uses the rest, and eval_split 'holdout' evaluates on it "
                                         "(engine.datasets.holdout)")
    # --- model ------------------------------------------------------------------------------------
    backbone: str = opt("resnet50", cli=True, help="engine backbone name: " + ", ".join(BACKBONE_NAMES))
    weights: str | None = opt("imagenet", cli=True, help="backbone init: 'imagenet', a local state-dict path, or null "
                                                         "('none' on the command line) for random")
    attn_k: int = opt(64, help="K filters of the attention head's 1x1 conv before the max-out")
    proj_hidden: int = opt(2048, help="hidden width of the MoCo projection head")
    proj_dim: int = opt(128, help="output width of the MoCo projection head")
    # --- method -----------------------------------------------------------------------------------
    neighbour_positives: int = opt(0, help=">0: the key view is, half the time, one of the image's k nearest "
                                           "neighbours under the start encoder (found once before training) instead "
                                           "of the image itself; 0 = MoCo's own pairs")
    neighbour_refresh: int = opt(0, help=">0: find the neighbour positives again with the adapting encoder every "
                                         "N epochs (the start encoder's neighbours are poor where ImageNet is weak); "
                                         "0 = keep the start encoder's")
    neighbour_space: str = opt("whitened", help="where neighbour positives are found: whitened (the start "
                                                "encoder's PCA-whitened feature) | head (the retrieval head fitted "
                                                "on the training photos first, whose neighbours are better)")
    neighbour_mutual: bool = opt(False, help="keep only mutual neighbours as positives (j among i's k nearest and i "
                                             "among j's); an image left with none is paired with itself")
    method: str = opt("ppssl", cli=True, help="moco | moco+ais | moco+iadm | ppssl (= moco + AIS + IADM)")
    queue_size: int = opt(65536, cli=True, help="MoCo negatives kept in the queue (rounded to a multiple of the "
                                                "global batch); 0 = a quarter of the training photos (a queue as "
                                                "long as the collection holds each photo's own earlier keys, and "
                                                "its neighbours', as negatives)")
    moco_momentum: float = opt(0.999, help="EMA factor m of the momentum encoder")
    temperature: float = opt(0.2, help="InfoNCE temperature T (MoCo v2 / LCR: 0.2)")
    shuffle_bn: bool = opt(True, help="multi-process only: shuffle the key batch across ranks before the momentum BN")
    sync_bn: bool = opt(False, help="multi-GPU only: convert the query encoder's BatchNorm to SyncBatchNorm (CUDA)")
    teacher: str = opt("ViT-B-32:openai", cli=True, help="AIS teacher: open_clip 'name:tag', 'name' (random init), or"
                                                         " a teacher dir")
    corpus: str | None = opt(None, cli=True, help="AIS text corpus file (8 lines); default: the built-in corpus for "
                                                  "the dataset")
    corpus_name: str | None = opt(None, help="built-in corpus to use (birds, cars, ...); default: chosen from the "
                                             "dataset")
    teacher_view: str = opt("image", cli=True, help="what the AIS teacher sees: 'image' (each training image through "
                                                    "CLIP's eval preprocessing; embedded once per run, exact cache) "
                                                    "or 'query' (the student's augmented view, every step)")
    ais_tau: float = opt(0.1, cli=True, help="AIS distillation temperature tau on cosine logits")
    lambda_ais: float = opt(1.0, cli=True, help="lambda1, weight of L_AIS")
    lambda_iadm: float = opt(1.0, cli=True, help="lambda2, weight of L_IADM")
    iadm_attn: str = opt("sum", help="how IADM turns A into a distribution: 'sum' (A's own pooling weights; see "
                                     "training.losses.attention_kl_loss) or 'softmax' (shift-invariant: leaves the "
                                     "pooling undetermined)")
    aux_to_backbone: bool = opt(True, help="false: L_AIS and L_IADM reach only the attention head and the AIS "
                                           "projection (their gradient stops at F); the backbone learns from "
                                           "L_moco alone")
    cam_layer: str = opt("input", cli=True, help="IADM CAM source: input (the paper's layer0) or a backbone stage "
                                                 "(layer1..layer4 on every built-in backbone; LCR-style)")
    # --- optimisation -----------------------------------------------------------------------------
    epochs: int = opt(100, cli=True, help="training epochs")
    batch_size: int = opt(128, cli=True, help="images per step per rank")
    lr: float = opt(0.03, cli=True, help="peak SGD learning rate (cosine-decayed per step to 0)")
    warmup_epochs: float = opt(0.0, help="linear warm-up length in epochs before the cosine decay")
    sgd_momentum: float = opt(0.9, help="SGD momentum")
    weight_decay: float = opt(1e-4, help="SGD weight decay")
    frozen_through: str | None = opt(None, help="freeze the backbone's parameters up to the end of this stage "
                                                "(a backbone stage: layer1..layer4 on the built-in backbones; layer3 "
                                                "= all but the last stage): cheaper steps, "
                                                "early features kept as pretrained")
    backbone_lr_mult: float = opt(1.0, help="backbone learning rate = lr x this (heads train at lr)")
    head_warmup_epochs: float = opt(0.0, help="train only the heads (backbone lr 0) for this many epochs first, so "
                                              "that randomly initialised heads do not push noisy gradients into "
                                              "pretrained features (LP-FT)")
    wise_alpha: float = opt(1.0, help="saved checkpoints hold alpha x trained + (1 - alpha) x initial backbone "
                                      "weights (WiSE-FT weight averaging with the pretrained start); 1 = as trained")
    whiten_dim: int = opt(0, help=">0: after the last epoch, fit a PCA whitening of the retrieval feature to this "
                                  "many dims on the (unlabeled) training images and save it in the checkpoint "
                                  "(engine.whitening); 0 = none")
    whiten_power: float = opt(0.5, help="whitening strength: each principal axis divided by sigma ** power (1 = full)")
    whiten_neighbours: int = opt(0, help=">0: refine the whitening into a retrieval head with each training photo's k"
                                         " nearest neighbours as positives (engine.whitening.fit_neighbour_head); 0 ="
                                         " plain PCA whitening")
    freeze_bn: bool = opt(False, help="keep the backbone's BatchNorm running statistics fixed (eval mode) while "
                                      "training; for short fine-tunes of a pretrained backbone, whose statistics "
                                      "would drift to the augmented views")
    max_steps_per_epoch: int | None = opt(None, help="cap steps per epoch (quick runs); null = full epoch")
    amp: bool = opt(True, help="mixed precision (fp16 autocast + GradScaler) on CUDA; ignored on CPU")
    device: str | None = opt(None, cli=True, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    threads: int = opt(0, cli=True, help="torch CPU threads in the training process (0 = torch's default; 1 is "
                                         "fastest on a busy CPU)")
    seed: int = opt(0, cli=True, help="seeds model init, data order and augmentations (a function of seed, epoch, "
                                      "index)")
    # --- evaluation and logging -------------------------------------------------------------------
    eval_every: int = opt(1, cli=True, help="retrieval evaluation on the test split every N epochs (0 = only at the "
                                            "end)")
    eval_split: str = opt("test", help="split used for the retrieval evaluation (leave-one-out): train, test, all, "
                                       "holdout (the part named by `holdout`, never trained on), or none (unlabeled "
                                       "photos: no evaluation)")
    eval_batch_size: int = opt(128, help="images per forward pass during evaluation")
    baselines: bool = opt(True, help="before training, score the start encoder and the start encoder + a retrieval "
                                     "head fitted on the training photos (no training) on the evaluation split, so "
                                     "the report says whether training paid (report.json 'baselines', 'verdict')")
    log_every: int = opt(10, help="steps between CSV / TensorBoard rows")
    tensorboard: bool = opt(True, help="write TensorBoard event files under OUT/tb")
    progress: bool = opt(True, help="show tqdm progress bars")
    extra: dict = opt(factory=dict, help="free-form notes recorded with the run")

    # ---------------------------------------------------------------------------------------------
    @property
    def use_ais(self) -> bool:
        return self.method in ("moco+ais", "ppssl")

    @property
    def use_iadm(self) -> bool:
        return self.method in ("moco+iadm", "ppssl")

    @property
    def pooling(self) -> str:
        """Retrieval pooling of the saved encoder: the attention head is trained only by AIS/IADM."""
        return "attention" if (self.use_ais or self.use_iadm) else "gap"

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.cam_layer, str) or not self.cam_layer:  # a stage name: checked on the backbone
            raise ConfigError(f"cam_layer must be 'input' or a backbone stage name, got {self.cam_layer!r}")
        for name in ("input_size", "epochs", "batch_size", "proj_dim", "proj_hidden", "attn_k"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.queue_size < 0 or self.eval_size < 0:
            raise ConfigError("queue_size and eval_size must be >= 0 (0: automatic)")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (BatchNorm in the projection head)")
        if not 0.0 <= self.moco_momentum < 1.0:
            raise ConfigError(f"moco_momentum must be in [0, 1), got {self.moco_momentum}")
        for name in ("temperature", "ais_tau", "lr"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 <= self.blur_prob <= 1.0:
            raise ConfigError(f"blur_prob must be in [0, 1], got {self.blur_prob}")
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if self.iadm_attn not in ("sum", "softmax"):
            raise ConfigError(f"iadm_attn must be sum or softmax, got {self.iadm_attn!r}")
        if self.teacher_view not in TEACHER_VIEWS:
            raise ConfigError(f"teacher_view must be one of {', '.join(TEACHER_VIEWS)}, got {self.teacher_view!r}")
        if self.view not in ("center", "full", "pad"):
            raise ConfigError(f"view must be center, full or pad, got {self.view!r}")
        if self.eval_split not in ("train", "test", "all", "holdout", "none"):
            raise ConfigError(f"eval_split must be train, test, all, holdout or none, got {self.eval_split!r}")
        if self.eval_split == "holdout" and not self.holdout:
            raise ConfigError("eval_split 'holdout' needs holdout (an ids file or a fraction)")
        if self.frozen_through is not None and (not isinstance(self.frozen_through, str) or not self.frozen_through):
            raise ConfigError(f"frozen_through must be a backbone stage name, got {self.frozen_through!r}")
        if not 0.0 < self.wise_alpha <= 1.0:
            raise ConfigError(f"wise_alpha must be in (0, 1], got {self.wise_alpha}")
        if self.neighbour_positives < 0 or self.neighbour_refresh < 0:
            raise ConfigError("neighbour_positives and neighbour_refresh must be >= 0")
        if self.neighbour_space not in ("whitened", "head"):
            raise ConfigError(f"neighbour_space must be whitened or head, got {self.neighbour_space!r}")
        if self.whiten_dim < 0 or not 0 <= self.whiten_power <= 1 or self.whiten_neighbours < 0:
            raise ConfigError("whiten_dim and whiten_neighbours must be >= 0 and whiten_power in [0, 1]")
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(cls, k, v))
        return cfg


def _coerce(cls, key: str, value: Any) -> Any:
    """Convert a YAML / ``--set`` value to the field's declared type."""
    base, nullable = field_type(key)
    if value is None:
        if not nullable and key != "extra":
            raise ConfigError(f"{key} cannot be null")
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot use {value!r} as {base.__name__}") from None
    return value


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping of config keys (safe loader only)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return data


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["lr=0.1", "weights=null"]`` -> ``{"lr": "0.1", "weights": None}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def build_config(yaml_path: str | Path | None = None, overrides: dict | None = None,
                 flags: dict | None = None) -> TrainConfig:
    """Defaults < YAML file < ``overrides`` (``--set``) < ``flags`` (explicit CLI options; None = unset)."""
    merged: dict = {}
    if yaml_path:
        merged.update(load_yaml(yaml_path))
    merged.update(overrides or {})
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    return TrainConfig.from_dict(merged).validate()


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from engine.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
