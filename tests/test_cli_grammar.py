"""One CLI grammar: every command names an encoder, a device, workers and JSON output the same way
(engine.cliargs), and the help lists exactly the registered backbones."""

from __future__ import annotations

import argparse
import json

import pytest

from ppssl.cli import build_parser, main


def _commands(parser=None, prefix=""):
    """(name, parser) of every leaf command."""
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
        return
    for name, p in subs[0].choices.items():
        yield from _commands(p, f"{prefix} {name}")


def _options(p) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings}


ENCODER_OPTIONS = {"--checkpoint", "--encoder", "--weights", "--pooling", "--input-size", "--view"}


def test_help_lists_the_registered_backbones():
    from engine.backbones import list_backbones
    from engine.cliargs import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == list_backbones()


def test_every_command_that_takes_an_encoder_takes_it_the_same_way():
    takers = {name: p for name, p in _commands() if "--checkpoint" in _options(p) or "--encoder" in _options(p)}
    assert {"eval", "probe", "index build", "index add", "index eval", "search"} <= set(takers)
    reference = None
    for name, p in takers.items():
        opts = _options(p)
        assert ENCODER_OPTIONS <= set(opts), name
        shape = {o: (type(opts[o]).__name__, opts[o].help, opts[o].choices) for o in ENCODER_OPTIONS}
        reference = reference or shape
        assert shape == reference, name
        # --checkpoint and --encoder exclude each other everywhere
        with pytest.raises(SystemExit):
            p.parse_args(["--checkpoint", "a", "--encoder", "b"])


def test_json_is_a_print_flag_and_device_workers_read_alike():
    helps = {}
    for name, p in _commands():
        opts = _options(p)
        if name == "train":  # its options are TrainConfig's fields (training/config.py), documented there
            continue
        if "--json" in opts:
            assert isinstance(opts["--json"], argparse._StoreTrueAction), f"{name}: --json must be a flag"
        for o in ("--device", "--workers"):
            if o in opts:
                helps.setdefault(o, set()).add(opts[o].help)
    assert all(len(v) == 1 for v in helps.values()), helps


def test_weights_with_a_checkpoint_is_refused(tmp_path, capsys):
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.encoder import create_encoder

    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn"), tmp_path / "ckpt")
    code = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--weights", "imagenet", "--dataset", "folder",
                 "--root", str(tmp_path)])
    assert code == 2 and "--weights" in capsys.readouterr().err


def test_eval_json_prints_only_json_and_out_writes_the_file(tmp_path, capsys):
    from PIL import Image

    for c in range(2):
        for i in range(3):
            d = tmp_path / "photos" / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (60 * c + 20 * i, 90, 30)).save(d / f"{i}.png")
    args = ["eval", "--encoder", "tinycnn", "--dataset", "folder", "--root", str(tmp_path / "photos"),
            "--split", "all", "--workers", "0", "--device", "cpu"]
    import torch

    torch.manual_seed(0)  # a backbone name without weights is a random initialisation: seed it for the reference
    assert main(args + ["--json", "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "out" / "eval.json").read_text())
    from engine.datasets import build_dataset
    from engine.embed import extract_features
    from engine.encoder import create_encoder
    from ranking import sklearn_loo_map

    torch.manual_seed(0)
    enc = create_encoder("tinycnn").eval()  # the command's initialisation
    feats, labels = extract_features(enc, build_dataset("folder", str(tmp_path / "photos"), split="all",
                                                        transform=enc.transform()),
                                     batch_size=8, num_workers=0, device="cpu", progress=False)
    r1, m = sklearn_loo_map(feats, labels)
    assert printed["queries"] == 6 and printed["metrics"]["mAP"] == pytest.approx(m, abs=2e-3)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and not out.lstrip().startswith("{")
