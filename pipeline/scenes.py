"""Turning the operator's ``--scenes`` arguments into a list of scene paths."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")


def expand_scenes(args: Iterable[str]) -> list[str]:
    """Expand files, globs and list files (``.txt``/``.lst``/``.list``, one scene per
    line, ``#`` comments; relative lines are relative to the list file) into paths.

    Order is kept and duplicates dropped. A path that does not exist is kept, so
    the run records it as failed rather than silently doing less than asked.
    """
    out: list[str] = []
    for arg in args:
        if Path(arg).suffix.lower() in LIST_SUFFIXES and Path(arg).is_file():
            base = Path(arg).parent
            for line in Path(arg).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    path = line if "://" in line or Path(line).is_absolute() else str(base / line)
                    out.extend(expand_scenes([path]))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            out.extend(matches if matches else [arg])
        else:
            out.append(arg)
    return list(dict.fromkeys(out))
