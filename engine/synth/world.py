"""Write the synthetic world to disk in the CUB_200_2011 layout (birds at the root, coarse families in coarse/).

Layout (both at ``out_dir`` and at ``out_dir/coarse``)::

    images/NNN.Class_Name/Class_Name_XXXX.jpg
    images.txt  classes.txt  image_class_labels.txt  train_test_split.txt (1 = train, 0 = test)
    captions.txt            <image_id> <caption>
    attributes.json         (root only) attribute space, small attributes, per-class attributes and neighbours
    synth_config.json       the parameters that decide the pixels; a rerun must match them

Every image is rendered from its own generator seeded by (seed, kind, class, index), so reruns are
byte-identical, --per-class can grow without changing existing images, and an interrupted run resumes: images
already on disk (written atomically) are kept, their captions come from ``.synth_captions.jsonl``.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from engine.synth.attributes import (ATTRIBUTES, CLUSTER_ATTRIBUTES, SMALL_ATTRIBUTES, BirdClass,
                                     nearest_neighbours, select_classes)
from engine.synth.bird import DISCRIMINATIVE_PARTS, PARTS, render_bird_scene
from engine.synth.coarse import FAMILIES, render_coarse
from engine.synth.scenery import SynthError, check_clutter

GENERATOR = "ppssl-synth/1"  # bump when a change alters the pixels, so old worlds are not silently mixed
JPEG_QUALITY = 92
COARSE_TEST_FRACTION = 0.2   # the coarse families train the teacher: keep most of them for training
CONFIG_FILE = "synth_config.json"
CAPTION_LOG = ".synth_captions.jsonl"
MAX_CLASSES = 1000
MAX_SIZE = 1024


@dataclass(frozen=True)
class _Job:
    kind: str        # "bird" or "coarse"
    label: int       # 1-based class id within its dataset
    index: int       # 1-based image number within its class
    rel: str         # path relative to out_dir


def _check(classes, per_class, size, seed, clutter, coarse_per_family, test_fraction) -> None:
    check_clutter(clutter)
    if not (isinstance(classes, int) and 2 <= classes <= MAX_CLASSES):
        raise SynthError(f"--classes must be an integer in [2, {MAX_CLASSES}], got {classes!r}")
    if not (isinstance(per_class, int) and per_class >= 2):
        raise SynthError(f"--per-class must be an integer >= 2 (each class needs a train and a test image), "
                         f"got {per_class!r}")
    if not (isinstance(size, int) and 16 <= size <= MAX_SIZE):
        raise SynthError(f"--size must be an integer in [16, {MAX_SIZE}] pixels, got {size!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise SynthError(f"--seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(coarse_per_family, int) and coarse_per_family >= 0):
        raise SynthError(f"--coarse-per-family must be an integer >= 0, got {coarse_per_family!r}")
    if not (0.0 < float(test_fraction) < 1.0):
        raise SynthError(f"--test-fraction must be strictly between 0 and 1, got {test_fraction!r}")


def _prepare(out: Path, config: dict) -> None:
    """Refuse to mix worlds: ``out`` must be new, empty, or a world generated with the same ``config``."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a directory")
    marker = out / CONFIG_FILE
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError) as e:
            raise SynthError(f"{marker} is unreadable ({e}); delete it or choose another --out") from e
        diff = [f"{k}: {old.get(k)!r} on disk vs {v!r} now" for k, v in config.items() if old.get(k) != v]
        if diff:
            raise SynthError(f"{out} holds a synthetic world made with other parameters ({'; '.join(diff)}); "
                             "choose another --out or delete it")
    elif out.is_dir() and any(out.iterdir()):
        raise SynthError(f"{out} is not empty and is not a synthetic world (no {CONFIG_FILE}); "
                         "choose a new or empty --out")
    atomic_write_json(marker, config)


def _read_caption_log(path: Path) -> dict[str, str]:
    out = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                out[str(rec["path"])] = str(rec["caption"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from an interrupted run: that image is rendered again
    return out


def _split(n: int, test_fraction: float, rng: np.random.Generator) -> list[int]:
    """1 = train, 0 = test; at least one of each per class."""
    n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
    flags = np.ones(n, dtype=int)
    flags[rng.permutation(n)[:n_test]] = 0
    return flags.tolist()


def _jpeg(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4 keeps the small coloured parts
    return buf.getvalue()


def _write_cub(root: Path, names: list[str], jobs: list[_Job], prefix: str, flags: dict[int, list[int]],
               captions: dict[str, str]) -> None:
    """The CUB annotation files for ``jobs`` (ordered by class then index), written atomically."""
    images, labels, split, caps = [], [], [], []
    for image_id, job in enumerate(jobs, start=1):
        rel_images = job.rel[len(prefix) + len("images/"):]
        images.append(f"{image_id} {rel_images}")
        labels.append(f"{image_id} {job.label}")
        split.append(f"{image_id} {flags[job.label][job.index - 1]}")
        caps.append(f"{image_id} {captions[job.rel]}")
    atomic_write_text(root / "classes.txt", "".join(f"{i} {i:03d}.{n}\n" for i, n in enumerate(names, 1)))
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("captions.txt", caps)):
        atomic_write_text(root / name, "\n".join(lines) + "\n")


def _write_json_ordered(path: Path, obj: dict) -> None:
    """JSON in insertion order (classes by id), unlike atomic_write_json which sorts keys."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def generate_world(out_dir, classes: int = 24, per_class: int = 40, size: int = 96, seed: int = 0,
                   clutter: str = "high", coarse_per_family: int = 60, test_fraction: float = 0.5,
                   progress: bool = True) -> dict:
    """Generate (or resume) the synthetic world at ``out_dir``; returns a summary dict.

    Defaults (24 classes x 40 images at 96 px, high clutter, 60 images per coarse family) give a set that small
    CNNs learn on 2 CPU cores in minutes: 96 px is the tinycnn input size, 20 train / 20 test images per class.
    """
    _check(classes, per_class, size, seed, clutter, coarse_per_family, test_fraction)
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare(out, {"generator": GENERATOR, "seed": seed, "size": size, "clutter": clutter, "classes": classes})
    specs: list[BirdClass] = select_classes(classes, seed)
    names = [s.name for s in specs]
    families = [f.title() for f in FAMILIES]  # Bird, Fish, ..., Empty_Scene
    jobs = [_Job("bird", c, i, f"images/{c:03d}.{n}/{n}_{i:04d}.jpg")
            for c, n in enumerate(names, 1) for i in range(1, per_class + 1)]
    cjobs = [_Job("coarse", f, i, f"coarse/images/{f:03d}.{n}/{n}_{i:04d}.jpg")
             for f, n in enumerate(families, 1) for i in range(1, coarse_per_family + 1)]

    log_path = out / CAPTION_LOG
    captions = _read_caption_log(log_path)
    rendered = skipped = 0
    from tqdm.auto import tqdm

    with open(log_path, "a", encoding="utf-8") as log:
        for job in tqdm(jobs + cjobs, desc="synth", unit="img", disable=not progress):
            target = out / job.rel
            if job.rel in captions and target.is_file() and target.stat().st_size > 0:
                skipped += 1
                continue
            if job.kind == "bird":
                scene, caption = render_bird_scene(specs[job.label - 1].attributes,
                                                   np.random.default_rng([seed, 1, job.label, job.index]),
                                                   size, clutter)
                image = scene.image
            else:
                image, caption = render_coarse(FAMILIES[job.label - 1],
                                               np.random.default_rng([seed, 2, job.label, job.index]),
                                               size, clutter)
            atomic_write_bytes(target, _jpeg(image))
            captions[job.rel] = caption
            log.write(json.dumps({"path": job.rel, "caption": caption}) + "\n")
            log.flush()
            rendered += 1
    # compact the log into job order, so a resumed world is byte-identical to one made in a single run
    atomic_write_text(log_path, "".join(json.dumps({"path": j.rel, "caption": captions[j.rel]}) + "\n"
                                        for j in jobs + cjobs))

    flags = {c: _split(per_class, test_fraction, np.random.default_rng([seed, 3, c])) for c in range(1, classes + 1)}
    _write_cub(out, names, jobs, "", flags, captions)
    if coarse_per_family:
        cflags = {f: _split(coarse_per_family, COARSE_TEST_FRACTION, np.random.default_rng([seed, 4, f]))
                  if coarse_per_family >= 2 else [1] * coarse_per_family for f in range(1, len(FAMILIES) + 1)}
        _write_cub(out / "coarse", families, cjobs, "coarse/", cflags, captions)

    neighbours = nearest_neighbours(specs)
    params = {"classes": classes, "per_class": per_class, "size": size, "seed": seed, "clutter": clutter,
              "coarse_per_family": coarse_per_family, "test_fraction": test_fraction}
    _write_json_ordered(out / "attributes.json", {
        "generator": GENERATOR,
        "params": params,
        "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        "small_attributes": list(SMALL_ATTRIBUTES),
        "cluster_attributes": list(CLUSTER_ATTRIBUTES),
        "parts": PARTS,
        "discriminative_parts": list(DISCRIMINATIVE_PARTS),
        "classes": {s.name: {"id": i, "cluster": s.cluster, "attributes": s.attributes,
                             "nearest": neighbours[s.name]} for i, s in enumerate(specs, 1)},
    })
    n_train = sum(sum(f) for f in flags.values())
    return {
        "out_dir": str(out), **params,
        "images": len(jobs), "train": n_train, "test": len(jobs) - n_train,
        "coarse_images": len(cjobs), "families": families,
        "class_names": names, "class_attributes": {s.name: s.attributes for s in specs},
        "rendered": rendered, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2),
    }
