"""Project layout rules: import direction between packages, and a working ``ppssl --help``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "training", "indexer", "ui", "api", "ppssl")
# package -> packages it may import (besides itself)
ALLOWED = {
    "engine": set(),
    "training": {"engine"},
    "indexer": {"engine"},
    "ui": {"engine", "indexer"},
    "api": {"engine", "indexer"},
    "ppssl": {"engine", "training", "indexer", "ui", "api"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for dep in _imported_packages(path) - {package} - ALLOWED[package]:
            bad.append(f"{path.relative_to(REPO)} imports {dep}")
    assert not bad, "\n".join(bad)


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "ppssl", "--help"], capture_output=True, text=True, check=True)
    assert "synth" in out.stdout and "eval" in out.stdout


def test_cli_help_does_not_import_torch():
    code = "import sys; from ppssl.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_subcommand_has_help():
    from ppssl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help" and action.__class__.__name__ != "_SubParsersAction":
                assert action.help, f"ppssl {name}: option {action.option_strings or action.dest} has no help"
