"""Polygons per class from label rasters, strip by strip, in bounded memory.

:func:`vectorize` writes one file per label raster: the raster is read one
strip at a time and its polygons are merged across strips in integer pixel
coordinates (:mod:`fcnrs.gis.strips`), measured in metres by their pixels
(:mod:`fcnrs.gis.measures`), mapped through the geotransform
(:mod:`fcnrs.gis.polygons`) and streamed into the file
(:mod:`fcnrs.gis.vector_files`).

Outputs: GeoParquet 1.1 by default (WKB ``geometry``, a ``bbox`` covering
column, small spatially ordered row groups), FlatGeobuf or GeoPackage on
request (through pyogrio's GDAL), to a local folder or to ``s3://`` (written
locally, then uploaded whole). Each file carries the label raster's
fingerprint and the polygon settings: a re-run keeps a current file.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from pyproj import CRS

from fcnrs.pipeline.storage import Location

from .folders import VECTOR_DIR
from .polygons import DEFAULT_SETTINGS, VectorSettings, polygons
from .rasters import LabelRaster, open_label_raster
from .vector_files import (
    FORMATS,
    ROW_GROUP_ROWS,
    SETTINGS_KEY,
    SOURCE_KEY,
    Format,
    check_format,
    check_replaceable,
    is_current,
    write_vector_file,
)


def vector_dir(fmt: Format) -> str:
    """The default folder of ``fmt`` files, beside the label rasters:
    :data:`~fcnrs.gis.folders.VECTOR_DIR` for GeoParquet, ``vectors_<fmt>`` for
    the others (a Parquet dataset folder must hold Parquet alone)."""
    return VECTOR_DIR if fmt == "parquet" else f"{VECTOR_DIR}_{fmt}"


def raster_extent(raster: LabelRaster) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of a label raster, in its CRS."""
    height, width = raster.labels.shape[-2:]
    xs, ys = raster.transform * (np.array([0, width, 0, width]), np.array([0, 0, height, height]))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


@dataclass(frozen=True)
class Vectorized:
    """One polygon file (a local path, or a Location in S3), and whether it was
    kept as it was."""

    path: Path | Location
    #: Features written (None when the file was kept).
    features: int | None
    kept: bool = False


def vector_path(
    zarr_path: str | PathLike[str] | Location,
    out_dir: str | PathLike[str] | Location | None,
    *,
    fmt: Format,
) -> Path | Location:
    """``<out_dir>/<stem><suffix>``, by default in :func:`vector_dir` beside the
    label raster, so that the GeoParquet files of every scene of an output
    folder form one dataset."""
    source = Location(zarr_path)
    folder = Location(out_dir) if out_dir is not None else source.parent / vector_dir(fmt)
    return (folder / f"{source.name.removesuffix('.zarr')}{FORMATS[fmt][0]}").native


def vectorize(
    zarr_path: str | PathLike[str] | Location,
    out_dir: str | PathLike[str] | Location | None = None,
    *,
    fmt: Format = "parquet",
    settings: VectorSettings = DEFAULT_SETTINGS,
    force: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Vectorized:
    """Write the polygons of one label raster to ``vector_path(zarr_path, out_dir, fmt=fmt)``.

    A file already made from this very raster with the same settings (its
    :data:`~fcnrs.gis.vector_files.SOURCE_KEY` and
    :data:`~fcnrs.gis.vector_files.SETTINGS_KEY` metadata) is kept unless
    ``force``. A failure leaves any earlier file in place.

    Parameters
    ----------
    zarr_path, out_dir
        A published label raster, and the folder of the file (default:
        :func:`vector_dir` beside the raster); each local or ``s3://``.
    fmt
        GeoParquet, FlatGeobuf or GeoPackage.
    settings
        Simplification and minimum area.
    force
        Rewrite a current file.
    row_group_rows
        Rows per GeoParquet row group.

    Returns
    -------
    Vectorized

    Raises
    ------
    ValueError
        For an unknown ``fmt``.
    OutputError
        When ``zarr_path`` is not a complete label raster, or the file's place
        is taken by a link or a folder.
    """
    fmt = check_format(fmt)
    raster = open_label_raster(zarr_path)
    dst = Location(vector_path(raster.path, out_dir, fmt=fmt))
    stamp = {SOURCE_KEY: raster.fingerprint, SETTINGS_KEY: settings.to_json()}
    if not force and is_current(dst, stamp):
        return Vectorized(dst.native, None, kept=True)
    check_replaceable(dst)
    rows = write_vector_file(
        polygons(raster, settings=settings),
        dst,
        fmt=fmt,
        crs=CRS.from_wkt(raster.crs_wkt) if raster.crs_wkt else None,
        extent=raster_extent(raster),
        layer=raster.name,
        metadata=stamp,
        row_group_rows=row_group_rows,
    )
    return Vectorized(dst.native, rows)
