"""Files written whole: the one way this project replaces a local file.

A new file is written under a hidden name beside its target, flushed to disk,
given the permissions the process umask allows and renamed over the target, so
a reader (another process, a crash, a power cut) sees the old file or the new
one, never a part. Checkpoints use it directly; every other local output goes
through :class:`fcnrs.pipeline.storage.Location`, which uses it too. It lives in
the lowest room because checkpoints are written here and every room may use it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

__all__ = ["replaced_whole"]


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replaced_whole(
    path: str | PathLike[str], *, mode: int | None = None, keep_suffix: bool = False
) -> Iterator[Path]:
    """A hidden file beside ``path`` to write the new content into (its name ends
    in ``.tmp``, so no reader that lists the folder by suffix takes it for one of
    its files, even when a crash leaves it behind); when the block succeeds it is fsynced, given
    ``mode`` and renamed over ``path``; when it fails, ``path`` is untouched and
    the hidden file removed.

    Parameters
    ----------
    path
        The file to replace (or create); its folder is created when missing.
    mode
        Permission bits (default: what the process umask allows, as ``open`` gives).
    keep_suffix
        End the hidden name in ``path``'s own suffix instead (GDAL and OGR
        drivers choose the format by it).

    Yields
    ------
    Path
        Where to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    tmp = path.with_name(
        f".{path.stem}.{tag}{path.suffix}" if keep_suffix else f".{path.name}.{tag}.tmp"
    )
    try:
        yield tmp
        with tmp.open("rb") as fh:  # on disk before the rename makes it the file
            os.fsync(fh.fileno())
        # Some writers (safetensors) create 0600 files, which would hide the file
        # from the other users of a shared file system.
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
