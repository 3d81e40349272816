"""The polygons of a label raster in map coordinates, as Arrow tables.

:func:`polygons` maps the polygons of :func:`~fcnrs.gis.strips.pixel_polygons`
through the raster's geotransform (only at the end: the merging across strips
works on integer pixel coordinates), simplifies them when asked, and leaves out
the small ones, one Arrow table (:data:`SCHEMA`) per strip read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS
from rasterio.transform import Affine

from .measures import PixelMeasure
from .rasters import LabelArray, LabelRaster
from .strips import PixelPolygons, pixel_polygons

#: Columns of every polygon table and file (GDAL formats drop ``bbox``).
SCHEMA = pa.schema(
    [
        ("scene", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("area_m2", pa.float64()),
        ("perimeter_m", pa.float64()),
        ("model_digest", pa.string()),
        ("geometry", pa.binary()),
        (
            "bbox",
            pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]),
        ),
    ]
)


@dataclass(frozen=True)
class VectorSettings:
    """What the polygons of a raster depend on besides the raster itself."""

    #: Topology-preserving simplification tolerance, in the CRS's units (0: none).
    simplify: float = 0.0
    #: Polygons covering less than this many m^2 are left out (0: none).
    min_area_m2: float = 0.0

    def __post_init__(self) -> None:
        for name in ("simplify", "min_area_m2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0. Got {value!r}.")

    def to_json(self) -> str:
        """The settings as recorded in a polygon file's metadata."""
        return json.dumps({"simplify": self.simplify, "min_area_m2": self.min_area_m2})


#: No simplification, no minimum area.
DEFAULT_SETTINGS = VectorSettings()


def _to_map(transform: Affine) -> Any:
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return apply


def _class_names(classes: Sequence[str], ids: np.ndarray) -> list[str]:
    return [classes[i] if i < len(classes) else f"class {i}" for i in ids.tolist()]


def bbox_column(geoms: np.ndarray) -> pa.StructArray:
    """The ``bbox`` covering column of polygons: xmin, ymin, xmax, ymax."""
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    return pa.StructArray.from_arrays(
        [pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
    )


def with_geometry(table: pa.Table, geoms: np.ndarray) -> pa.Table:
    """``table`` (:data:`SCHEMA`) with new polygons in ``geometry`` and ``bbox``."""
    table = table.set_column(
        table.schema.get_field_index("geometry"), "geometry", pa.array(shapely.to_wkb(geoms))
    )
    return table.set_column(table.schema.get_field_index("bbox"), "bbox", bbox_column(geoms))


def polygons(
    raster: LabelRaster,
    *,
    settings: VectorSettings = DEFAULT_SETTINGS,
    labels: LabelArray | None = None,
) -> Iterator[pa.Table]:
    """The polygons of a label raster in map coordinates, strip by strip.

    Memory holds one strip (one chunk row of the raster, full width) and the
    polygons that reach its lower edge, whatever the raster's size.

    Parameters
    ----------
    raster
        A published label raster (its grid, CRS, classes and model digest).
    settings
        Simplification and minimum area.
    labels
        The labels to polygonise, on the raster's grid (default: the raster's
        own; the night passes a view with the pixels later scenes claim masked).

    Yields
    ------
    pyarrow.Table
        One per strip read (:data:`SCHEMA`): the polygons it finished;
        exteriors counter-clockwise, holes clockwise.

    Raises
    ------
    ValueError
        When ``settings`` asks for a minimum area of a raster without a CRS.
    """
    crs = CRS.from_wkt(raster.crs_wkt) if raster.crs_wkt else None
    if crs is None and settings.min_area_m2:
        raise ValueError(f"{raster.path}: has no CRS, so a minimum area in m^2 is undefined.")
    measure = PixelMeasure(crs, raster.transform) if crs is not None else None
    digest = raster.output.attrs.get("model_digest")
    for batch in pixel_polygons(raster.labels if labels is None else labels, measure):
        keep = batch.area_m2 >= settings.min_area_m2 if settings.min_area_m2 else slice(None)
        yield _table(raster, digest, settings, batch, keep)


def _table(
    raster: LabelRaster,
    digest: str | None,
    settings: VectorSettings,
    batch: PixelPolygons,
    keep: Any,
) -> pa.Table:
    class_id = batch.class_id[keep]
    geoms = batch.geometry[keep]
    if len(geoms):
        geoms = shapely.transform(geoms, _to_map(raster.transform))
        if settings.simplify:
            geoms = shapely.simplify(geoms, settings.simplify, preserve_topology=True)
        geoms = shapely.orient_polygons(geoms)
    n = len(class_id)
    columns = {
        "scene": pa.array([raster.name] * n, pa.string()),
        "class_id": pa.array(class_id.astype(np.int32)),
        "class_name": pa.array(_class_names(raster.classes, class_id), pa.string()),
        "area_m2": pa.array(batch.area_m2[keep], pa.float64()),
        "perimeter_m": pa.array(batch.perimeter_m[keep], pa.float64()),
        "model_digest": pa.array([digest] * n, pa.string()),
        "geometry": pa.array(shapely.to_wkb(geoms) if n else [], pa.binary()),
        "bbox": bbox_column(geoms),
    }
    return pa.table(columns, schema=SCHEMA)
