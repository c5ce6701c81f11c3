"""Dataset readers: tiny fake trees of every official layout, malformed files, and the real cub100 set."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from engine.datasets import (
    AnnotationError,
    DatasetError,
    ImageListDataset,
    Listing,
    build_dataset,
    list_datasets,
    register_dataset,
)
from engine.errors import PPSSLError


def _jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade % 256, 40, 90)).save(path, "JPEG")


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _raises(fn, file: str, line: int | None = None, match: str = "") -> AnnotationError:
    """Call ``fn``; it must raise an AnnotationError naming ``file`` (and ``line``) with ``match`` in it."""
    with pytest.raises(AnnotationError) as info:
        fn()
    err = info.value
    msg = str(err)
    where = re.escape(file) + (f":{line}: " if line is not None else r"(: |:\d+: )")
    assert re.search(r"(^|/)" + where, msg), msg
    assert match in msg, msg
    assert Path(err.file).name == Path(file).name and err.line == line
    return err


# --------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_reader_and_rejects_unknown_names(tmp_path):
    assert set(list_datasets()) >= {"cub200", "cars", "aircraft", "flowers102", "nabirds", "dogs",
                                    "butterfly200", "folder"}
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        build_dataset("cub200", tmp_path, split="val")
    err = _raises(lambda: build_dataset("cub200", tmp_path / "nope"), str(tmp_path / "nope"), match="missing")
    assert isinstance(err, PPSSLError) and isinstance(err, ValueError)


def test_register_dataset_adds_a_reader(tmp_path):
    _jpeg(tmp_path / "a.jpg")

    @register_dataset("_test_single")
    def _single(root: Path, split: str) -> Listing:
        return Listing([(str(root / "a.jpg"), 0)], ["only"], str(root), [f"{root}/list.txt:1"])

    ds = build_dataset("_test_single", tmp_path, split="all")
    assert len(ds) == 1 and ds.classes == ["only"]
    (tmp_path / "a.jpg").unlink()
    _raises(lambda: build_dataset("_test_single", tmp_path), "list.txt", 1, "does not exist")


def test_image_list_dataset_items_transform_and_pickling(tmp_path):
    for i in range(3):
        _jpeg(tmp_path / f"{i}.jpg", shade=80 * i)
    samples = [(str(tmp_path / f"{i}.jpg"), i % 2) for i in range(3)]
    ds = ImageListDataset(samples, ["a", "b"], root=tmp_path)
    img, label, path = ds[2]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0 and path == samples[2][0]
    assert ds.targets == [0, 1, 0] and ds.root == str(tmp_path) and len(ds) == 3

    from engine.preprocess import eval_transform

    ds2 = pickle.loads(pickle.dumps(ImageListDataset(samples, ["a", "b"], eval_transform(32))))
    x, label, _ = ds2[1]
    assert tuple(x.shape) == (3, 32, 32) and label == 1
    with pytest.raises(ValueError, match="out of range"):
        ImageListDataset(samples, ["a"])


# --------------------------------------------------------------------------------------------- CUB-200-2011


def make_cub(base: Path, n_classes: int = 3, per_class: int = 4, boxes: bool = False, captions: bool = False) -> Path:
    """A CUB_200_2011-layout tree; image k of each class is train when k is even."""
    images, labels, split, box_lines, caps = [], [], [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        for k in range(per_class):
            image_id += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{k:04d}.jpg"
            _jpeg(base / "images" / rel, shade=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(k % 2 == 0)}")
            box_lines.append(f"{image_id} 1.0 2.0 3.0 4.0")
            caps.append(f"{image_id} a bird of class {c}")
    _write(base / "images.txt", images)
    _write(base / "image_class_labels.txt", labels)
    _write(base / "train_test_split.txt", split)
    _write(base / "classes.txt", [f"{c} {c:03d}.Bird_{c}" for c in range(1, n_classes + 1)])
    if boxes:
        _write(base / "bounding_boxes.txt", box_lines)
    if captions:
        _write(base / "captions.txt", caps)
    return base


def test_cub_reads_splits_labels_and_items(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    train, test, full = (build_dataset("cub200", root, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (6, 6, 12)
    assert full.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert train.classes == test.classes == full.classes
    assert sorted(set(train.targets)) == [0, 1, 2]
    assert set(train.samples) | set(test.samples) == set(full.samples)
    assert all("_0000.jpg" in p or "_0002.jpg" in p for p, _ in train.samples)
    img, label, path = test[0]
    assert isinstance(img, Image.Image) and label == 0 and path.endswith("Bird_1_0001.jpg")
    assert Path(path).is_absolute() and full.image_ids[:2] == ["1", "2"]
    assert full.bounding_boxes is None and full.captions is None
    # a folder that contains CUB_200_2011/ works too
    assert build_dataset("cub200", tmp_path, split="all").samples == full.samples


def test_cub_optional_boxes_and_captions(tmp_path):
    root = make_cub(tmp_path, boxes=True, captions=True)
    ds = build_dataset("cub200", root, split="test")
    assert ds.bounding_boxes == [(1.0, 2.0, 3.0, 4.0)] * 6
    assert ds.captions[0] == "a bird of class 1" and len(ds.captions) == 6


def _edit(path: Path, line: int, text: str | None) -> None:
    """Replace (or with ``None`` delete) 1-based ``line`` of a text file."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    _write(path, lines)


@pytest.mark.parametrize("file,line,new,expect_line,match", [
    ("images.txt", 2, "2", 2, "expected <image_id> <image path>"),
    ("images.txt", 3, "1 001.Bird_1/Bird_1_0000.jpg", 3, "duplicate image id '1' (first at line 1)"),
    ("images.txt", 2, "2 /etc/passwd", 2, "must be relative"),
    ("images.txt", 2, "2 ../secret.jpg", 2, "leaves the images folder"),
    ("image_class_labels.txt", 3, "3 three", 3, "class id 'three' is not an integer"),
    ("image_class_labels.txt", 3, "3 9", 3, "class id 9 is not listed in classes.txt"),
    ("image_class_labels.txt", 4, "99 1", 4, "unknown image id '99'"),
    ("image_class_labels.txt", 5, "4 1", 5, "duplicate image id '4'"),
    ("image_class_labels.txt", 2, "2 1 extra", 2, "expected <image_id> <class_id>"),
    ("image_class_labels.txt", 12, None, None, "no entry for image id '12' (listed at images.txt:12)"),
    ("train_test_split.txt", 6, "6 2", 6, "split flag '2' must be 1 (train) or 0 (test)"),
    ("train_test_split.txt", 7, "x7 1", 7, "unknown image id 'x7'"),
    ("train_test_split.txt", 1, None, None, "no entry for image id '1'"),
    ("classes.txt", 2, "two 002.Bird_2", 2, "class id 'two' is not an integer"),
    ("classes.txt", 3, "1 again", 3, "duplicate class id 1"),
    ("bounding_boxes.txt", 4, "4 1 2 0 4", 4, "non-positive size"),
    ("bounding_boxes.txt", 5, "5 1 2 nan 4", 5, "width 'nan' is not a finite number"),
    ("bounding_boxes.txt", 6, None, None, "no box for image id '6' (listed at images.txt:6)"),
    ("captions.txt", 2, "42 a ghost", 2, "unknown image id '42'"),
])
def test_cub_malformed_files_name_file_and_line(tmp_path, file, line, new, expect_line, match):
    root = make_cub(tmp_path, boxes=True, captions=True)
    _edit(root / file, line, new)
    _raises(lambda: build_dataset("cub200", root, split="all"), file, expect_line, match)


@pytest.mark.parametrize("file", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"])
def test_cub_missing_file_is_named(tmp_path, file):
    root = make_cub(tmp_path)
    (root / file).unlink()
    _raises(lambda: build_dataset("cub200", root), file, None, "missing")


def test_cub_empty_undecodable_and_missing_image(tmp_path):
    root = make_cub(tmp_path)
    (root / "classes.txt").write_text("\n\n")
    _raises(lambda: build_dataset("cub200", root), "classes.txt", None, "empty")
    make_cub(tmp_path)
    (root / "images.txt").write_bytes(b"1 001.Bird_1/Bird_1_0000.jpg\n2 caf\xe9.jpg\n")
    _raises(lambda: build_dataset("cub200", root), "images.txt", 2, "not UTF-8")
    make_cub(tmp_path)
    (root / "images" / "002.Bird_2" / "Bird_2_0001.jpg").unlink()  # image id 6, a test image
    _raises(lambda: build_dataset("cub200", root, split="test"), "images.txt", 6, "Bird_2_0001.jpg does not exist")
    assert len(build_dataset("cub200", root, split="train")) == 6  # only the requested split is checked
    assert len(build_dataset("cub200", root, split="test", check_files=False)) == 6


# --------------------------------------------------------------------------------------------- NABirds

_UUIDS = ["0a1b2c3d-0000-4000-8000-%012d" % i for i in range(6)]


def make_nabirds(base: Path) -> Path:
    # Class ids are sparse, and classes.txt also lists inner hierarchy nodes (0, 1) that have no images.
    leaf_ids = [295, 313, 817]
    images, labels, split = [], [], []
    for i, uid in enumerate(_UUIDS):
        cid = leaf_ids[i % 3]
        rel = f"{cid:04d}/{uid.replace('-', '')}.jpg"
        _jpeg(base / "images" / rel, shade=i)
        images.append(f"{uid} {rel}")
        labels.append(f"{uid} {cid}")
        split.append(f"{uid} {int(i < 3)}")
    _write(base / "images.txt", images)
    _write(base / "image_class_labels.txt", labels)
    _write(base / "train_test_split.txt", split)
    _write(base / "classes.txt", ["0 Birds", "1 Ducks, Geese, and Swans", "295 Mallard (Male)",
                                  "313 Wood Duck (Female/juvenile)", "817 Snow Goose"])
    _write(base / "hierarchy.txt", ["1 0", "295 1", "313 1", "817 1"])
    return base


def test_nabirds_remaps_sparse_class_ids_to_classes_with_images(tmp_path):
    make_nabirds(tmp_path / "nabirds")
    full = build_dataset("nabirds", tmp_path, split="all")
    assert full.classes == ["Mallard (Male)", "Wood Duck (Female/juvenile)", "Snow Goose"]
    assert full.targets == [0, 1, 2, 0, 1, 2] and full.image_ids == _UUIDS
    train = build_dataset("nabirds", tmp_path / "nabirds", split="train")
    assert train.image_ids == _UUIDS[:3] and train.classes == full.classes
    assert train[0][2].endswith("0295/0a1b2c3d000040008000000000000000.jpg")


def test_nabirds_unknown_uuid_names_file_and_line(tmp_path):
    root = make_nabirds(tmp_path)
    _edit(root / "train_test_split.txt", 4, "ffffffff-0000-4000-8000-000000000000 0")
    _raises(lambda: build_dataset("nabirds", root), "train_test_split.txt", 4, "unknown image id 'ffffffff-")


# --------------------------------------------------------------------------------------------- Stanford Cars


def _cars_annos(names_and_classes):
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    arr = np.zeros((1, len(names_and_classes)), dtype=dt)
    for i, (fname, cls) in enumerate(names_and_classes):
        arr[0, i] = (1, 1, 5, 5, np.uint8(cls), fname)
    return {"annotations": arr}


def make_cars(root: Path, test_classes=(1, 2, 3)) -> Path:
    base = root / "stanford_cars"
    train = [(f"{i:05d}.jpg", c) for i, c in enumerate((1, 2, 3, 3), 1)]
    test = [(f"{i:05d}.jpg", c) for i, c in enumerate(test_classes, 1)]
    for name, _ in train:
        _jpeg(base / "cars_train" / name)
    for name, _ in test:
        _jpeg(base / "cars_test" / name)
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array([["AM General Hummer SUV 2000", "Audi R8 Coupe 2012", "BMW M3 2012"]],
                                              dtype=object)})
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", _cars_annos(train))
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", _cars_annos(test))
    return root


def test_cars_via_torchvision(tmp_path):
    make_cars(tmp_path)
    train, test, full = (build_dataset("cars", tmp_path, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (4, 3, 7)
    assert train.classes[1] == "Audi R8 Coupe 2012" and len(train.classes) == 3
    assert train.targets == [0, 1, 2, 2] and test.targets == [0, 1, 2]
    assert train.samples[0][0].endswith("stanford_cars/cars_train/00001.jpg")
    assert build_dataset("cars", tmp_path / "stanford_cars", split="test").samples == test.samples
    img, label, _ = test[2]
    assert isinstance(img, Image.Image) and label == 2


def test_cars_errors_name_the_file(tmp_path):
    make_cars(tmp_path, test_classes=(1, 4))
    _raises(lambda: build_dataset("cars", tmp_path, split="test"), "cars_test_annos_withlabels.mat", None,
            "annotations[1]: class 4 outside 1..3")
    (tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat").unlink()
    _raises(lambda: build_dataset("cars", tmp_path, split="train"), "cars_train_annos.mat", None, "missing")
    (tmp_path / "stanford_cars" / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file")
    _raises(lambda: build_dataset("cars", tmp_path, split="test"), "cars_meta.mat", None, "not a readable .mat")
    _raises(lambda: build_dataset("cars", tmp_path / "elsewhere"), "elsewhere", None, "missing")
    (tmp_path / "empty").mkdir()
    _raises(lambda: build_dataset("cars", tmp_path / "empty"), "stanford_cars", None, "missing")


def test_cars_missing_image_names_the_mat_entry(tmp_path):
    make_cars(tmp_path)
    (tmp_path / "stanford_cars" / "cars_test" / "00002.jpg").unlink()
    _raises(lambda: build_dataset("cars", tmp_path, split="test"), "cars_test_annos_withlabels.mat", None,
            "annotations[1]: image file")


# --------------------------------------------------------------------------------------------- FGVC-Aircraft


def make_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "F/A-18"]
    trainval = [("1000001", "707-320"), ("1000002", "A300B4"), ("1000003", "F/A-18"), ("1000004", "F/A-18")]
    test = [("2000001", "A300B4"), ("2000002", "707-320")]
    for name, _ in trainval + test:
        _jpeg(data / "images" / f"{name}.jpg")
    _write(data / "variants.txt", variants)
    _write(data / "images_variant_trainval.txt", [f"{n} {v}" for n, v in trainval])
    _write(data / "images_variant_test.txt", [f"{n} {v}" for n, v in test])
    return root


def test_aircraft_via_torchvision(tmp_path):
    make_aircraft(tmp_path)
    train, test, full = (build_dataset("aircraft", tmp_path, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (4, 2, 6)
    assert train.classes == ["707-320", "A300B4", "F/A-18"]
    assert train.targets == [0, 1, 2, 2] and test.targets == [1, 0]
    assert test.samples[0][0].endswith("data/images/2000001.jpg")
    assert build_dataset("aircraft", tmp_path / "fgvc-aircraft-2013b", split="test").samples == test.samples


@pytest.mark.parametrize("file,line,new,match", [
    ("images_variant_test.txt", 2, "2000002 Concorde", "variant 'Concorde' is not listed in variants.txt"),
    ("images_variant_test.txt", 2, "2000002", "expected <image name> <variant name>"),
    ("images_variant_test.txt", 1, "", "blank line"),
    ("images_variant_test.txt", 2, "1000003 F/A-18", "duplicate image '1000003' (first at "),  # ...trainval.txt:3
    ("variants.txt", 3, "707-320", "duplicate variant '707-320' (first at line 1)"),
])
def test_aircraft_malformed_lines(tmp_path, file, line, new, match):
    make_aircraft(tmp_path)
    _edit(tmp_path / "fgvc-aircraft-2013b" / "data" / file, line, new)
    _raises(lambda: build_dataset("aircraft", tmp_path, split="all"), file, line, match)


def test_aircraft_missing_list_and_image(tmp_path):
    make_aircraft(tmp_path)
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images" / "2000002.jpg").unlink()
    _raises(lambda: build_dataset("aircraft", tmp_path, split="test"), "images_variant_test.txt", 2,
            "2000002.jpg does not exist")
    (data / "images_variant_test.txt").unlink()
    _raises(lambda: build_dataset("aircraft", tmp_path, split="test"), "images_variant_test.txt", None, "missing")
    assert len(build_dataset("aircraft", tmp_path, split="train")) == 4


# --------------------------------------------------------------------------------------------- Flowers-102


def make_flowers(root: Path, labels=(1, 1, 2, 2, 3, 3, 102, 102), setid=None) -> Path:
    base = root / "flowers-102"
    for i in range(1, len(labels) + 1):
        _jpeg(base / "jpg" / f"image_{i:05d}.jpg", shade=i)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    setid = setid or {"trnid": [1, 3], "valid": [5, 7], "tstid": [2, 4, 6, 8]}
    scipy.io.savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})
    return root


def test_flowers_via_torchvision(tmp_path):
    make_flowers(tmp_path)
    train, test, full = (build_dataset("flowers102", tmp_path, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (2, 4, 8)  # train = trnid only; valid is only in "all"
    assert len(train.classes) == 102 and train.classes[0] == "pink primrose"
    assert train.targets == [0, 1] and test.targets == [0, 1, 2, 101]
    assert train.samples[1][0].endswith("flowers-102/jpg/image_00003.jpg")
    assert build_dataset("flowers102", tmp_path / "flowers-102", split="all").samples == full.samples


def test_flowers_errors_name_the_file(tmp_path):
    make_flowers(tmp_path, labels=(1, 1, 2, 2, 3, 3, 103, 1))
    _raises(lambda: build_dataset("flowers102", tmp_path), "imagelabels.mat", None, "labels[6] = 103 outside 1..102")
    make_flowers(tmp_path, setid={"trnid": [1, 3], "valid": [5, 9], "tstid": [2, 4]})
    _raises(lambda: build_dataset("flowers102", tmp_path), "setid.mat", None, "valid[1] = image id 9 has no label")
    make_flowers(tmp_path, setid={"trnid": [1, 3], "valid": [5, 7], "tstid": [3, 4]})
    _raises(lambda: build_dataset("flowers102", tmp_path, split="test"), "setid.mat", None,
            "tstid[0] = image id 3 is already in trnid[1]")
    scipy.io.savemat(tmp_path / "flowers-102" / "setid.mat", {"trnid": np.array([[1, 2]])})
    _raises(lambda: build_dataset("flowers102", tmp_path), "setid.mat", None, "has no variable 'valid'")
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    _raises(lambda: build_dataset("flowers102", tmp_path), "setid.mat", None, "missing")


# --------------------------------------------------------------------------------------------- Stanford Dogs


def _dogs_list(files, labels):
    cell = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        cell[i, 0] = np.array([f])
    return {"file_list": cell, "annotation_list": cell, "labels": np.array([labels], dtype=float).T}


def make_dogs(root: Path, lists_dir: str = "", test_labels=(1, 2)) -> Path:
    folders = {1: "n02085620-Chihuahua", 2: "n02085782-Japanese_spaniel"}
    train = [(f"{folders[y]}/{folders[y][:9]}_{i}.jpg", y) for i, y in enumerate((1, 1, 2))]
    test = [(f"{folders[1 if y == 1 else 2]}/{folders[1 if y == 1 else 2][:9]}_{10 + i}.jpg", y)
            for i, y in enumerate(test_labels)]
    for rel, _ in train + test:
        _jpeg(root / "Images" / rel)
    (root / lists_dir).mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / lists_dir / "train_list.mat", _dogs_list(*zip(*train)))
    scipy.io.savemat(root / lists_dir / "test_list.mat", _dogs_list(*zip(*test)))
    return root


def test_dogs_from_official_mat_lists(tmp_path):
    make_dogs(tmp_path)
    train, test, full = (build_dataset("dogs", tmp_path, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (3, 2, 5)
    assert train.classes == ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"] == test.classes
    assert train.targets == [0, 0, 1] and test.targets == [0, 1]
    assert train[0][2].endswith("Images/n02085620-Chihuahua/n02085620_0.jpg")
    make_dogs(tmp_path / "nested", lists_dir="lists")
    assert len(build_dataset("dogs", tmp_path / "nested", split="all")) == 5


def test_dogs_errors_name_the_file(tmp_path):
    make_dogs(tmp_path, test_labels=(1, 3))  # label 3 on a Japanese_spaniel image: inconsistent with train
    _raises(lambda: build_dataset("dogs", tmp_path, split="train"), "test_list.mat", None,
            "file_list[1] = 'n02085782-Japanese_spaniel/n02085782_11.jpg' has label 3, but folder")
    make_dogs(tmp_path)
    scipy.io.savemat(tmp_path / "test_list.mat", {"file_list": np.array([["a/b.jpg", "a/c.jpg"]], dtype=object),
                                                  "labels": np.array([[1.0, 1.5]])})
    _raises(lambda: build_dataset("dogs", tmp_path), "test_list.mat", None, "labels[1] = 1.5 is not an integer")
    (tmp_path / "test_list.mat").unlink()
    _raises(lambda: build_dataset("dogs", tmp_path, split="train"), "test_list.mat", None, "missing")


# --------------------------------------------------------------------------------------------- Butterfly-200


def make_butterfly(root: Path) -> Path:
    base = root / "Butterfly200"
    rows = {
        "train": ["001.Atrophaneura_horishanus/a1.jpg 1 1 1 1", "002.Byasa_alcinous/b1.jpg 2 2 1 1",
                  "001.Atrophaneura_horishanus/a2.jpg 1 1 1 1"],
        "val": ["002.Byasa_alcinous/b2.jpg 2 2 1 1"],
        "test": ["001.Atrophaneura_horishanus/a3.jpg 1 1 1 1", "005.Troides_aeacus/t1.jpg 5 3 1 1"],
    }
    for part, lines in rows.items():
        for line in lines:
            _jpeg(base / "images" / line.split()[0])
        _write(base / f"Butterfly200_{part}_release.txt", lines)
    return root


def test_butterfly_species_level_and_splits(tmp_path):
    make_butterfly(tmp_path)
    train, test, full = (build_dataset("butterfly200", tmp_path, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (3, 2, 6)  # val only in "all"
    assert train.classes == ["001.Atrophaneura_horishanus", "002.Byasa_alcinous", "005.Troides_aeacus"]
    assert train.targets == [0, 1, 0] and test.targets == [0, 2]
    assert test[1][2].endswith("Butterfly200/images/005.Troides_aeacus/t1.jpg")
    # two-column lines ("<path> <species>") are accepted
    _write(tmp_path / "Butterfly200" / "Butterfly200_test_release.txt", ["005.Troides_aeacus/t1.jpg 5"])
    assert build_dataset("butterfly200", tmp_path / "Butterfly200", split="test").targets == [2]


@pytest.mark.parametrize("line,match", [
    ("001.Atrophaneura_horishanus/a3.jpg 1 1 1", "got 4 fields"),
    ("001.Atrophaneura_horishanus/a3.jpg x 1 1 1", "species label 'x' is not an integer"),
    ("001.Atrophaneura_horishanus/a3.jpg 0 1 1 1", "labels must be >= 1"),
    ("001.Atrophaneura_horishanus/a1.jpg 1 1 1 1", "is listed twice (first at"),
])
def test_butterfly_malformed_lines(tmp_path, line, match):
    make_butterfly(tmp_path)
    _edit(tmp_path / "Butterfly200" / "Butterfly200_test_release.txt", 1, line)
    _raises(lambda: build_dataset("butterfly200", tmp_path), "Butterfly200_test_release.txt", 1, match)


def test_butterfly_missing_list(tmp_path):
    make_butterfly(tmp_path)
    (tmp_path / "Butterfly200" / "Butterfly200_test_release.txt").unlink()
    _raises(lambda: build_dataset("butterfly200", tmp_path), "Butterfly200_test_release.txt", None, "missing")


# --------------------------------------------------------------------------------------------- class-per-folder


def test_folder_with_train_and_test_subfolders(tmp_path):
    for part, cls, n in (("train", "cat", 2), ("train", "dog", 1), ("test", "dog", 2), ("test", "eel", 1)):
        for i in range(n):
            _jpeg(tmp_path / part / cls / f"{i}.jpg")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".hidden").mkdir()
    train, test, full = (build_dataset("folder", tmp_path, split=s) for s in ("train", "test", "all"))
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    assert train.targets == [0, 0, 1] and test.targets == [1, 1, 2] and len(full) == 6


def test_folder_hash_split_is_a_deterministic_partition(tmp_path):
    for cls in ("a", "b"):
        for i in range(20):
            _jpeg(tmp_path / cls / "sub" / f"{i}.png" if i % 5 == 0 else tmp_path / cls / f"{i}.jpg")
    train, test, full = (build_dataset("folder", tmp_path, split=s) for s in ("train", "test", "all"))
    assert len(full) == 40 and full.classes == ["a", "b"]
    assert set(train.samples).isdisjoint(test.samples)
    assert set(train.samples) | set(test.samples) == set(full.samples)
    assert 8 <= len(train) <= 32  # about half
    assert build_dataset("folder", tmp_path, split="train").samples == train.samples


def test_folder_errors(tmp_path):
    _raises(lambda: build_dataset("folder", tmp_path, split="all"), tmp_path.name, None, "no class folders")
    _jpeg(tmp_path / "train" / "cat" / "0.jpg")
    _raises(lambda: build_dataset("folder", tmp_path), "test", None, "needs test/ too")


# --------------------------------------------------------------------------------------------- real photos


@pytest.mark.cub100
def test_cub100_counts_and_items(cub100_root):
    train, test, full = (build_dataset("cub200", cub100_root, split=s) for s in ("train", "test", "all"))
    # Figures stated by the issue and the set's README ...
    assert (len(full.classes), len(full), len(train), len(test)) == (100, 5902, 2903, 2999)
    # ... and recounted straight from the raw files.
    flags = [line.split()[1] for line in (cub100_root / "train_test_split.txt").read_text().split("\n") if line]
    assert (flags.count("1"), flags.count("0")) == (len(train), len(test))
    assert len({line.split()[1] for line in (cub100_root / "image_class_labels.txt").read_text().split("\n")
                if line}) == len(full.classes)
    assert set(train.targets) == set(test.targets) == set(range(100))
    assert full.classes[0] == "001.Black_footed_Albatross"

    from engine.preprocess import eval_transform

    img, label, path = test[0]
    assert isinstance(img, Image.Image) and isinstance(label, int) and Path(path).is_file()
    tensor_ds = build_dataset("cub200", cub100_root, split="test", transform=eval_transform(64))
    x, label2, path2 = tensor_ds[0]
    assert tuple(x.shape) == (3, 64, 64) and (label2, path2) == (label, path)


# --------------------------------------------------------------------------------------------- vs torchvision


def _tv_paths(ds) -> list[str]:
    """torchvision's own sample paths (private attributes: used here only as the independent reference)."""
    if hasattr(ds, "_samples"):
        return [str(p) for p, _ in ds._samples]
    return [str(p) for p in ds._image_files]


@pytest.mark.parametrize("name", ["cars", "aircraft", "flowers102"])
def test_readers_list_what_torchvision_lists(tmp_path, monkeypatch, name):
    """Our parsing of the official files gives torchvision's samples: same paths, same labels (read through
    its public ``__getitem__``), same order, same class names."""
    from torchvision import datasets as tvd

    if name == "cars":
        make_cars(tmp_path)
        refs = {"train": tvd.StanfordCars(str(tmp_path), split="train"),
                "test": tvd.StanfordCars(str(tmp_path), split="test")}
    elif name == "aircraft":
        make_aircraft(tmp_path)
        refs = {s: tvd.FGVCAircraft(str(tmp_path), split=t, annotation_level="variant")
                for s, t in (("train", "trainval"), ("test", "test"))}
    else:
        make_flowers(tmp_path)
        monkeypatch.setattr(tvd.Flowers102, "_check_integrity", lambda self: True)  # fixture files, other md5
        refs = {s: tvd.Flowers102(str(tmp_path), split=s) for s in ("train", "test")}
    for split, ref in refs.items():
        ours = build_dataset(name, tmp_path, split=split)
        assert [p for p, _ in ours.samples] == _tv_paths(ref)
        assert ours.targets == [ref[i][1] for i in range(len(ref))]
        assert ours.classes == list(ref.classes)
