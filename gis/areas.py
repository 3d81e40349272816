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
:func:`fcnrs.gis.rasters.find_outputs`; chunks are read through the same zarr
store the pipeline wrote them with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from os import PathLike

import dask
import dask.array as da
import numpy as np
import pandas as pd
from pyproj import CRS, Transformer
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location

from .rasters import LabelRaster, open_label_raster

COLUMNS = ["scene", "output", "class_id", "class_name", "pixels", "area_m2", "area_km2"]
_EDGE_POINTS = 64


def _authalic_q(lat_rad: np.ndarray, e2: float) -> np.ndarray:
    s = np.sin(lat_rad)
    if e2 == 0:
        return 2 * s
    e = math.sqrt(e2)
    return (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def row_areas(crs: CRS, transform: Affine, rows: np.ndarray) -> np.ndarray:
    """Area in m^2 of one pixel on each of ``rows`` (all pixels of a row are equal)."""
    if transform.b or transform.d:
        raise ValueError("Rotated geotransforms are not supported for areas.")
    rows = np.asarray(rows, dtype=np.float64)
    unit = crs.axis_info[0].unit_conversion_factor
    if not crs.is_geographic:
        return np.full(rows.shape, abs(transform.a * transform.e) * unit * unit)
    ell = crs.ellipsoid
    a = ell.semi_major_metre
    e2 = 1 - (ell.semi_minor_metre / a) ** 2
    lat1 = (transform.f + transform.e * rows) * unit
    lat2 = (transform.f + transform.e * (rows + 1)) * unit
    dlon = abs(transform.a) * unit
    return a * a / 2 * dlon * np.abs(_authalic_q(lat2, e2) - _authalic_q(lat1, e2))


def bbox_polygon(
    bbox: Sequence[float], bbox_crs: CRS, crs: CRS
) -> tuple[list[tuple[float, float]], tuple[float, float, float, float]]:
    """The box's outline, densified and reprojected into ``crs``, and its bounds."""
    minx, miny, maxx, maxy = bbox
    corners = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
    t = np.linspace(0, 1, _EDGE_POINTS, endpoint=False)[:, None]
    edges = [(1 - t) * np.array(p) + t * np.array(q) for p, q in itertools.pairwise(corners)]
    xs, ys = np.concatenate(edges).T
    if bbox_crs != crs:
        xs, ys = Transformer.from_crs(bbox_crs, crs, always_xy=True).transform(xs, ys)
    ring = list(zip(np.asarray(xs).tolist(), np.asarray(ys).tolist(), strict=True))
    return ring + ring[:1], (min(xs), min(ys), max(xs), max(ys))


def _chunk_stats(
    block: np.ndarray,
    row0: int,
    col0: int,
    crs: CRS,
    transform: Affine,
    ring: list[tuple[float, float]] | None,
) -> np.ndarray:
    """(2, 256): pixels and m^2 per label value of one chunk."""
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


def _scene_tasks(raster: LabelRaster, bbox: Sequence[float] | None, bbox_crs: CRS | None) -> list:
    if not raster.crs_wkt:
        raise ValueError(f"{raster.path}: has no CRS, so its areas are undefined.")
    crs = CRS.from_wkt(raster.crs_wkt)
    height, width = raster.labels.shape
    window = Window(0, 0, height, width)
    ring = None
    if bbox is not None:
        ring, bounds = bbox_polygon(bbox, bbox_crs or crs, crs)
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
        dask.delayed(_chunk_stats)(
            blocks[i, j], int(rows[i]), int(cols[j]), crs, raster.transform, ring
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
    """Pixels and area per scene and class (columns :data:`COLUMNS`).

    ``classes`` keeps only those class names (or ids, as strings). Every class of
    every scene is listed, with zero where it does not occur.
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
        for class_id, name in enumerate(raster.classes):
            if classes and name not in classes and str(class_id) not in classes:
                continue
            rows.append(
                {
                    "scene": raster.name,
                    "output": str(raster.path),
                    "class_id": class_id,
                    "class_name": name,
                    "pixels": int(total[0, class_id]),
                    "area_m2": float(total[1, class_id]),
                    "area_km2": float(total[1, class_id]) / 1e6,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS).astype(
        {"class_id": "int64", "pixels": "int64", "area_m2": "float64", "area_km2": "float64"}
    )
