"""Project layout rules: import direction between packages, benchmarks run as modules of a package that reaches
only public names, and a working ``ppssl --help``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "training", "indexer", "ui", "api", "ppssl", "benchmarks")
# package -> packages it may import (besides itself); nothing imports tests/ (checked below for benchmarks/)
ALLOWED = {
    "engine": set(),
    "training": {"engine"},
    "indexer": {"engine"},
    "ui": {"engine", "indexer"},
    "api": {"engine", "indexer"},
    "ppssl": {"engine", "training", "indexer", "ui", "api"},
    "benchmarks": {"engine", "training", "indexer", "ui", "api", "ppssl"},
}
# top-level names that are test code: tests/ itself and what it puts on sys.path (tests/*.py, tests/reliability)
TEST_MODULES = {"tests"} | {p.stem for p in (REPO / "tests").iterdir() if p.suffix == ".py" or p.is_dir()}


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _imported_packages(path: Path) -> set[str]:
    return _imported_modules(path) & set(PACKAGES)


def _benchmark_files() -> list[Path]:
    return sorted((REPO / "benchmarks").rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for dep in _imported_packages(path) - {package} - ALLOWED[package]:
            bad.append(f"{path.relative_to(REPO)} imports {dep}")
    assert not bad, "\n".join(bad)


def test_benchmarks_do_not_import_tests():
    bad = [f"{path.relative_to(REPO)} imports {mod}" for path in sorted((REPO / "benchmarks").rglob("*.py"))
           for mod in sorted(_imported_modules(path) & TEST_MODULES)]
    assert not bad, "\n".join(bad)


def test_benchmarks_run_as_modules_without_sys_path_changes():
    """``python -m benchmarks.NAME`` from the repository root: no script edits ``sys.path``."""
    bad = []
    for path in _benchmark_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("insert", "append", "extend")
                    and ast.unparse(node.func.value) == "sys.path"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def test_benchmarks_import_no_private_names():
    """Benchmarks use the public API of the project's packages: no ``from pkg.mod import _name``."""
    bad = []
    for path in _benchmark_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and node.module.split(".")[0] in PACKAGES:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module} import {', '.join(private)}")
            elif isinstance(node, ast.Import):
                bad += [f"{path.relative_to(REPO)}:{node.lineno} import {a.name}" for a in node.names
                        if a.name.split(".")[0] in PACKAGES and any(part.startswith("_") for part in a.name.split("."))]
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
