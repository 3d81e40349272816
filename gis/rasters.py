"""Reading published label rasters back: one reader, one lister, and the
geometry every GIS output shares.

- :func:`describe_output` is the one reader of a label raster's metadata: its
  consolidated ``.zmetadata`` (one small read, local or in S3, and the last
  object a publication writes), refusing partial or foreign folders.
  :func:`open_label_raster` adds the arrays, opened through the same store the
  pipeline wrote them with.
- :func:`list_outputs` is the one lister of an output folder's published label
  rasters.
- :func:`reopen` opens a raster the project wrote (a COG, a VRT) where it is.
- :func:`densified_rectangle` is the one densify-and-reproject of a rectangle:
  a raster's outline (:func:`footprint`) and an area query's bounding box
  (:func:`fcnrs.gis.areas.bbox_polygon`) both bend once reprojected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import zarr
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.layout import is_complete_attrs
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.storage import Location, clear_gdal_cache, sync_gdal_env
from fcnrs.pipeline.writing import is_complete


class LabelArray(Protocol):
    """What is read of a label raster: a 2-D array, sliced one strip or chunk at
    a time (a Zarr array, or a view of one)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def chunks(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class PublishedOutput:
    """What a published label raster says of itself, from its consolidated
    metadata alone (no array is opened)."""

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
        return tuple((int(r), int(g), int(b)) for r, g, b in self.attrs["class_colors"])

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the published group's attributes (model, settings, source
        file, grid, classes): equal fingerprints, equal rasters."""
        text = json.dumps(self.attrs, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_output(path: str | PathLike[str] | Location) -> PublishedOutput:
    """Read a published label raster's metadata, local or in S3.

    Parameters
    ----------
    path
        The label raster (``<out>/<stem>.zarr``): a local folder or an
        ``s3://`` prefix.

    Returns
    -------
    PublishedOutput
        Its attributes, size, geotransform and CRS.

    Raises
    ------
    OutputError
        Naming the folder, when it is missing, still being written, or not a
        label raster of this pipeline.
    """
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


@dataclass(frozen=True)
class LabelRaster:
    """A published label raster opened for reading: its metadata and arrays."""

    output: PublishedOutput
    labels: zarr.Array
    probabilities: zarr.Array | None

    @property
    def path(self) -> Path | Location:
        """Where it is: a local folder, or an ``s3://`` prefix (a Location)."""
        return self.output.location.native

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def crs_wkt(self) -> str | None:
        return self.output.crs_wkt

    @property
    def transform(self) -> Affine:
        return self.output.transform

    @property
    def classes(self) -> tuple[str, ...]:
        return self.output.classes

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        return self.output.colors

    @property
    def fingerprint(self) -> str:
        return self.output.fingerprint


def open_label_raster(path: str | PathLike[str] | Location | PublishedOutput) -> LabelRaster:
    """Open a published label raster, local or in S3, for reading.

    Parameters
    ----------
    path
        The label raster: a local folder or an ``s3://`` prefix, or its
        metadata already read by :func:`describe_output` (not read again).

    Returns
    -------
    LabelRaster
        Its metadata and its ``labels`` (and ``probabilities``, where written)
        arrays.

    Raises
    ------
    OutputError
        As :func:`describe_output` does.
    """
    output = path if isinstance(path, PublishedOutput) else describe_output(path)
    root = zarr.open_group(output.location.zarr_store(read_only=True), mode="r", zarr_format=2)
    labels = root["labels"]
    probabilities = root["probabilities"] if "probabilities" in root else None
    if not isinstance(labels, zarr.Array) or not isinstance(probabilities, zarr.Array | None):
        raise OutputError(f"{output.location}: its labels are not arrays.")
    return LabelRaster(output, labels, probabilities)


def list_outputs(out_dir: str | PathLike[str] | Location) -> list[Location]:
    """The published label rasters of an output folder, by name.

    A label raster is a ``*.zarr`` carrying the completion marker; staging
    groups (hidden names) are skipped. In S3 the folder is listed by delimiter
    (one request, not one per chunk), so an output is found whether or not a
    manifest names it.

    Parameters
    ----------
    out_dir
        An output folder: a local folder or an ``s3://`` prefix.

    Returns
    -------
    list of Location

    Raises
    ------
    FileNotFoundError
        When a local ``out_dir`` is not a folder. (In S3 a missing bucket or a
        refused listing raises :class:`OSError` naming the URL.)
    """
    out = Location(out_dir)
    if not out.remote and not out.path.is_dir():
        raise FileNotFoundError(f"{out}: no such output folder.")
    names = [n for n in out.children() if n.endswith(".zarr") and not n.startswith(".")]
    return [out / n for n in names if is_complete(out / n)]


def reopen(path: str | PathLike[str] | Location) -> rasterio.io.DatasetReader:
    """Open a raster this project wrote (a GeoTIFF, or a mosaic's ``.vrt``), where
    it is.

    In S3, GDAL's HTTP cache is cleared first
    (:func:`~fcnrs.pipeline.storage.clear_gdal_cache`): the file may have been
    republished since this process last read it. GeoTIFFs are opened with the
    scene driver only (:func:`~fcnrs.pipeline.reading.open_raster`), a VRT with
    GDAL's VRT driver.

    Raises
    ------
    SceneError
        For a GeoTIFF that is missing or unreadable.
    rasterio.errors.RasterioIOError
        For a VRT that is missing or unreadable.
    """
    where = Location(path)
    if where.remote:
        clear_gdal_cache()
    if where.name.endswith(".vrt"):
        if where.remote:
            sync_gdal_env()
        return rasterio.open(where.gdal_path, driver="VRT")
    return open_raster(str(where))


def chunk_windows(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[Window]:
    """Chunk-aligned windows covering the last two axes of an array, row by row."""
    height, width = shape[-2:]
    ch, cw = chunks[-2:]
    for r in range(0, height, ch):
        for c in range(0, width, cw):
            yield Window(r, c, min(ch, height - r), min(cw, width - c))


def as_crs(crs: object) -> CRS:
    """A pyproj CRS from a pyproj or rasterio CRS, WKT, or "EPSG:n"."""
    if isinstance(crs, CRS):
        return crs
    to_wkt = getattr(crs, "to_wkt", None)
    return CRS.from_wkt(to_wkt()) if to_wkt else CRS.from_user_input(crs)


def densified_rectangle(
    x0: float, y0: float, x1: float, y1: float, *, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """The closed outline of an axis-aligned rectangle, ``points`` per edge.

    From ``(x0, y0)`` along y to ``(x0, y1)``, along x to ``(x1, y1)``, back
    along y to ``(x1, y0)`` and along x home; the first point is repeated last.
    A straight edge bends once reprojected, so it needs points along it.

    Returns
    -------
    xs, ys : numpy.ndarray
        ``4 * points + 1`` coordinates each.
    """
    t = np.linspace(0, 1, points, endpoint=False)
    dx, dy = x1 - x0, y1 - y0
    xs = np.concatenate([np.full_like(t, x0), x0 + t * dx, np.full_like(t, x1), x0 + (1 - t) * dx])
    ys = np.concatenate([y0 + t * dy, np.full_like(t, y1), y0 + (1 - t) * dy, np.full_like(t, y0)])
    return np.append(xs, x0), np.append(ys, y0)


def reproject_xy(
    xs: np.ndarray, ys: np.ndarray, crs: object, to_crs: object
) -> tuple[np.ndarray, np.ndarray]:
    """Points from ``crs`` into ``to_crs`` (x/lon first); as they are when the
    two are equal."""
    src, dst = as_crs(crs), as_crs(to_crs)
    if src == dst:
        return xs, ys
    x, y = Transformer.from_crs(src, dst, always_xy=True).transform(xs, ys)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def footprint(
    transform: Affine,
    width: int,
    height: int,
    crs: object,
    *,
    to_crs: object | None = None,
    points: int = 16,
) -> list[tuple[float, float]]:
    """A raster's outline as a closed ring, ``points`` per edge.

    Counter-clockwise for a north-up raster. In ``to_crs`` (x/lon first), or
    in the raster's own ``crs`` when ``to_crs`` is None.
    """
    cols, rows = densified_rectangle(0, 0, width, height, points=points)
    xs, ys = transform @ (cols, rows)
    if to_crs is not None:
        xs, ys = reproject_xy(xs, ys, crs, to_crs)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
