"""Resume state: tensors in ``state.safetensors``, scalars in ``state.json``, written atomically together.

Nothing is pickled. The optimizer's per-parameter tensors are flattened to ``optim.<index>.<key>``,
its hyper-parameters go to JSON; RNG states are stored as uint8 tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.atomic import atomic_dir
from engine.errors import PPSSLError

TENSORS = "state.safetensors"
SCALARS = "state.json"
FORMAT = "ppssl-train-state"


class ResumeError(PPSSLError, RuntimeError):
    """A resume state that is missing, unreadable, or belongs to a different configuration."""


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    for name, val in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = st
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.random.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    """Write the resume directory atomically (the previous one stays valid until the rename)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_dir(path) as tmp:
        save_file(flat, str(tmp / TENSORS), metadata={"format": FORMAT})
        (tmp / SCALARS).write_text(json.dumps({"format": FORMAT, **scalars}, indent=2, sort_keys=True) + "\n")


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / SCALARS).is_file() or not (path / TENSORS).is_file():
        raise ResumeError(f"{path}: no resume state ({SCALARS} + {TENSORS}) to continue from")
    try:
        scalars = json.loads((path / SCALARS).read_text(encoding="utf-8"))
        tensors = load_file(str(path / TENSORS))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
        raise ResumeError(f"{path}: unreadable resume state ({exc})") from None
    if scalars.get("format") != FORMAT:
        raise ResumeError(f"{path / SCALARS}: not a {FORMAT} file")
    return tensors, scalars


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


#: config keys that may differ between a run and its resumption (they do not change the result)
RESUME_FREE = {"out", "workers", "threads", "device", "progress", "tensorboard", "log_every", "eval_batch_size", "extra"}


class Checkpointer:
    """A run's resume state in one directory: the named modules (what is learnable and what is momentum-updated:
    student, momentum encoder, queue), the optimizer, the AMP scaler and the RNG states, with the run's scalars.

    A resume is refused when the saved configuration differs in a key that changes the result (anything but
    :data:`RESUME_FREE`) or when the number of processes changed.
    """

    def __init__(self, path: str | Path, modules: dict, optimizer: torch.optim.Optimizer, scaler=None):
        self.path, self.modules, self.optimizer, self.scaler = Path(path), modules, optimizer, scaler

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, scalars: dict) -> None:
        """Write everything atomically; ``scalars`` (epoch, step, config, history, ...) go to JSON."""
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self.modules.items():
            tensors.update(prefixed(name, module.state_dict()))
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer)
        tensors.update(opt_tensors)
        tensors.update(rng_tensors())
        save_state(self.path, tensors, {**scalars, "optimizer": opt_meta,
                                        "scaler": self.scaler.state_dict() if self.scaler is not None else {}})

    def load(self, config: dict, world_size: int, device) -> dict:
        """Restore the modules, optimizer, scaler and RNGs; return the saved scalars."""
        tensors, scalars = load_state(self.path)
        saved = scalars.get("config", {})
        diff = sorted(k for k in set(saved) | set(config) if k not in RESUME_FREE and saved.get(k) != config.get(k))
        if diff:
            raise ResumeError(f"{self.path} was written with a different configuration "
                              f"({', '.join(f'{k}: {saved.get(k)!r} -> {config.get(k)!r}' for k in diff)})")
        if scalars.get("world_size", 1) != world_size:
            raise ResumeError(f"resume state was written by {scalars.get('world_size')} process(es), now {world_size}")
        for name, module in self.modules.items():
            module.load_state_dict(unprefixed(name, tensors))
        restore_optimizer(self.optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                          scalars["optimizer"])
        if self.scaler is not None and scalars.get("scaler"):
            self.scaler.load_state_dict(scalars["scaler"])
        restore_rng(tensors)
        return scalars
