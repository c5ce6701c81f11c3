"""Every user error of every command ends in one line on stderr and exit status 2, never a traceback.

The walk covers each command with a bad name (backbone, dataset, weights, config key), a bad path (missing,
empty, not an index or checkpoint) and a bad value; argparse's own usage errors (exit 2 with a usage line) are
accepted as they are.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("cli_errors")
    (root / "empty").mkdir()
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "photos" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / "photos" / c / f"{i}.jpg")
            (root / "one_level_up" / "images" / c).mkdir(parents=True, exist_ok=True)  # classes one level too deep
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(
                root / "one_level_up" / "images" / c / f"{i}.jpg")
    return root


def _cases(r):
    photos, empty, missing = str(r / "photos"), str(r / "empty"), str(r / "missing")
    out = str(r / "out")
    return [
        (["eval", "--encoder", "resnet34", "--dataset", "images", "--root", photos], "unknown backbone 'resnet34'"),
        (["eval", "--encoder", "efficientnet_lite0", "--weights", str(r / "nope.pt"), "--dataset", "images",
          "--root", photos], "weights file not found"),
        (["eval", "--checkpoint", missing, "--dataset", "images", "--root", photos], "not a checkpoint directory"),
        (["eval", "--encoder", "tinycnn", "--dataset", "nope", "--root", photos], "unknown dataset 'nope'"),
        (["eval", "--encoder", "tinycnn", "--dataset", "cub200", "--root", missing], "missing"),
        (["eval", "--encoder", "tinycnn", "--dataset", "images", "--root", empty], "no image files found"),
        (["eval", "--encoder", "tinycnn", "--dataset", "images", "--root", str(r / "one_level_up")],
         "every photo has the same label"),
        (["eval", "--encoder", "tinycnn", "--dataset", "images", "--root", photos, "--input-size", "-5"],
         "input size must be"),
        (["index", "build", "--encoder", "tinycnn", "--input-size", "0", "--images", photos, "--out", out],
         "input size must be"),
        (["train", "--images", photos, "--out", out, "--backbone", "nope"], "unknown backbone 'nope'"),
        (["train", "--images", missing, "--out", out], "not a directory"),
        (["train", "--images", photos, "--out", out, "--set", "nope=1"], "unknown training config keys"),
        (["train", "--images", photos, "--out", out, "--set", "lr=abc"], "cannot use 'abc'"),
        (["train", "--images", photos, "--out", out, "--set", "view=sideways"], "view must be"),
        (["train", "--images", photos, "--out", out, "--epochs", "-1"], "epochs must be positive"),
        (["train", "--config", str(r / "nope.yaml")], "config file not found"),
        (["index", "build", "--encoder", "nope", "--images", photos, "--out", out], "unknown backbone 'nope'"),
        (["index", "build", "--encoder", "tinycnn", "--images", missing, "--out", out], "not a directory"),
        (["index", "build", "--encoder", "tinycnn", "--images", empty, "--out", out], "no files to index"),
        (["index", "build", "--checkpoint", missing, "--images", photos, "--out", out], "not a checkpoint"),
        (["index", "build", "--images", photos, "--out", out], "an encoder is required"),
        (["index", "info", "--index", missing], "not an index directory"),
        (["index", "eval", "--index", missing, "--compare", "plain"], "not an index directory"),
        (["index", "add", "--index", missing, photos], "not an index directory"),
        (["search", "--index", missing, str(r / "q.jpg")], "not an index directory"),
        (["api", "--index", missing], "not an index directory"),
        (["serve", "--index", missing], "not an index directory"),
        (["serve", "--images", missing], "not a directory"),
        (["job", "status", "--work", missing], "no job"),
        (["job", "run", "--images", missing, "--work", str(r / "jobs")], "not a directory"),
        (["synth", "--out", out, "--classes", "0"], "--classes must be"),
        (["data", "fetch", "nope", "--out", out], "unknown dataset 'nope'"),
        (["probe", "--checkpoint", missing, "--dataset", "cub200", "--root", photos], "not a checkpoint"),
        (["teacher", "fit", "--data", missing, "--out", out], "missing"),
        (["index", "remove", "--index", missing, "--id", "1"], "not an index directory"),
        (["index", "dba", "--index", missing], "not an index directory"),
        (["index", "merge", "--out", out, missing], "not an index directory"),
        (["index", "publish", "--index", missing, "--qdrant", str(r / "qdrant")], "not an index directory"),
        (["demo", "--demo-home", out, "--demo-classes", "0"], "--demo-classes must be"),
        (["demo", "--demo-home", out, "--demo-train-epochs", "-1"], "--demo-train-epochs must be"),
    ]


def test_every_command_ends_a_user_error_in_one_line_and_status_2(folders, capsys):
    from ppssl.cli import main

    failures = []
    for argv, expected in _cases(folders):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc != 2 or "Traceback" in err or not lines or expected not in lines[-1] or (
                len(lines) != 1 and not lines[0].startswith("usage:")):
            failures.append(f"{' '.join(argv)} -> rc {rc}: {err.strip()[-300:]!r}")
    assert not failures, "\n".join(failures)
    assert not (folders / "out").exists() or not any((folders / "out").iterdir())  # nothing half-made
