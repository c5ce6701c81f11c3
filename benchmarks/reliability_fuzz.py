"""Bad input at length: the hostile corpus through every consumer, then time-bounded fuzzing.

1. ``inputs``: every file of ``benchmarks/reliability/hostile.py``'s corpus through the image opener (path, bytes,
   stream), the ``folder`` dataset reader, ``index build`` and ``ppssl search`` (in-process ``ppssl.cli.main``);
   counts of files tried, accepted, rejected cleanly and crashes (anything but the documented error).
2. ``fuzz``: the Hypothesis targets of ``benchmarks/reliability/fuzz_targets.py`` (image opener; CUB/NABirds,
   Butterfly-200, FGVC-Aircraft, Stanford Dogs annotation parsers), each for ``--seconds`` of random search
   (not derandomised, no example database), in rounds of 200 examples; counts per outcome and every failure.

Usage::

    python -m benchmarks.reliability_fuzz [--seconds 75] [--skip-inputs]

Writes the ``inputs`` and ``fuzz`` sections of ``benchmarks/results/reliability.{md,json}``. About 3 minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from benchmarks.common import machine_info, md_table, write_results
from benchmarks.reliability import PREAMBLE, RESULTS_NAME, SECTIONS

INPUTS_COLUMNS = ["consumer", "files tried", "accepted (decoded as expected)", "rejected cleanly", "wrong verdict",
                  "crashes"]
FUZZ_COLUMNS = ["target", "rounds of 200", "executions", "accepted", "rejected cleanly", "unhandled (crashes)",
                "seconds"]


def run_inputs() -> tuple[dict, str]:
    """The corpus through every consumer: (counts, markdown body)."""
    import contextlib

    import torch

    from benchmarks.reliability.gallery import make_clean_gallery
    from benchmarks.reliability.hostile import make_hostile_corpus
    from engine.checkpoint import save_checkpoint
    from engine.datasets import build_dataset
    from engine.encoder import create_encoder
    from engine.imageio import ImageLoadError, open_image
    from indexer import EmbedOptions, Index, Source, build_index
    from ppssl.cli import main as cli

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ppssl-rel-inputs-"))
    corpus = make_hostile_corpus(tmp / "root" / "hostile")
    rows = []

    def count(consumer, names, fn):
        c = Counter()
        for name in names:
            try:
                c[fn(name)] += 1
            except Exception as exc:  # noqa: BLE001 - a crash is what we count
                c["crash"] += 1
                print(f"crash in {consumer} on {name!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        rows.append((consumer, len(names) - c["not run"], c["accepted"], c["rejected"], c["wrong"], c["crash"]))

    def opener(source_of):
        def fn(name):
            try:
                img = open_image(source_of(name))
            except ImageLoadError:
                return "rejected" if corpus[name].verdict == "reject" else "wrong"
            ok = corpus[name].verdict == "accept" and img.size == corpus[name].size
            return "accepted" if ok else "wrong"
        return fn

    files = corpus.names(kinds=("file",))
    count("open_image(path)", corpus.names(), opener(lambda n: corpus.root / n))
    count("open_image(bytes)", files, opener(lambda n: (corpus.root / n).read_bytes()))
    count("open_image(stream)", files, opener(lambda n: io.BytesIO((corpus.root / n).read_bytes())))

    ds = build_dataset("folder", tmp / "root", split="all")
    listed = {Path(p).name: i for i, (p, _) in enumerate(ds.samples) if Path(p).parent.name == "hostile"}

    def reader(name):
        try:
            ds[listed[name]]
        except ImageLoadError:
            return "rejected" if corpus[name].verdict == "reject" else "wrong"
        return "accepted" if corpus[name].verdict == "accept" else "wrong"
    count("folder dataset items", sorted(listed), reader)

    torch.manual_seed(0)
    save_checkpoint(create_encoder("tinycnn", input_size=64), tmp / "ckpt")
    fifo = [corpus.root / n for n, e in corpus.items() if e.kind == "fifo"]
    for f in fifo:  # `index build` would block on a FIFO until indexer/sources.py checks for regular files
        if _blocks_on_fifo():
            f.unlink()
    quiet = EmbedOptions(num_workers=0, progress=lambda *_: None)
    rep = build_index(tmp / "idx", Source(images=corpus.root), str(tmp / "ckpt"), embed=quiet)
    skipped = {p for p, _ in rep.skipped}
    build_names = corpus.names(kinds=("file", "fifo", "symlink"))

    def built(name):
        link = corpus.root / name
        if not os.path.lexists(link):
            return "not run"  # the FIFO was removed: the indexer would hang on it
        alias = os.readlink(link) if link.is_symlink() else name
        in_skip = name in skipped or alias in skipped or any(p.endswith(name) for p in skipped)
        want_reject = corpus[name].verdict == "reject" or not corpus[name].in_gallery
        if want_reject:
            return "rejected" if in_skip else "wrong"
        return "accepted" if not in_skip else "wrong"
    count("index build (skipped + listed)", build_names, built)

    make_clean_gallery(tmp / "clean")
    build_index(tmp / "clean_idx", Source(images=tmp / "clean"), str(tmp / "ckpt"), embed=quiet)

    def search(name):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli(["search", "--index", str(tmp / "clean_idx"), "-k", "3", "--device", "cpu",
                      str(corpus.root / name)])
        lines = err.getvalue().strip().splitlines()
        if corpus[name].verdict == "reject":
            return "rejected" if rc == 2 and len(lines) == 1 and "Traceback" not in err.getvalue() else "wrong"
        return "accepted" if rc == 0 else "wrong"
    count("ppssl search (status 2, one line)", corpus.names(), search)
    assert Index.open(tmp / "idx").count == rep.added
    marker = "never" if not corpus.payload_marker.exists() else "**UNPICKLED**"
    fifo_removed = bool(fifo) and not (corpus.root / fifo[0].name).exists()
    data = {"entries": len(corpus), "to_reject": len(corpus.names("reject")),
            "valid_but_odd": len(corpus.names("accept")), "omitted": dict(corpus.omitted),
            "consumers": [dict(zip(INPUTS_COLUMNS, r)) for r in rows], "payload_unpickled": marker != "never",
            "fifo_removed_before_build": fifo_removed}
    body = [f"{len(corpus)} corpus entries ({len(corpus.names('reject'))} to reject, "
            f"{len(corpus.names('accept'))} valid but odd); omitted here: "
            + ("; ".join(f"`{k}` ({v})" for k, v in corpus.omitted.items()) or "none") + ".\n",
            md_table(INPUTS_COLUMNS, rows),
            f"\nThe pickle payload in the corpus was unpickled: {marker}. "
            + ("FIFO entries were removed before `index build` because the indexer still blocks on them "
               "(see docs/reliability.md)." if fifo_removed else "")
            + " The UI upload of the same files is covered by "
            "`tests/reliability/test_ui_hostile.py` (Streamlit AppTest).\n"]
    return data, "\n".join(body)


def _blocks_on_fifo() -> bool:
    """Whether the indexer's loader still opens non-regular files (a FIFO would block it forever)."""
    import inspect

    from indexer import sources

    return "S_ISREG" not in inspect.getsource(sources) and "isfile" not in inspect.getsource(sources.ItemFiles)


def run_fuzz(seconds: float) -> tuple[dict, str]:
    """Each Hypothesis target for ``seconds``: (counts and failures, markdown body)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import HypothesisException

    from benchmarks.reliability.fuzz_targets import Tally, annotation_case, check_annotation, check_image, image_inputs

    tally = Tally()
    targets = {"image opener": (image_inputs, check_image),
               "annotation parsers": (annotation_case(), check_annotation)}
    rows, failures = [], []
    for name, (strategy, fn) in targets.items():
        cfg = settings(max_examples=200, deadline=None, database=None, derandomize=False,
                       suppress_health_check=list(HealthCheck))

        def make(target_name, target_fn):
            @cfg
            @given(strategy)
            def one(value):
                tally.run(target_name, target_fn, value)
            return one

        one = make(name, fn)

        t0, rounds = time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            rounds += 1
            try:
                one()
            except (AssertionError, Exception) as exc:  # noqa: BLE001 - a found bug, recorded
                if isinstance(exc, HypothesisException):
                    raise
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
                traceback.print_exc()
        c = tally.counts.get(name, Counter())
        rows.append((name, rounds, sum(c.values()), c["accepted"], c["rejected"], c["crash"],
                     f"{time.monotonic() - t0:.0f}"))
    data = {"seconds_per_target": seconds, "targets": [dict(zip(FUZZ_COLUMNS, r)) for r in rows],
            "failures": failures}
    body = ["Executions include Hypothesis' shrinking replays of a failing input. Image inputs are mutated "
            "seed files of every allowed format, hand-built PNGs with arbitrary header fields, and random bytes "
            "behind each format's magic number; annotation inputs are the official layouts of cub200/nabirds, "
            "butterfly200, aircraft (torchvision) and dogs (MATLAB) with one file mutated.\n",
            md_table(FUZZ_COLUMNS, rows),
            "\nFailures found: " + ("none." if not failures else "\n\n" + "\n".join(f"- {f}" for f in failures)),
            "\nEarlier runs of this script found two bugs, both fixed (docs/reliability.md, \"Fixed by this work\"): "
            "Pillow's AVIF decoder raising `RuntimeError` through `open_image`, and a one-bit change to a Stanford "
            "Dogs `.mat` list that makes scipy 1.17's `loadmat` crash the process with SIGSEGV (regression test: "
            "`test_mat_file_that_crashes_scipy_becomes_an_annotation_error`)."]
    return data, "\n".join(body) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=75.0, help="fuzzing time per target (default 75)")
    ap.add_argument("--skip-inputs", action="store_true", help="only fuzz")
    args = ap.parse_args()
    info = machine_info()
    if not args.skip_inputs:
        data, body = run_inputs()
        path = write_results(RESULTS_NAME, data, body, title="Hostile corpus through every consumer", info=info,
                             section="inputs", preamble=PREAMBLE, order=SECTIONS)[1]
        print(f"wrote the inputs section of {path}")
    data, body = run_fuzz(args.seconds)
    path = write_results(RESULTS_NAME, data, body, title="Fuzzing (Hypothesis)", info=info, section="fuzz",
                         preamble=PREAMBLE, order=SECTIONS)[1]
    print(f"wrote the fuzz section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
