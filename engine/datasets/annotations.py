"""Parsing helpers for annotation files that fail with the file and line of the first bad record."""

from __future__ import annotations

import faulthandler
import math
import os
import re
import signal
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engine.datasets.base import AnnotationError

#: Characters no annotation line may hold (tabs separate fields; CR/LF end lines and are stripped).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def require_file(path: Path, hint: str = "") -> Path:
    """``path`` if it is a file, else an :class:`AnnotationError` saying it is missing."""
    if not path.is_file():
        reason = "missing" if not path.exists() else "not a regular file"
        raise AnnotationError(path, reason + (f" ({hint})" if hint else ""))
    return path


def require_dir(path: Path, hint: str = "") -> Path:
    """``path`` if it is a directory, else an :class:`AnnotationError` saying it is missing."""
    if not path.is_dir():
        reason = "missing" if not path.exists() else "not a directory"
        raise AnnotationError(path, reason + (f" ({hint})" if hint else ""))
    return path


def read_records(path: Path, nfields: int, fmt: str, *, rest: bool = False, allow_blank: bool = True,
                 hint: str = "") -> list[tuple[int, list[str]]]:
    """Split each line of a whitespace-separated text file into fields.

    Args:
        path: the annotation file.
        nfields: fields per line.
        fmt: the expected line format, quoted in error messages (e.g. ``"<image_id> <class_id>"``).
        rest: the last field takes the rest of the line (names and paths with spaces); otherwise a line
            with more than ``nfields`` fields is malformed.
        allow_blank: skip blank lines (else they are errors).
        hint: added to the "missing" message (which layout was expected).

    Returns:
        ``(1-based line number, fields)`` per non-blank line.
    """
    require_file(path, hint)
    records: list[tuple[int, list[str]]] = []
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise AnnotationError(path, "not UTF-8 text", lineno) from None
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                text = text.strip()
                bad = _CONTROL.search(text)
                if bad:  # a NUL would truncate a path in the OS, escapes would garble a terminal
                    raise AnnotationError(path, f"control character U+{ord(bad.group()):04X} at column "
                                                f"{bad.start() + 1} (expected {fmt})", lineno)
                if not text:
                    if allow_blank:
                        continue
                    raise AnnotationError(path, f"blank line (expected {fmt})", lineno)
                fields = text.split(None, nfields - 1) if rest else text.split()
                if len(fields) != nfields:
                    raise AnnotationError(path, f"expected {fmt}, got {_clip(text)!r}", lineno)
                records.append((lineno, fields))
    except OSError as exc:
        raise AnnotationError(path, f"unreadable ({exc.strerror or exc})") from None
    if not records:
        raise AnnotationError(path, f"empty (expected lines of {fmt})")
    return records


def parse_int(path: Path, lineno: int | None, token: str, what: str) -> int:
    """``int(token)`` or an :class:`AnnotationError` naming file, line and the bad token."""
    try:
        return int(token)
    except ValueError:
        raise AnnotationError(path, f"{what} {_clip(token)!r} is not an integer", lineno) from None


def parse_float(path: Path, lineno: int | None, token: str, what: str) -> float:
    """A finite ``float(token)`` or an :class:`AnnotationError`."""
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(path, f"{what} {_clip(token)!r} is not a finite number", lineno)
    return value


def relative_image_path(path: Path, lineno: int | None, token: str) -> str:
    """Validate a path listed in an annotation file: relative, no ``..``; returns it with ``/`` separators."""
    rel = token.replace("\\", "/")
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or not parts:
        raise AnnotationError(path, f"image path {_clip(token)!r} must be relative to the images folder", lineno)
    if ".." in parts:
        raise AnnotationError(path, f"image path {_clip(token)!r} leaves the images folder", lineno)
    return rel


def probe_mat(path: Path, timeout: float = 120.0) -> None:
    """Parse a MATLAB file once in a forked child, so a file that crashes or hangs scipy's reader becomes an
    :class:`AnnotationError` instead of killing this process.

    scipy 1.17's ``loadmat`` dereferences a null pointer (SIGSEGV) on some crafted v5 files (found by
    ``benchmarks/reliability_fuzz.py``); torchvision's Cars and Flowers readers call it too. The child only
    parses and exits; the caller then parses the same bytes itself. Without ``os.fork`` this is a no-op.
    """
    import scipy.io

    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # child: parse, report through the exit status only
        code = 1
        try:
            faulthandler.disable()  # its crash is expected and reported by the parent; no traceback dump
            scipy.io.loadmat(os.fspath(path), squeeze_me=True)
            code = 0
        except BaseException:  # noqa: BLE001 - the parent re-parses to get the message
            pass
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AnnotationError(path, f"the MATLAB reader did not finish within {timeout:.0f} s (malformed file?)")
        time.sleep(0.005)
    if os.WIFSIGNALED(status):
        raise AnnotationError(path, f"malformed .mat file: it crashes scipy's MATLAB reader "
                                    f"({signal.Signals(os.WTERMSIG(status)).name})")


def load_mat(path: Path, keys: tuple[str, ...], hint: str = "") -> dict[str, Any]:
    """Load a MATLAB file (scipy, no pickling; crash-probed by :func:`probe_mat`) and check that it holds
    ``keys``."""
    require_file(path, hint)
    try:
        import scipy.io
    except ImportError:
        raise AnnotationError(path, "reading .mat files needs scipy (pip install scipy)") from None
    probe_mat(path)
    try:
        data = scipy.io.loadmat(os.fspath(path), squeeze_me=True)
    except NotImplementedError:
        raise AnnotationError(path, "MATLAB v7.3 (HDF5) files are not supported; expected the official file") \
            from None
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError/MatReadError on garbage
        raise AnnotationError(path, f"not a readable .mat file ({type(exc).__name__}: {exc})") from None
    for key in keys:
        if key not in data:
            found = sorted(k for k in data if not k.startswith("__"))
            raise AnnotationError(path, f"has no variable {key!r} (found: {', '.join(found) or 'none'})")
    return data


def mat_strings(path: Path, key: str, value: Any) -> list[str]:
    """A MATLAB cell array / char array of strings as a list, or an error naming the bad entry."""
    out = []
    for i, item in enumerate(np.atleast_1d(np.asarray(value, dtype=object)).ravel()):
        while isinstance(item, np.ndarray) and item.size == 1:
            item = item.ravel()[0]
        if not isinstance(item, str) or not item.strip():
            raise AnnotationError(path, f"{key}[{i}] is not a non-empty string ({_clip(repr(item))})")
        out.append(item.strip())
    return out


def mat_ints(path: Path, key: str, value: Any) -> list[int]:
    """A MATLAB numeric array of whole numbers as a list of ints, or an error naming the bad entry."""
    out = []
    for i, item in enumerate(np.atleast_1d(np.asarray(value, dtype=object)).ravel()):
        while isinstance(item, np.ndarray) and item.size == 1:
            item = item.ravel()[0]
        try:
            f = float(item)
            ok = math.isfinite(f) and f == int(f)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise AnnotationError(path, f"{key}[{i}] = {_clip(repr(item))} is not an integer")
        out.append(int(f))
    return out


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
