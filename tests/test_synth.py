"""The synthetic fine-grained world: CUB layout, determinism, resumability, the fine-grained structure
(neighbour classes, small discriminative parts), class-independent clutter, captions, CLI and CUB reader."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.synth import (ATTRIBUTES, FAMILIES, PARTS, SMALL_ATTRIBUTES, SynthError,
                          generate_world, render_bird, render_coarse, select_classes)
from engine.synth.bird import BIRD_PARTS, part_share

TINY = dict(classes=6, per_class=4, size=32, seed=3, clutter="high", coarse_per_family=2, progress=False)
CUB_FILES = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "captions.txt")


def _lines(path: Path) -> list[list[str]]:
    return [line.split(" ", 1) for line in path.read_text().splitlines()]


def _tree_bytes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "world"
    return out, generate_world(out, **TINY)


# ------------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("sub", ["", "coarse"])
def test_layout_files_are_consistent(world, sub):
    root, summary = world
    root = root / sub
    for name in CUB_FILES:
        assert (root / name).is_file(), name
    classes = _lines(root / "classes.txt")
    images = _lines(root / "images.txt")
    labels = dict(_lines(root / "image_class_labels.txt"))
    split = dict(_lines(root / "train_test_split.txt"))
    captions = dict(_lines(root / "captions.txt"))
    n_cls = TINY["classes"] if not sub else len(FAMILIES)
    per = TINY["per_class"] if not sub else TINY["coarse_per_family"]
    assert [int(i) for i, _ in classes] == list(range(1, n_cls + 1))
    assert all(c.startswith(f"{int(i):03d}.") and " " not in c for i, c in classes)
    assert [int(i) for i, _ in images] == list(range(1, n_cls * per + 1))
    assert set(labels) == set(split) == set(captions) == {i for i, _ in images}
    assert Counter(labels.values()) == {str(c): per for c in range(1, n_cls + 1)}
    folder = {i: c for i, c in classes}
    for image_id, rel in images:
        assert rel.split("/")[0] == folder[labels[image_id]]  # the image sits in its class folder
        path = root / "images" / rel
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (TINY["size"], TINY["size"])
    for c in range(1, n_cls + 1):  # stratified split: every class has train and test images
        flags = {split[i] for i, _ in images if labels[i] == str(c)}
        assert flags == {"0", "1"}
    if not sub:
        assert sum(v == "1" for v in split.values()) == summary["train"]
        assert summary["images"] == n_cls * per
        assert summary["coarse_images"] == len(FAMILIES) * TINY["coarse_per_family"]


def test_attributes_json_matches_classes(world):
    root, summary = world
    meta = json.loads((root / "attributes.json").read_text())
    names = [c.split(".", 1)[1] for _, c in _lines(root / "classes.txt")]
    assert list(meta["classes"]) == names == summary["class_names"]
    assert set(meta["small_attributes"]) == set(SMALL_ATTRIBUTES)
    for name, info in meta["classes"].items():
        assert set(info["attributes"]) == set(ATTRIBUTES)
        assert all(info["attributes"][k] in ATTRIBUTES[k] for k in ATTRIBUTES)


def test_captions_name_family_and_attributes(world):
    root, _ = world
    meta = json.loads((root / "attributes.json").read_text())
    attrs = {info["id"]: info["attributes"] for info in meta["classes"].values()}
    labels = dict(_lines(root / "image_class_labels.txt"))
    for image_id, caption in _lines(root / "captions.txt"):
        a = attrs[int(labels[image_id])]
        assert caption.startswith(f"a photo of a small {a['body_color']} bird")
    words = {"Bird": "bird", "Fish": "fish", "Butterfly": "butterfly", "Flower": "flower",
             "Vehicle": ("car", "truck", "bus"), "Aircraft": ("airliner", "plane"), "Empty_Scene": "empty scene"}
    cls = {i: c.split(".", 1)[1] for i, c in _lines(root / "coarse" / "classes.txt")}
    labels = dict(_lines(root / "coarse" / "image_class_labels.txt"))
    for image_id, caption in _lines(root / "coarse" / "captions.txt"):
        w = words[cls[labels[image_id]]]
        assert caption.startswith("a photo of") and any(x in caption for x in ([w] if isinstance(w, str) else w))


def test_caption_omits_hidden_parts():
    """A part hidden by distractors is not named: captions list only visible attributes."""
    from engine.synth.bird import render_bird_scene

    attrs = dict(select_classes(6, 0)[0].attributes, eye_ring="red")
    seen_hidden = 0
    for i in range(40):
        scene, caption = render_bird_scene(attrs, np.random.default_rng([5, i]), 48, "high")
        pid = PARTS["crown"]
        if scene.visible[pid] < 0.4 * scene.drawn[pid]:
            seen_hidden += 1
            assert "crown" not in caption
        else:
            assert f"a {attrs['crown_color']} crown" in caption or f"an {attrs['crown_color']} crown" in caption
    assert seen_hidden > 0  # high clutter does hide the crown now and then


# ------------------------------------------------------------------------------------- determinism & resuming
def test_same_seed_gives_identical_bytes(world, tmp_path):
    root, _ = world
    again = tmp_path / "again"
    generate_world(again, **TINY)
    assert _tree_bytes(again) == _tree_bytes(root)


def test_other_seed_gives_other_world(world, tmp_path):
    root, _ = world
    other = tmp_path / "other"
    generate_world(other, **dict(TINY, seed=TINY["seed"] + 1, coarse_per_family=0))
    a, b = _tree_bytes(root), _tree_bytes(other)
    assert (root / "classes.txt").read_text() != (other / "classes.txt").read_text()
    assert not (set(v for k, v in a.items() if k.endswith(".jpg")) & set(v for k, v in b.items() if k.endswith(".jpg")))


def test_resume_renders_only_missing_images(world, tmp_path):
    root, _ = world
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = _tree_bytes(copy)
    jpgs = sorted((copy / "images").rglob("*.jpg"))
    jpgs[1].unlink()
    keep_mtime = jpgs[0].stat().st_mtime_ns
    log = copy / ".synth_captions.jsonl"  # as if killed while appending the last caption
    log.write_bytes(log.read_bytes()[:-15])
    s = generate_world(copy, **TINY)
    assert s["rendered"] == 2 and s["skipped"] == s["images"] + s["coarse_images"] - 2
    assert jpgs[0].stat().st_mtime_ns == keep_mtime
    assert _tree_bytes(copy) == before


def test_more_images_per_class_keeps_existing_ones(world, tmp_path):
    root, _ = world
    small = tmp_path / "small"
    generate_world(small, **dict(TINY, per_class=3, coarse_per_family=0))
    big, sm = _tree_bytes(root), _tree_bytes(small)
    jpg = [k for k in sm if k.endswith(".jpg")]
    assert len(jpg) == TINY["classes"] * 3 and all(sm[k] == big[k] for k in jpg)


def test_refuses_foreign_or_mismatched_directory(world, tmp_path):
    root, _ = world
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        generate_world(foreign, **TINY)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with pytest.raises(SynthError, match="seed"):
        generate_world(copy, **dict(TINY, seed=99))


@pytest.mark.parametrize("bad", [dict(classes=1), dict(per_class=1), dict(size=8), dict(clutter="medium"),
                                 dict(test_fraction=1.0), dict(seed=-1), dict(coarse_per_family=-2)])
def test_bad_parameters_raise_clear_errors(tmp_path, bad):
    with pytest.raises(SynthError):
        generate_world(tmp_path / "w", **dict(TINY, **bad))
    assert not (tmp_path / "w" / "images").exists()


# ----------------------------------------------------------------------------------- fine-grained structure
@pytest.mark.parametrize("n,seed", [(6, 0), (24, 0), (24, 1), (60, 7), (200, 2)])
def test_classes_have_near_neighbours_and_share_body_within_clusters(n, seed):
    classes = select_classes(n, seed)
    assert len(classes) == n
    assert len({c.name for c in classes}) == n
    assert len({tuple(sorted(c.attributes.items())) for c in classes}) == n
    dist = [[sum(a.attributes[k] != b.attributes[k] for k in ATTRIBUTES) for b in classes] for a in classes]
    near = [min(d for j, d in enumerate(row) if j != i) for i, row in enumerate(dist)]
    assert sum(d <= 2 for d in near) >= 0.9 * n  # most classes have a neighbour differing in 1-2 attributes
    for a in classes:
        for b in classes:
            if a.cluster == b.cluster:  # inside a cluster only small attributes change
                assert a.attributes["body_color"] == b.attributes["body_color"]
    assert select_classes(n, seed) == classes  # deterministic


def test_discriminative_parts_cover_a_small_share_of_pixels():
    shares, bird = [], []
    for i, c in enumerate(select_classes(12, 0)):
        _, mask = render_bird(c.attributes, np.random.default_rng([1, i]), 96, "none", return_mask=True)
        shares.append(part_share(mask))
        bird.append(part_share(mask, BIRD_PARTS))
    assert 0.005 < np.mean(shares) < 0.05, np.mean(shares)   # a few % of the image ...
    assert np.mean(shares) < 0.4 * np.mean(bird)               # ... and well under half of the bird
    assert all(s < 0.08 for s in shares)


def test_neighbours_differ_only_around_the_changed_part():
    """Same generator, one small attribute changed: pixels change only next to that part, and only a few."""
    from engine.synth.bird import ATTRIBUTE_PARTS

    base = select_classes(6, 0)[0].attributes
    for attr in SMALL_ATTRIBUTES:
        other = dict(base, **{attr: next(v for v in ATTRIBUTES[attr][1:] if v != base[attr])})
        img_a, m_a = render_bird(base, np.random.default_rng(9), 96, "none", return_mask=True)
        img_b, m_b = render_bird(other, np.random.default_rng(9), 96, "none", return_mask=True)
        diff = np.abs(np.asarray(img_a, int) - np.asarray(img_b, int)).max(2) > 0
        assert diff.any(), attr
        pid = PARTS[ATTRIBUTE_PARTS[attr]]
        near = _dilate((m_a == pid) | (m_b == pid), 3)  # 3 px: reach of the antialiasing filter
        assert not (diff & ~near).any(), attr
        assert diff.mean() < 0.03, (attr, diff.mean())


def test_clutter_levels_differ_in_background_structure():
    attrs = select_classes(6, 0)[0].attributes

    def background_energy(level):
        e = []
        for i in range(6):
            img, mask = render_bird(attrs, np.random.default_rng([2, i]), 64, level, return_mask=True)
            a = np.asarray(img, np.float32)
            grad = np.abs(np.diff(a, axis=0))[:, :-1].sum(2) + np.abs(np.diff(a, axis=1))[:-1].sum(2)
            bg = ~_dilate(mask > 0, 2)[:-1, :-1]
            e.append(grad[bg].mean())
        return float(np.mean(e))

    none, low, high = (background_energy(level) for level in ("none", "low", "high"))
    assert none < low < high and high > 5 * none, (none, low, high)


def test_clutter_does_not_depend_on_the_class():
    """Same generator, two far-apart classes: every pixel away from the birds is identical."""
    a, b = select_classes(24, 0)[0].attributes, select_classes(24, 0)[-1].attributes
    assert sum(a[k] != b[k] for k in ATTRIBUTES) >= 3
    for i in range(4):
        img_a, m_a = render_bird(a, np.random.default_rng([4, i]), 64, "high", return_mask=True)
        img_b, m_b = render_bird(b, np.random.default_rng([4, i]), 64, "high", return_mask=True)
        away = ~_dilate((m_a > 0) | (m_b > 0), 3)  # 3 px: reach of the antialiasing filter
        assert away.mean() > 0.5
        assert np.array_equal(np.asarray(img_a)[away], np.asarray(img_b)[away])


def test_render_coarse_every_family():
    for i, fam in enumerate(FAMILIES):
        img, caption = render_coarse(fam, np.random.default_rng(i), 40, "low")
        assert img.size == (40, 40) and img.mode == "RGB" and caption.startswith("a photo of")
    with pytest.raises(SynthError):
        render_coarse("dragon", np.random.default_rng(0), 40, "low")
    with pytest.raises(ValueError):
        render_bird({"crown_color": "red"}, np.random.default_rng(0), 40, "low")
    attrs = select_classes(6, 0)[0].attributes
    assert render_bird(attrs, 5, 40).tobytes() == render_bird(attrs, np.random.default_rng(5), 40).tobytes()


# -------------------------------------------------------------------------------------------- CLI & reader
def test_cli_writes_a_world_and_reports_bad_input(tmp_path, capsys):
    from ppssl.cli import main

    out = tmp_path / "cli"
    rc = main(["synth", "--out", str(out), "--classes", "3", "--per-class", "2", "--size", "24",
               "--coarse-per-family", "0", "--clutter", "low", "--quiet"])
    assert rc == 0 and "6 bird images" in capsys.readouterr().out
    assert len(_lines(out / "images.txt")) == 6
    rc = main(["synth", "--out", str(tmp_path / "bad"), "--size", "4", "--quiet"])
    assert rc == 2 and "--size" in capsys.readouterr().err


def test_package_imports_neither_torch_nor_more_than_numpy_and_pillow():
    code = ("import sys, engine.synth.world, engine.synth.sheet, engine.synth.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'cv2', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert out.stdout.strip() == "[]"


def test_cub_reader_reads_the_world(world):
    datasets = pytest.importorskip("engine.datasets")
    root, summary = world
    train = datasets.build_dataset("cub200", root, split="train")
    test = datasets.build_dataset("cub200", root, split="test")
    assert len(train) == summary["train"] and len(test) == summary["test"]
    assert [c.split(".", 1)[-1] for c in train.classes] == summary["class_names"]
    img, label, path = train[0]
    assert img.size == (TINY["size"], TINY["size"]) and 0 <= label < TINY["classes"] and Path(path).is_file()
    coarse = datasets.build_dataset("cub200", root / "coarse", split="all")
    assert len(coarse) == len(FAMILIES) * TINY["coarse_per_family"]
