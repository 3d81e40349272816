"""Labeled scenes for fine-tuning: the scene table and the class list.

The table is a CSV with columns ``image,label,split`` (split ``train`` or
``val``); relative paths are relative to the CSV. The table, the rasters it
lists and a class file may be local or ``s3://`` (a relative line of a table in
S3 names an object beside it). Each image and its label
raster must share a grid: the same CRS, transform and size, checked from the
headers before any training starts, with an error naming both files.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import cast

from fcnrs.fcn_model import default_colors
from fcnrs.pipeline.errors import SceneError
from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.storage import Location, is_url

SPLITS = ("train", "val")


@dataclass(frozen=True)
class LabeledScene:
    image: str
    label: str
    split: str


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]


def read_scene_table(path: str | PathLike[str]) -> list[LabeledScene]:
    """Read and check the CSV of labeled scenes (grids included), local or in S3."""
    where = Location(path)
    try:
        text = where.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = str(exc).removeprefix(f"{where}: ")  # storage errors name the URL
        raise SceneError(path, f"cannot read the scene table ({reason})") from None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    missing = {"image", "label", "split"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise SceneError(
            path,
            f"expected a CSV with columns image,label,split and at least one row; "
            f"missing {sorted(missing) or 'rows'}",
        )
    scenes = []
    for n, row in enumerate(rows, start=2):
        split = row["split"].strip().lower()
        if split not in SPLITS:
            raise SceneError(path, f"line {n}: split must be train or val, got {row['split']!r}")
        image, label = (beside(where, p) for p in (row["image"].strip(), row["label"].strip()))
        check_same_grid(image, label)
        scenes.append(LabeledScene(image, label, split))
    if not any(s.split == "train" for s in scenes):
        raise SceneError(path, "no scene has split=train")
    return scenes


def beside(table: Location, path: str) -> str:
    """A path from the table: URLs and absolute paths as they are; a relative
    one relative to the table, absolute (Ray workers do not share the driver's
    working directory), in S3 the key beside the table's."""
    if is_url(path) or Path(path).is_absolute():
        return path
    if table.remote:
        key = posixpath.normpath(posixpath.join(PurePosixPath(table.key).parent.as_posix(), path))
        return f"s3://{table.bucket}/{key}"
    return str((table.path.parent / path).resolve())


def check_same_grid(image: str, label: str) -> None:
    """Raise :class:`SceneError` naming both files unless they share CRS, transform
    and size."""
    with open_raster(image) as a, open_raster(label) as b:
        problems = []
        if a.crs != b.crs:
            problems.append(f"CRS {a.crs} vs {b.crs}")
        if not a.transform.almost_equals(
            b.transform, precision=1e-9 * max(abs(a.transform.a), 1e-300)
        ):
            problems.append(f"transform {tuple(a.transform)[:6]} vs {tuple(b.transform)[:6]}")
        if (a.height, a.width) != (b.height, b.width):
            problems.append(f"size {a.height}x{a.width} vs {b.height}x{b.width}")
    if problems:
        raise SceneError(
            image, f"and its label raster {label} do not share a grid: " + "; ".join(problems)
        )


def parse_classes(spec: str) -> ClassList:
    """Class names as ``forest,water,...`` or a JSON/YAML file of names and colours:
    ``[{"name": "water", "color": [0, 0, 255]}, ...]`` or ``{"water": [0, 0, 255], ...}``
    (the file local or in S3)."""
    suffix = PurePosixPath(spec).suffix.lower()
    where = Location(spec) if suffix in (".json", ".yaml", ".yml") else None
    if where is not None and where.is_file():
        text = where.read_bytes().decode("utf-8")
        if suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
        items = (
            list(raw.items())
            if isinstance(raw, dict)
            else [(c["name"], c.get("color")) if isinstance(c, dict) else (c, None) for c in raw]
        )
        names = tuple(str(name) for name, _ in items)
        fallback = default_colors(len(names))
        colors = tuple(
            tuple(int(v) for v in color) if color else fallback[i]
            for i, (_, color) in enumerate(items)
        )
    else:
        names = tuple(n.strip() for n in spec.split(",") if n.strip())
        colors = default_colors(len(names))
    _check_classes(spec, names, colors)  # every colour is an RGB triple from here on
    return ClassList(names, cast(tuple[tuple[int, int, int], ...], colors))


def _check_classes(spec: str, names: Sequence[str], colors: Sequence[Sequence[int]]) -> None:
    if len(names) < 2:
        raise ValueError(f"--classes needs at least two classes. Got {list(names)} from {spec!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be unique. Got {list(names)} from {spec!r}.")
    if len(names) > 255:
        raise ValueError(f"At most 255 classes fit uint8 labels (255 is nodata). Got {len(names)}.")
    bad = [c for c in colors if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
    if bad:
        raise ValueError(f"Colours are RGB triples of 0-255. Got {bad[0]} in {spec!r}.")
