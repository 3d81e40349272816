"""Comparing outputs byte for byte, wherever they are."""

from __future__ import annotations

from os import PathLike

from fcnrs.pipeline.storage import Location


def tree_bytes(where: str | PathLike[str] | Location) -> dict[str, bytes]:
    """Every file under a folder (or S3 prefix), by its relative key."""
    loc = Location(where)
    return {k: (loc / k).read_bytes() for k in sorted(loc.list())}
