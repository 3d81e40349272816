"""Reading published label rasters back: what exports, area queries and GIS
layers need, and the list of an output folder's finished scenes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.layout import is_complete_attrs
from fcnrs.pipeline.storage import Location
from fcnrs.pipeline.writing import is_complete, read_attrs


@dataclass(frozen=True)
class LabelRaster:
    """A published Zarr label raster, opened for reading."""

    #: Where it is: a local folder, or an ``s3://`` prefix (a Location).
    path: Path | Location
    labels: zarr.Array
    probabilities: zarr.Array | None
    crs_wkt: str | None
    transform: Affine
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    #: SHA-256 of the published group's attributes (model, settings, source file,
    #: grid, classes): equal fingerprints, equal rasters.
    fingerprint: str

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".zarr")


def open_label_raster(path: str | PathLike[str] | Location) -> LabelRaster:
    """Open a published output, local or in S3 (refusing partial or foreign
    folders, naming them)."""
    where = Location(path)
    root_attrs = read_attrs(where)
    if not is_complete_attrs(root_attrs):
        raise OutputError(
            f"{where}: not a complete label raster of this pipeline (missing, still "
            "being written, or written by something else)."
        )
    root = zarr.open_group(where.zarr_store(read_only=True), mode="r", zarr_format=2)
    fingerprint = hashlib.sha256(json.dumps(root_attrs, sort_keys=True).encode("utf-8")).hexdigest()
    labels = root["labels"]
    attrs = dict(labels.attrs)
    gt = [float(v) for v in read_attrs(where / "spatial_ref")["GeoTransform"].split()]
    return LabelRaster(
        path=where.native,
        labels=labels,
        probabilities=root["probabilities"] if "probabilities" in root else None,
        crs_wkt=attrs.get("_CRS", {}).get("wkt"),
        transform=Affine.from_gdal(*gt),
        classes=tuple(attrs["class_names"]),
        colors=tuple(tuple(c) for c in attrs["class_colors"]),
        fingerprint=fingerprint,
    )


def list_outputs(out_dir: str | PathLike[str] | Location) -> list[Location]:
    """Published label rasters (``*.zarr`` carrying the completion marker) of an
    output folder, local or in S3, by name; staging groups are skipped. In S3
    the folder is listed by delimiter (one request, not one per chunk), so an
    output is found whether or not a manifest names it."""
    out = Location(out_dir)
    if not out.remote and not out.path.is_dir():
        raise FileNotFoundError(f"{out}: no such output folder.")
    # (In S3 a missing bucket or a refused listing raises here, naming the URL.)
    names = [n for n in out.children() if n.endswith(".zarr") and not n.startswith(".")]
    return [out / n for n in names if is_complete(out / n)]


def find_outputs(out_dir: str | PathLike[str] | Location) -> list[Path | Location]:
    """:func:`list_outputs` as local paths, or Locations in S3."""
    return [where.native for where in list_outputs(out_dir)]


def as_crs(crs: object) -> CRS:
    """A pyproj CRS from a pyproj or rasterio CRS, WKT, or "EPSG:n"."""
    if isinstance(crs, CRS):
        return crs
    to_wkt = getattr(crs, "to_wkt", None)
    return CRS.from_wkt(to_wkt()) if to_wkt else CRS.from_user_input(crs)


def footprint(
    transform: Affine,
    width: int,
    height: int,
    crs: object,
    to_crs: object | None = None,
    *,
    points: int = 16,
) -> list[tuple[float, float]]:
    """A raster's outline as a closed counter-clockwise ring, ``points`` per edge
    (straight edges bend once reprojected), in ``to_crs`` (x/lon first), or in
    its own ``crs`` when ``to_crs`` is None."""
    t = np.linspace(0, 1, points, endpoint=False)
    cols = np.concatenate([np.zeros_like(t), t * width, np.full_like(t, width), (1 - t) * width])
    rows = np.concatenate([t * height, np.full_like(t, height), (1 - t) * height, np.zeros_like(t)])
    xs, ys = transform @ (np.append(cols, 0.0), np.append(rows, 0.0))
    if to_crs is not None:
        src, dst = as_crs(crs), as_crs(to_crs)
        if src != dst:
            xs, ys = Transformer.from_crs(src, dst, always_xy=True).transform(xs, ys)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


@dataclass(frozen=True)
class PublishedOutput:
    """What a published label raster says of itself, from its consolidated
    metadata alone (one small read, local or in S3; no array is opened)."""

    location: Location
    #: The group's published attributes: model digest, settings, source, grid, ...
    attrs: dict[str, Any]
    height: int
    width: int
    transform: Affine
    crs_wkt: str | None

    @property
    def name(self) -> str:
        return self.location.name.removesuffix(".zarr")

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.attrs["class_names"])

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(c) for c in self.attrs["class_colors"])


def describe_output(path: str | PathLike[str] | Location) -> PublishedOutput:
    """Read a published label raster's metadata (``.zmetadata``), refusing partial
    or foreign folders with :class:`OutputError` naming them."""
    where = Location(path)
    try:
        meta = json.loads((where / ".zmetadata").read_bytes())["metadata"]
    except (OSError, ValueError, KeyError):
        meta = {}
    attrs = meta.get(".zattrs")
    if not is_complete_attrs(attrs):
        raise OutputError(
            f"{where}: not a complete label raster of this pipeline (missing, still "
            "being written, or written by something else)."
        )
    height, width = meta["labels/.zarray"]["shape"]
    gt = [float(v) for v in meta["spatial_ref/.zattrs"]["GeoTransform"].split()]
    crs = meta["labels/.zattrs"].get("_CRS", {}).get("wkt")
    return PublishedOutput(where, attrs, height, width, Affine.from_gdal(*gt), crs)
