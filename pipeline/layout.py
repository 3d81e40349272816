"""The attributes of a label raster: pure functions of the scene, grid and classes.

A label raster is a Zarr format 2 group laid out as GDAL's own Zarr driver writes
it (GDAL 3.6 and 3.10 both read the CRS and geotransform of it; neither reads
zarr-python 3's default format 3):

- ``labels``: uint8 ``(y, x)``, :data:`~fcnrs.pipeline.labels.NODATA` = nodata,
  ``_ARRAY_DIMENSIONS = ["y", "x"]``, a ``_CRS`` attribute (WKT2 and PROJJSON),
  class names and colours;
- ``probabilities`` (optional): uint8 ``(class, y, x)``, softmax x 255;
- ``x``, ``y``: 1-D float64 pixel-centre coordinates;
- ``spatial_ref``: a scalar with CF grid-mapping attributes (``crs_wkt``,
  ``GeoTransform``) so xarray users (and rioxarray) see the CRS.

Nothing here does I/O, so every attribute can be tested without writing a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyproj import CRS

from .labels import NODATA
from .planning import TileGrid
from .reading import SceneInfo

#: The group attribute that marks a complete label raster of this project.
OUTPUT_FORMAT = "fcn-remote-sensing-labels/1"


def coordinates(info: SceneInfo) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y coordinates (float64: GDAL derives the geotransform
    from them)."""
    a, _, c, _, e, f = info.transform
    x = c + a * (np.arange(info.width, dtype=np.float64) + 0.5)
    y = f + e * (np.arange(info.height, dtype=np.float64) + 0.5)
    return x, y


def crs_attrs(info: SceneInfo) -> dict[str, Any]:
    """GDAL's ``_CRS`` attribute (none for a scene without a CRS)."""
    if not info.crs_wkt:
        return {}
    crs = CRS.from_wkt(info.crs_wkt)
    return {"_CRS": {"wkt": crs.to_wkt(version="WKT2_2019"), "projjson": crs.to_json_dict()}}


def labels_attrs(
    info: SceneInfo, classes: Sequence[str], colors: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Attributes of the ``labels`` array: dimensions, CRS, CF flags, classes."""
    return {
        "_ARRAY_DIMENSIONS": ["y", "x"],
        **crs_attrs(info),
        "grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref",
        "long_name": "class id",
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in classes),
        "class_names": list(classes),
        "class_colors": [list(map(int, c)) for c in colors],
    }


def probabilities_attrs(info: SceneInfo, classes: Sequence[str]) -> dict[str, Any]:
    """Attributes of the ``probabilities`` array."""
    return {
        "_ARRAY_DIMENSIONS": ["class", "y", "x"],
        **crs_attrs(info),
        "grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref",
        "long_name": "class probability x 255",
        "class_names": list(classes),
    }


def axis_attrs(info: SceneInfo, name: str) -> dict[str, Any]:
    """CF attributes of the ``x`` or ``y`` coordinate array."""
    base = {"_ARRAY_DIMENSIONS": [name]}
    geographic = bool(info.crs_wkt) and CRS.from_wkt(info.crs_wkt or "").is_geographic
    if geographic:
        return base | {
            "standard_name": "longitude" if name == "x" else "latitude",
            "units": "degrees_east" if name == "x" else "degrees_north",
        }
    return base | {
        "standard_name": f"projection_{name}_coordinate",
        "units": "m",
        "long_name": f"{name} coordinate of pixel centre",
    }


def grid_mapping_attrs(info: SceneInfo) -> dict[str, Any]:
    """The CF grid mapping (``spatial_ref``) that xarray and rioxarray read."""
    a, b, c, d, e, f = info.transform
    attrs: dict[str, Any] = {
        "_ARRAY_DIMENSIONS": [],
        "GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e)),
    }
    if info.crs_wkt:
        crs = CRS.from_wkt(info.crs_wkt)
        attrs |= crs.to_cf()
        attrs["crs_wkt"] = crs.to_wkt()
        attrs["spatial_ref"] = crs.to_wkt()
    return attrs


def identity(info: SceneInfo, grid: TileGrid, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The facts that decide the output's bytes: model and settings (in ``attrs``),
    the source file and the tile grid. Equal identities, equal chunks."""
    source = {"source": info.path, "source_size": info.size_bytes}
    source["source_mtime_ns"] = info.mtime_ns
    if info.etag:  # an object in S3: its ETag changes whenever it is replaced
        source["source_etag"] = info.etag
    return jsonable({**attrs, **source, "tile_grid": grid.as_dict()})


def published_attrs(
    ident: Mapping[str, Any],
    *,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    valid_pixels: int,
    tiles: int,
) -> dict[str, Any]:
    """The group attributes written last, with the completion marker. Nothing
    run-specific (no timings), so a resumed run publishes the same bytes."""
    return {
        "format": OUTPUT_FORMAT,
        **ident,
        "class_names": list(classes),
        "class_colors": [list(map(int, c)) for c in colors],
        "nodata": NODATA,
        "valid_pixels": int(valid_pixels),
        "tiles": int(tiles),
        "complete": True,
    }


def has_identity(attrs: Mapping[str, Any] | None, ident: Mapping[str, Any]) -> bool:
    """Whether group attributes carry this identity (model, settings, source, grid)."""
    return attrs is not None and all(attrs.get(k) == v for k, v in ident.items())


def is_ours_attrs(attrs: Mapping[str, Any] | None) -> bool:
    """Whether group attributes carry this project's output-format marker (a
    published label raster, or a staging group being written)."""
    return attrs is not None and attrs.get("format") == OUTPUT_FORMAT


def is_complete_attrs(attrs: Mapping[str, Any] | None) -> bool:
    """Whether group attributes mark a complete label raster of this project."""
    return attrs is not None and is_ours_attrs(attrs) and attrs.get("complete") is True


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as JSON holds them (what is not JSON becomes its ``str``)."""
    plain: dict[str, Any] = json.loads(json.dumps(values, default=str))
    return plain
