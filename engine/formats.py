"""Reading the versioned JSON documents the project writes (checkpoint configs, index headers)."""

from __future__ import annotations

import json
from pathlib import Path


def read_format_json(path: Path, fmt: str, version: int, required: tuple[str, ...], error: type[Exception],
                     kind: str = "document", newer_than: str = "this engine") -> dict:
    """Parse ``path`` and check its ``format``, ``format_version`` and required keys.

    Raises ``error`` with a one-line message naming the file for anything that does not fit.
    """
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a {fmt} {kind}")
    if doc.get("format_version", 0) > version:
        raise error(f"{path}: format version {doc['format_version']} is newer than {newer_than}")
    for key in required:
        if key not in doc:
            raise error(f"{path}: missing field {key!r}")
    return doc
