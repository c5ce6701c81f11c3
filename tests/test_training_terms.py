"""Contract tests over every registered loss term (training/terms.py): each is switched on by its own settings,
adds exactly lambda x its value to Eq. 9, trains the student, and is logged; the trainer never names one."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training_trainer import _cfg, teacher_dir, world  # noqa: E402,F401 - fixtures

from training.terms import LOSS_TERMS  # noqa: E402


def test_the_trainer_names_no_loss_term():
    """train_step and the loop read the registry: no term's name appears in the trainer's code."""
    src = (Path(__file__).resolve().parents[1] / "training" / "trainer.py").read_text()
    for name, cls in LOSS_TERMS.items():
        assert f'"{name}"' not in src and cls.weight_field not in src and cls.__name__ not in src, name


@pytest.mark.parametrize("name", list(LOSS_TERMS))
def test_every_term_declares_its_weight_and_switch(name):
    from training.config import TrainConfig

    cls = LOSS_TERMS[name]
    names = {f.name for f in fields(TrainConfig)}
    assert cls.weight_field in names and set(cls.switch_on) <= names
    assert not cls.enabled(TrainConfig(method="moco").validate())


@pytest.mark.parametrize("name", list(LOSS_TERMS))
def test_every_term_adds_lambda_times_its_value_and_trains_the_student(name, world, teacher_dir, tmp_path):
    from training.trainer import TRAIN_FIELDS, Trainer

    cls = LOSS_TERMS[name]
    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", **cls.switch_on, **{cls.weight_field: 0.7}))
    assert list(tr.terms) == [name]
    tr.out.mkdir(parents=True)
    tr.prepare_terms()
    (x_q, x_k), idx = next(iter(tr.loader(0)))
    res = tr.train_step(x_q, x_k, idx)
    value = res.terms[name]
    assert math.isfinite(value) and value > 0
    assert res.loss == pytest.approx(res.loss_moco + 0.7 * value, rel=1e-5, abs=1e-6)
    assert all(v == 0.0 for n, v in res.terms.items() if n != name)
    assert f"loss_{name}" in TRAIN_FIELDS

    # with L_moco's gradient removed, the term alone still moves some student parameter
    tr2 = Trainer(_cfg(world, teacher_dir, tmp_path / "g", **cls.switch_on))
    tr2.out.mkdir(parents=True)
    tr2.prepare_terms()
    (x_q, x_k), idx = next(iter(tr2.loader(0)))
    from training.terms import Step

    x_q = x_q.clone().requires_grad_(tr2.needs.input_grad)
    out = tr2.student(x_q)
    with torch.no_grad():
        k = tr2.momentum(x_k)
    from training.losses import infonce_loss

    l_moco = infonce_loss(out["q"], k, tr2.queue.keys, 0.2)
    term_value = tr2.terms[name](Step(x_q, out, idx, l_moco, tr2.scaler, False))
    tr2.student.zero_grad(set_to_none=True)
    term_value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr2.student.parameters())


@pytest.mark.parametrize("name", list(LOSS_TERMS))
def test_every_term_is_logged(name, world, teacher_dir, tmp_path):
    from training.trainer import Trainer

    cls = LOSS_TERMS[name]
    tr = Trainer(_cfg(world, teacher_dir, tmp_path / "r", epochs=1, max_steps_per_epoch=2, eval_split="none",
                      **cls.switch_on))
    tr.fit()
    rows = list(csv.DictReader(open(tmp_path / "r" / "train_log.csv")))
    assert rows and all(float(r[f"loss_{name}"]) > 0 for r in rows)
