"""What a run tells the outside while it trains: ``train_log.csv``, ``eval_log.csv``, TensorBoard events and
``progress.json`` (the app's training job and a terminal watch the last one). Rank 0 writes; a resumed run
keeps exactly the rows of the state it resumed from."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from engine.atomic import atomic_write_json


class RunLog:
    """The logs of one run directory.

    Args:
        out: the run directory.
        train_fields: the columns of ``train_log.csv``.
        tensorboard: also write TensorBoard events under ``OUT/tb``.
    """

    def __init__(self, out: Path, train_fields: list[str], tensorboard: bool):
        self.out, self.train_fields, self.tensorboard = Path(out), list(train_fields), tensorboard
        self.train_csv, self.eval_csv = self.out / "train_log.csv", self.out / "eval_log.csv"
        self.tb = None

    def open(self, resumed_at: tuple[int, int] | None) -> None:
        """Start logging. ``resumed_at = (step, epoch)`` of the state a resumed run continues from: rows logged
        after it (a killed epoch) are dropped; a fresh run (None) starts from empty files, since rows left by an
        attempt stopped before its first checkpoint would repeat steps."""
        if resumed_at is not None:
            step, epoch = resumed_at
            _truncate_csv(self.train_csv, lambda r: int(r["step"]) <= step)
            _truncate_csv(self.eval_csv, lambda r: int(r["epoch"]) <= epoch)
        else:
            self.train_csv.unlink(missing_ok=True)
            self.eval_csv.unlink(missing_ok=True)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resumed_at[0] if resumed_at else None)
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                self.tb = None

    def train(self, row: dict) -> None:
        """One ``train_log.csv`` row (``epoch``, ``step``, then the averaged losses, lr and images/s)."""
        _append_csv(self.train_csv, self.train_fields, row)
        if self.tb:
            for key in self.train_fields[2:]:
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def eval(self, epoch: int, metrics: dict) -> None:
        """One ``eval_log.csv`` row: ``{pooling: {metric: value}}`` after ``epoch``."""
        row = {"epoch": epoch}
        for pooling, summary in metrics.items():
            for k, v in summary.items():
                row[f"{pooling}/{k}"] = round(v, 6)
                if self.tb:
                    self.tb.add_scalar(f"eval_{pooling}/{k}", v, epoch)
        _append_csv(self.eval_csv, list(row), row)

    def progress(self, phase: str, **fields) -> None:
        """``OUT/progress.json``: what the run is doing now (phase, epoch, step, images/s, ETA), rewritten
        atomically, for a watcher in another process."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "progress.json", {"phase": phase, "updated": time.time(), **fields})


def _append_csv(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_csv(path: Path, keep) -> None:
    """Keep only the rows for which ``keep(row)`` holds (atomically)."""
    if not path.exists():
        return
    from engine.atomic import atomic_path

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = [r for r in reader if keep(r)]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
