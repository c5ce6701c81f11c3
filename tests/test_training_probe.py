"""Linear probe: stratified label proportions, the L-BFGS classifier against scikit-learn, the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training.probe import ProbeError, fit_linear, parse_proportions, probe_features, stratified_subset


def test_stratified_subset_counts_and_determinism():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 1)
    idx = stratified_subset(labels, 15, seed=3)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [math.ceil(1.5), math.ceil(1.05), 1]
    assert np.array_equal(idx, stratified_subset(labels, 15, seed=3))
    assert not np.array_equal(stratified_subset(labels, 50, seed=1), stratified_subset(labels, 50, seed=2))
    assert len(stratified_subset(labels, 100)) == len(labels)


def test_parse_proportions():
    assert parse_proportions("10,15,30,50,100") == [10, 15, 30, 50, 100]
    for bad in ("", "0", "150", "ten"):
        with pytest.raises(ProbeError):
            parse_proportions(bad)


def test_linear_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 1.2
    y = rng.integers(0, 5, size=400)
    x = (centers[y] + rng.normal(size=(400, 16))).astype(np.float32)
    xtr, ytr, xte, yte = x[:300], y[:300], x[300:], y[300:]
    layer = fit_linear(xtr, ytr, 5)
    with torch.no_grad():
        ours = layer(torch.from_numpy(xte)).argmax(1).numpy()
    # the same objective: sum CE / N + l2 ||W||^2  <=>  sklearn C = 1 / (2 N l2)
    sk = LogisticRegression(C=1 / (2 * len(ytr) * 1e-4), max_iter=2000).fit(xtr, ytr).predict(xte)
    assert (ours == sk).mean() >= 0.97
    assert abs((ours == yte).mean() - (sk == yte).mean()) <= 0.02
    rows = probe_features(xtr, ytr, xte, yte, [10, 100], 5)
    assert [r["train_images"] for r in rows] == [len(stratified_subset(ytr, 10)), 300]
    assert rows[1]["top1"] == pytest.approx((ours == yte).mean())


def test_probe_cli_on_tiny_world(tmp_path):
    from engine.synth import generate_world
    from ppssl.cli import main

    world = tmp_path / "w"
    generate_world(world, classes=3, per_class=6, size=32, coarse_per_family=0, progress=False)
    torch.manual_seed(0)  # a backbone without weights is a random initialisation: the reference below repeats it
    rc = main(["probe", "--encoder", "tinycnn", "--dataset", "cub200", "--root", str(world), "--input-size", "32",
               "--proportions", "30,100", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "p")])
    assert rc == 0
    res = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert [r["proportion"] for r in res["rows"]] == [30, 100]
    assert res["test_images"] == 9
    # the 100 % row against scikit-learn's logistic regression (same objective) on features computed here
    from sklearn.linear_model import LogisticRegression

    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.encoder import create_encoder

    torch.manual_seed(0)
    enc = create_encoder("tinycnn", input_size=32)
    feats = {split: extract_features(enc, build_dataset("cub200", str(world), split=split, transform=enc.transform()),
                                     batch_size=16, num_workers=0, device="cpu", progress=False)
             for split in ("train", "test")}
    (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
    sk = LogisticRegression(C=1 / (2 * len(ytr) * res["l2"]), max_iter=5000).fit(xtr, ytr).predict(xte)
    assert res["rows"][1]["top1"] == pytest.approx((sk == yte).mean(), abs=1 / 9 + 1e-9)  # one near-tie may flip
