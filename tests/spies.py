"""Test-only spies that run inside the local engine's worker process.

The local engine reads in a worker process of its own, where a test's
``monkeypatch`` cannot reach; these functions are picklable, so a test passes
``worker_setup=functools.partial(spies.log_reads, path)`` to ``run_scenes`` and
reads the log the worker wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

from fcnrs.pipeline.batch_reading import SceneReader


def log_reads(log: str) -> None:
    """Append ``<scene path>\\t<open file descriptors>`` to ``log`` for every
    window the worker reads."""
    original = SceneReader.read_into

    def read_into(self, window, *args):
        fds = len(os.listdir("/proc/self/fd"))
        with open(log, "a") as fh:
            fh.write(f"{self.path}\t{fds}\n")
        return original(self, window, *args)

    SceneReader.read_into = read_into


def read_log(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    return [(path, int(fds)) for path, fds in rows]
