"""Area per class over many label rasters, lazily with dask.

Each published ``<name>.zarr`` is opened with :func:`dask.array.from_zarr` and
reduced chunk by chunk: a chunk turns into a pixel count and an area per label
value, so memory holds a few chunks (one per dask thread), never a scene.

Pixel areas:

- projected CRS: ``|a * e - b * d|`` of the geotransform, in the CRS's linear
  unit, converted to metres;
- geographic CRS: a pixel is a quadrangle between two parallels, whose area on
  the CRS's ellipsoid is exact in closed form:
  ``a^2 / 2 * dlon * (q(lat2) - q(lat1))`` with ``q`` the authalic-latitude
  function (``q = 2 sin(lat)`` on a sphere). Every pixel of a row has the same
  area; rows nearer the poles are smaller.

A bounding box (in its own CRS) is densified and reprojected into each scene's
CRS; a pixel counts when its centre lies inside it. Nodata (255) is never counted.
The published scenes of a folder, local or in S3, are listed by
:func:`fcnrs.gis.rasters.list_outputs`; chunks are read through the same zarr
store the pipeline wrote them with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.delayed import Delayed
from pyproj import CRS
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location

from .rasters import LabelRaster, densified_rectangle, open_label_raster, reproject_xy

#: Columns of :func:`query_areas`' table: one row per scene and class.
COLUMNS = ["scene", "output", "class_id", "class_name", "pixels", "area_m2", "area_km2"]
#: Points per edge of a bounding box reprojected into a scene's CRS.
_EDGE_POINTS = 64


def _authalic_q(lat_rad: np.ndarray, e2: float) -> np.ndarray:
    s = np.sin(lat_rad)
    if e2 == 0:
        return 2 * s
    e = math.sqrt(e2)
    return (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def ellipsoid_axes(crs: CRS) -> tuple[float, float]:
    """Semi-major and semi-minor axes (m) of a geographic CRS's ellipsoid."""
    ell = crs.ellipsoid
    if ell is None:
        raise ValueError(f"{crs.name}: a geographic CRS without an ellipsoid.")
    return ell.semi_major_metre, ell.semi_minor_metre


def row_areas(crs: CRS, transform: Affine, rows: np.ndarray) -> np.ndarray:
    """Area in m^2 of one pixel on each of ``rows`` (all pixels of a row are equal)."""
    if transform.b or transform.d:
        raise ValueError("Rotated geotransforms are not supported for areas.")
    rows = np.asarray(rows, dtype=np.float64)
    unit = crs.axis_info[0].unit_conversion_factor
    if not crs.is_geographic:
        return np.full(rows.shape, abs(transform.a * transform.e) * unit * unit)
    a, b = ellipsoid_axes(crs)
    e2 = 1 - (b / a) ** 2
    lat1 = (transform.f + transform.e * rows) * unit
    lat2 = (transform.f + transform.e * (rows + 1)) * unit
    dlon = abs(transform.a) * unit
    return a * a / 2 * dlon * np.abs(_authalic_q(lat2, e2) - _authalic_q(lat1, e2))


def bbox_polygon(
    bbox: Sequence[float], *, bbox_crs: CRS, crs: CRS
) -> tuple[list[tuple[float, float]], tuple[float, float, float, float]]:
    """The box's outline, densified and reprojected into ``crs``, and its bounds.

    Parameters
    ----------
    bbox
        ``(minx, miny, maxx, maxy)`` in ``bbox_crs``.
    bbox_crs, crs
        The box's CRS, and the CRS to reproject it into.

    Returns
    -------
    ring : list of (x, y)
        A closed ring, :data:`_EDGE_POINTS` points per edge.
    bounds : tuple
        ``(minx, miny, maxx, maxy)`` of the ring.
    """
    minx, miny, maxx, maxy = bbox
    xs, ys = densified_rectangle(minx, miny, maxx, maxy, points=_EDGE_POINTS)
    xs, ys = reproject_xy(xs, ys, bbox_crs, crs)
    ring = list(zip(xs.tolist(), ys.tolist(), strict=True))
    return ring, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def chunk_stats(
    block: np.ndarray,
    *,
    row0: int,
    col0: int,
    crs: CRS,
    transform: Affine,
    ring: list[tuple[float, float]] | None,
) -> np.ndarray:
    """(2, 256): pixels and m^2 per label value of one chunk whose first pixel is
    (``row0``, ``col0``); only pixels whose centre is inside ``ring`` (when
    given, in the raster's CRS) count, and nodata never does."""
    areas = row_areas(crs, transform, np.arange(row0, row0 + block.shape[0]))
    weights = np.broadcast_to(areas[:, None], block.shape)
    keep = block != NODATA
    if ring is not None:
        chunk_transform = transform @ Affine.translation(col0, row0)
        keep &= geometry_mask(
            [{"type": "Polygon", "coordinates": [ring]}],
            out_shape=block.shape,
            transform=chunk_transform,
            invert=True,
        )
    values = block[keep]
    return np.stack(
        [
            np.bincount(values, minlength=256).astype(np.float64),
            np.bincount(values, weights=weights[keep], minlength=256),
        ]
    )


def wanted_classes(names: Sequence[str], classes: Sequence[str] | None) -> list[tuple[int, str]]:
    """``(class id, name)`` of the classes to list: all of them, or those whose
    name or id (as a string) is in ``classes``."""
    return [
        (i, name)
        for i, name in enumerate(names)
        if not classes or name in classes or str(i) in classes
    ]


def area_row(totals: np.ndarray, class_id: int, name: str) -> dict[str, Any]:
    """One class's pixels and area from (2, 256) totals (:func:`chunk_stats`)."""
    return {
        "class_id": class_id,
        "class_name": name,
        "pixels": int(totals[0, class_id]),
        "area_m2": float(totals[1, class_id]),
        "area_km2": float(totals[1, class_id]) / 1e6,
    }


def area_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows of :func:`area_row` (and more columns) as a typed table."""
    return pd.DataFrame(rows, columns=list(columns)).astype(
        {"class_id": "int64", "pixels": "int64", "area_m2": "float64", "area_km2": "float64"}
    )


def _scene_tasks(
    raster: LabelRaster, bbox: Sequence[float] | None, bbox_crs: CRS | None
) -> list[Delayed]:
    if not raster.crs_wkt:
        raise ValueError(f"{raster.path}: has no CRS, so its areas are undefined.")
    crs = CRS.from_wkt(raster.crs_wkt)
    height, width = raster.labels.shape
    window = Window(0, 0, height, width)
    ring = None
    if bbox is not None:
        ring, bounds = bbox_polygon(bbox, bbox_crs=bbox_crs or crs, crs=crs)
        # The pixels whose centres may fall in the box: its bounds in pixel space.
        minx, miny, maxx, maxy = bounds
        cols, rows = ~raster.transform * (
            np.array([minx, maxx, minx, maxx]),
            np.array([miny, miny, maxy, maxy]),
        )
        c0, c1 = max(0, math.floor(min(cols))), min(width, math.ceil(max(cols)))
        r0, r1 = max(0, math.floor(min(rows))), min(height, math.ceil(max(rows)))
        if c0 >= c1 or r0 >= r1:  # the box misses the scene
            return []
        window = Window(r0, c0, r1 - r0, c1 - c0)
    labels = da.from_zarr(raster.labels)  # local or S3: the array opened through its store
    r0, c0 = window.row, window.col
    part = labels[window.slices()]
    rows = np.cumsum((r0, *part.chunks[0]))
    cols = np.cumsum((c0, *part.chunks[1]))
    blocks = part.to_delayed()
    return [
        dask.delayed(chunk_stats)(
            blocks[i, j],
            row0=int(rows[i]),
            col0=int(cols[j]),
            crs=crs,
            transform=raster.transform,
            ring=ring,
        )
        for i in range(blocks.shape[0])
        for j in range(blocks.shape[1])
    ]


def query_areas(
    outputs: Iterable[str | PathLike[str] | Location],
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: str | CRS | None = None,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> pd.DataFrame:
    """Pixels and area per scene and class.

    Parameters
    ----------
    outputs
        Published label rasters, local or ``s3://``.
    bbox
        Count only pixels whose centre is inside ``(minx, miny, maxx, maxy)``.
    bbox_crs
        The CRS of ``bbox`` (default: each scene's own).
    classes
        Keep only these class names (or ids, as strings). Every class of every
        scene is listed otherwise, with zero where it does not occur.
    num_workers
        Threads of the dask scheduler (default: one per CPU).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`.

    Raises
    ------
    OutputError
        When an output is not a complete label raster.
    ValueError
        When a scene has no CRS.
    """
    rasters = [open_label_raster(p) for p in outputs]
    want_crs = CRS.from_user_input(bbox_crs) if bbox_crs is not None else None
    tasks = [_scene_tasks(r, bbox, want_crs) for r in rasters]
    flat = [t for scene in tasks for t in scene]
    results = dask.compute(*flat, scheduler="threads", num_workers=num_workers)
    rows = []
    k = 0
    for raster, scene_tasks in zip(rasters, tasks, strict=True):
        total = np.zeros((2, 256))
        for result in results[k : k + len(scene_tasks)]:
            total += result
        k += len(scene_tasks)
        where = {"scene": raster.name, "output": str(raster.path)}
        rows += [
            area_row(total, class_id, name) | where
            for class_id, name in wanted_classes(raster.classes, classes)
        ]
    return area_table(rows, COLUMNS)
