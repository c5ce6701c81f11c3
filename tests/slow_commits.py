"""Run a command with a pause after every manifest commit, so a test can kill an index writer mid-way.

Usage: ``python tests/slow_commits.py SECONDS -m ppssl index build ...`` or ``... SECONDS script.py args``.
The pause follows ``Manifest.commit_rows`` (the commit point of builds and adds): the rows are committed,
FAISS and the header are not yet rewritten. Production code carries no test hook for this.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> None:
    seconds, target = float(argv[0]), argv[1:]
    from indexer.manifest import Manifest

    commit = Manifest.commit_rows

    def slow_commit_rows(self, *args, **kwargs):
        ids = commit(self, *args, **kwargs)
        time.sleep(seconds)
        return ids

    Manifest.commit_rows = slow_commit_rows
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(target)
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
