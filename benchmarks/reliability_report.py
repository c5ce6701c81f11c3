"""The shared results file of the reliability benchmarks: ``benchmarks/results/reliability.md``.

Each ``benchmarks/reliability_*.py`` script owns one section (between HTML comment markers) and replaces
only that section, so the scripts can be rerun independently.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "reliability.md"
ORDER = ("inputs", "fuzz", "crash", "training", "ui_load")  # section order in the file

HEADER = """# Reliability and security results (issue 6)

Produced by the `benchmarks/reliability_*.py` scripts; each section names the command that wrote it and
the machine it ran on. The fast versions of the same checks run in CI as `tests/reliability/`
(see `docs/reliability.md`).
"""


def setup_paths() -> None:
    """Make ``engine``/``indexer``/... and the ``reliability`` test helpers importable from a script."""
    for p in (REPO, REPO / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def machine() -> str:
    setup_paths()
    from benchmarks.common import machine_info, machine_line

    return machine_line(machine_info())


def update_section(name: str, body: str) -> Path:
    """Replace (or add) section ``name`` of the results file with ``body``."""
    assert name in ORDER, name
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    sections = {n: m.group(1) for n in ORDER
                if (m := re.search(rf"<!-- {n}:start -->\n(.*?)<!-- {n}:end -->\n", text, re.S))}
    sections[name] = body.rstrip("\n") + "\n"
    out = HEADER + "".join(f"\n<!-- {n}:start -->\n{sections[n]}<!-- {n}:end -->\n" for n in ORDER if n in sections)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(out)
    return RESULTS


def command() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO))] + sys.argv[1:])
