"""What every benchmark shares: machine description, interleaved timing, the result writer and helpers.

The machines these run on are shared and noisy, so a figure is never an absolute time alone: each
benchmark measures its ceiling (or floor) and its subject *interleaved* in the same run (alternating
repetitions, order rotated) and reports their ratio per repetition; the median ratio is the figure.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CUB100 = Path(os.environ.get("PPSSL_CUB100", REPO.parent / "shared" / "data" / "cub100"))
_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
             "NVPL_BLAS_DEBUG_CPU_TYPE", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF")


# --- machine -------------------------------------------------------------------------------------

def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the other agents' share of the CPUs at the time)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def mem_available_gib() -> float | None:
    """MemAvailable from /proc/meminfo (what a large allocation can use without swapping)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - an optional package that is absent or broken
        return None
    return getattr(mod, "__version__", "?")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def command_line() -> str:
    """The command that produced a result, as one could type it again."""
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and argv:
        argv[0:1] = ["python", "-m", spec.name]
    elif argv:
        argv[0:1] = ["python", os.path.relpath(argv[0], REPO) if os.path.isabs(argv[0]) else argv[0]]
    return " ".join(shlex.quote(a) for a in argv)


def prepare_process(threads: int | None, device: str = "cpu") -> dict:
    """What every ppssl command does first (engine.runtime.tune_allocator: PyTorch's forward without page-fault
    storms), the torch thread count if given, then the machine description for the result file."""
    import torch

    from engine.runtime import tune_allocator

    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    return machine_info(device)


def machine_info(device=None) -> dict:
    """CPU, cores, memory, GPU, package versions, BLAS/OpenMP settings, load, git commit and command."""
    info = {
        "cpu": _cpu_model(), "machine": platform.machine(), "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": _mem_total_gib(), "mem_available_gib": mem_available_gib(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {m: _version(m) for m in ("torch", "torchvision", "numpy", "faiss", "timm", "PIL")},
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
        "load_average": load_average(), "git": _git_commit(), "command": command_line(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            idx = torch.device(device).index if device is not None and str(device).startswith("cuda") else 0
            idx = idx or 0
            props = torch.cuda.get_device_properties(idx)
            info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                           "count": torch.cuda.device_count(), "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        pass
    try:
        import faiss

        info["faiss_threads"] = faiss.omp_get_max_threads()
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    """One markdown line describing the machine and its load when the figures were taken (``info["summary"]``
    for a machine recorded as a line of text, before :func:`machine_info` existed)."""
    if "versions" not in info:
        return info.get("summary", "not recorded")
    v = info["versions"]
    gpu = f", GPU {info['gpu']['name']} ({info['gpu']['memory_gib']} GiB)" if info.get("gpu") else ", no GPU"
    env = ", ".join(f"{k}={val}" for k, val in info["env"].items()) or "no BLAS/OpenMP variables set"
    return (f"{info['cpu']}, {info['usable_cpus']} usable CPUs, {info['mem_total_gib']} GiB RAM{gpu}; "
            f"torch {v['torch']} ({info.get('torch_threads')} threads), torchvision {v['torchvision']}, "
            f"numpy {v['numpy']}, faiss {v['faiss']}; {env}; load average {info['load_average']} at start")


# --- timing --------------------------------------------------------------------------------------

def sync(device=None) -> None:
    """Wait for queued GPU work (timing on CUDA is meaningless without it)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], min_seconds: float = 0.0, device=None, max_calls: int = 10_000) -> float:
    """Seconds per call of ``fn``: called repeatedly until ``min_seconds`` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return elapsed / calls


def interleave(subjects: dict[str, Callable[[], object]], reps: int, *, min_seconds: float = 0.0,
               warmup: bool = True, device=None) -> dict[str, list[float]]:
    """Time every subject ``reps`` times, alternating them (order rotated each repetition).

    Returns name -> seconds per call for each repetition, aligned by repetition so that ratios can be
    taken pairwise (both sides saw the same machine load).
    """
    names = list(subjects)
    if warmup:
        for name in names:
            subjects[name]()
        sync(device)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out[name].append(time_call(subjects[name], min_seconds, device))
    return out


def pairwise_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(num, den) if b > 0]


def stats(xs: Iterable[float]) -> dict:
    """Median, min, max and the count of a list of measurements (None when empty)."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation (numpy's default method)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- results -------------------------------------------------------------------------------------

def md_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table; floats are shown with 4 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ratio: float | None, target: float, higher_is_better: bool) -> str:
    """'met' / 'NOT met' for a ratio against its target."""
    if ratio is None:
        return "not measured"
    ok = ratio >= target if higher_is_better else ratio <= target
    return "met" if ok else "NOT met"


NOTES_MARKER = "<!-- notes -->"
_SECTION = re.compile(r"<!-- (?P<key>[\w.-]+):start -->\n(?P<text>.*?)<!-- (?P=key):end -->\n", re.S)


def write_results(name: str, data, body: str, *, title: str, info: dict | None = None,
                  out_dir: str | os.PathLike | None = None, end_load=None, section: str | None = None,
                  preamble: str | None = None, order: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``.md`` atomically (header: machine, versions, command, load): the one
    writer of every results file of the benchmarks.

    ``data`` is stored under ``"results"`` next to ``"machine"``; the load average at the end of the run is
    recorded too, since the machine is shared (``end_load``: the recorded one, when a table is re-rendered from
    an earlier run's JSON). Hand-written analysis after :data:`NOTES_MARKER` in an existing ``.md`` is kept (a
    rerun refreshes the figures, not the notes).

    ``section``: the file is shared by several commands (or runs), each of which owns one section, between
    ``<!-- section:start -->`` / ``<!-- section:end -->`` markers, and replaces only that one. ``title`` is
    then the section's heading; the file keeps its opening text (everything before the first section), or
    gets ``preamble`` when new; sections are ordered by ``order``, then as they come. The JSON holds every
    section's run under ``"sections"``.
    """
    from engine.atomic import atomic_write_json, atomic_write_text

    out = Path(out_dir) if out_dir is not None else RESULTS
    info = info or machine_info()
    end_load = end_load if end_load is not None else load_average()
    run = {"machine": info, "load_average_end": end_load, "results": data}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    old = md_path.read_text() if md_path.is_file() else ""
    stamp = (f"Run {info['time']} (git {info.get('git')}).\n\n"
             f"Command: `{info['command']}`\n\n"
             f"Machine: {machine_line(info)}; load average {end_load} at the end.\n\n")
    if section is None:
        payload = {"benchmark": name, **run}
        md = f"# {title}\n\n{stamp}{body.strip()}\n"
        if NOTES_MARKER in old:
            md += "\n" + NOTES_MARKER + old.split(NOTES_MARKER, 1)[1]
    else:
        try:
            sections = json.loads(json_path.read_text()).get("sections", {})
        except (OSError, ValueError, AttributeError):
            sections = {}
        payload = {"benchmark": name, "sections": {**sections, section: {"title": title, **run}}}
        texts = {m["key"]: m["text"] for m in _SECTION.finditer(old)}
        texts[section] = f"## {title}\n\n{stamp}{body.strip()}\n"
        first = _SECTION.search(old)
        head = (old[:first.start()] if first else old).rstrip() or (preamble or f"# {name}").rstrip()
        keys = [k for k in order if k in texts] + [k for k in texts if k not in order]
        md = head + "\n" + "".join(f"\n<!-- {k}:start -->\n{texts[k]}<!-- {k}:end -->\n" for k in keys)
    atomic_write_json(json_path, payload)
    atomic_write_text(md_path, md)
    return json_path, md_path


def append_jsonl(name: str, row: dict, *, out_dir: str | os.PathLike | None = None) -> Path:
    """Append ``row`` as one line to ``<out_dir>/<name>.jsonl``: the log a sweep adds to run by run (its table is
    rendered from all lines through :func:`write_results`)."""
    path = (Path(out_dir) if out_dir is not None else RESULTS) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(to_jsonable(row)) + "\n")
    return path


def index_bytes(index) -> int:
    """Size in bytes of a FAISS index as ``faiss.write_index`` stores it."""
    import tempfile

    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def tree_listing(root: Path) -> str:
    """Hash of a folder's files (relative path, size, mtime): a cached result is stale when its data changed."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_version(dirs: Sequence[str] = ("engine", "training"), files: Sequence[Path] = ()) -> str:
    """Hash of the library and trainer sources (plus ``files``, e.g. a config): a run is stale when they change."""
    import hashlib

    h = hashlib.sha256()
    for d in dirs:
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode())
            h.update(p.read_bytes())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def run_key(train_args: Sequence[str]) -> dict:
    """What a training run depends on: its arguments, the content of every file and folder they name (configs,
    data roots, holdout lists) and the code version."""
    named = [Path(a) for a in train_args if not a.startswith("-") and "/" in a and Path(a).exists()]
    named += [Path(a.split("=", 1)[1]) for a in train_args if "=" in a and Path(a.split("=", 1)[1]).is_file()]
    return {"args": list(train_args),
            "inputs": {str(p): tree_listing(p) if p.is_dir() else source_version((), [p]) for p in named},
            "code": source_version()}


def train_once(out: Path, train_args: list[str], log: Path | None = None) -> dict:
    """``ppssl train --out OUT <train_args> --quiet`` unless OUT holds a finished run with the same
    :func:`run_key` (an interrupted one is resumed); returns the run's report with ``wall_seconds`` (of the
    invocation that finished it, or None).

    A finished run whose key differs (other arguments, changed data, config or code), or that has no key, is
    refused, never reused: remove it or use another work folder. Output goes to ``log`` (appended) when given,
    else to this process's stdout.
    """
    import shlex
    import subprocess
    import sys

    from engine.atomic import atomic_write_json

    out = Path(out)
    report, wall, stamp = out / "report.json", out / "wall_seconds.txt", out / "run_key.json"
    key = run_key(train_args)
    if report.is_file():
        have = json.loads(stamp.read_text()).get("key") if stamp.is_file() else None
        if have != key:
            raise SystemExit(f"{out} holds a finished run made with other arguments, data, config or code "
                             f"({'no run_key.json' if have is None else 'run_key.json differs'}); "
                             "remove it or choose another work folder to train afresh")
    else:
        have = json.loads(stamp.read_text()).get("key") if stamp.is_file() else None
        if (out / "resume").is_dir() and have != key:
            raise SystemExit(f"{out} holds an interrupted run made with other arguments, data, config or code; "
                             "remove it or choose another work folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stamp, {"key": key})
        cmd = [sys.executable, "-m", "ppssl", "train", "--out", str(out), *train_args, "--quiet"]
        if (out / "resume" / "state.json").is_file():
            cmd.append("--resume")
        t0 = time.perf_counter()
        if log is None:
            print("$", shlex.join(cmd), flush=True)
            rc = subprocess.call(cmd, cwd=REPO)
        else:
            with open(log, "a") as fh:
                fh.write("$ " + shlex.join(cmd) + "\n")
                fh.flush()
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        if rc != 0:
            raise SystemExit(f"command failed ({rc})" + (f", see {log}" if log else "") + f": {shlex.join(cmd)}")
        wall.write_text(f"{time.perf_counter() - t0:.1f}\n")
    rep = json.loads(report.read_text())
    rep["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    return rep


def cached_json(path: Path, key: dict, compute: Callable[[], dict], field: str = "value") -> dict:
    """``compute()`` once per ``key`` (what the result depends on: settings, data listing, code version): the
    result is kept in ``path`` beside its key and reused only when the key matches; a file made by anything
    else (other settings, other code, an older file without a key) is computed afresh, never reused."""
    from engine.atomic import atomic_write_json

    path = Path(path)
    if path.is_file():
        held = json.loads(path.read_text())
        if isinstance(held, dict) and held.get("key") == key and field in held:
            return held[field]
    value = compute()
    atomic_write_json(path, {"key": key, field: value})
    return value


def stamped_dir(path: Path, key: dict, build: Callable[[Path], object]) -> Path:
    """``build(path)`` unless ``path`` was built under the same ``key`` (kept in ``<path>.key.json`` beside it,
    written only after the build finished); a folder built under another key, or half-built, is removed and
    built again."""
    import shutil

    from engine.atomic import atomic_write_json

    path = Path(path)
    stamp = path.with_name(path.name + ".key.json")
    if path.exists() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return path
    stamp.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    build(path)
    atomic_write_json(stamp, {"key": key})
    return path


def to_jsonable(obj):
    """Round-trip through JSON-friendly types (numpy scalars and arrays become Python numbers and lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# --- inputs --------------------------------------------------------------------------------------

def synthetic_jpegs(out_dir: str | os.PathLike, n: int, size: int = 227, seed: int = 0, classes: int = 10,
                    quality: int = 90) -> Path:
    """Write ``n`` photo-like JPEGs (smooth gradients, blobs and mild noise) under ``out_dir/<class>/``.

    For machines without ../shared/data/cub100, and for galleries larger than it. Existing files are
    kept, so a rerun is cheap. Returns ``out_dir``.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        path = out / f"c{i % classes:03d}" / f"img_{i:07d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        c0, c1, c2 = rng.random((3, 3)) * 255
        a = rng.random()
        base = (c0[None, None] * (1 - xx[..., None] * a) + c1[None, None] * yy[..., None] * (1 - a)
                + c2[None, None] * (xx * yy)[..., None])
        base = base + rng.normal(0, 6, base.shape)
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.integers(0, size, 2)
            r = int(rng.integers(size // 10, size // 3))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im = im.filter(ImageFilter.GaussianBlur(1.0))
        im.save(path, quality=quality)
    return out


def image_source(n: int, synth_dir: str | os.PathLike, size: int = 227) -> tuple[Path, int, str]:
    """A gallery folder and a shard step giving about ``n`` images: ../shared/data/cub100/images when
    present (real photos, used in place), else synthetic JPEGs written to ``synth_dir``.

    Returns (folder, step, description): index every ``step``-th file of the sorted folder.
    """
    images = CUB100 / "images"
    if images.is_dir():
        total = sum(1 for _ in images.rglob("*.jpg"))
        if total >= n:
            step = max(1, total // n)
            return images, step, f"cub100 photos (every {step}th of {total}, 227 px JPEG)"
    folder = synthetic_jpegs(synth_dir, n, size=size)
    return folder, 1, f"{n} synthetic {size} px JPEGs (cub100 not found at {CUB100})"
