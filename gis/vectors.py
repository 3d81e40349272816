"""Polygons per class from label rasters, strip by strip, in bounded memory.

A label raster is read one *strip* at a time: full width, one chunk row high
(the only read of the raster, so memory follows the strip, not the scene). In
each strip, pixels of one class that touch along an edge form a component
(:func:`scipy.ndimage.label`, per class), and GDAL's polygonizer
(:func:`rasterio.features.shapes`) turns each component into one polygon with
its holes, in **integer pixel coordinates** (column, row).

A component that reaches the strip's lower edge may go on in the next strip.
Only those are carried over, with the strip's last row of classes and component
ids: when the next strip is read, each pixel of its first row is joined to the
pixel above when both have the same class (union-find over the carried
polygons and the new components). A polygon is finished once none of its
pieces reaches the lower edge of the strip just read; its pieces are then
merged with :func:`shapely.union_all`. Pieces meet along a shared row line at
integer coordinates, so the overlay is exact: the seam dissolves completely,
with no sliver and no gap, and (collinear seam vertices removed) the result
has exactly the vertices a whole-raster polygonization would give. Only at the
end are coordinates mapped through the geotransform.

Connectivity is 4 (edges, not corners): two pixels of a class that touch only
at a corner are separate polygons. A polygon joined at a single vertex is not a
valid simple polygon in OGC terms, and 4 is what GDAL's polygonizer (and
rasterio's ``shapes``) use by default. Nodata (255) never becomes a polygon.

Measures are the pixels', by the rule of :mod:`fcnrs.gis.areas`: ``area_m2``
is the summed area of the pixels a polygon covers (so per-class sums equal
:func:`~fcnrs.gis.areas.query_areas`), exact on the CRS's ellipsoid for
geographic CRSs; ``perimeter_m`` is the summed length of the pixel edges on its
boundary (holes included): for geographic CRSs an edge along a parallel is that
parallel's arc on the ellipsoid and an edge along a meridian the meridian's arc
(its geodesic). Both describe the pixels, so simplification (drawing) leaves
them unchanged.

Outputs (:func:`vectorize`): GeoParquet 1.1 by default (WKB ``geometry``, a
``bbox`` covering column, small spatially ordered row groups), FlatGeobuf or
GeoPackage on request (through pyogrio's GDAL), to a local folder or to
``s3://`` (written locally, then uploaded whole). Each file carries the label
raster's fingerprint and the polygon settings: a re-run keeps a current file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Geod
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.storage import Location, clear_gdal_cache, sync_gdal_env
from fcnrs.pipeline.writing import read_attrs

from .areas import row_areas
from .rasters import LabelRaster, open_label_raster

log = logging.getLogger("fcnrs.vectors")

Format = Literal["parquet", "fgb", "gpkg"]
#: File suffix and GDAL driver of each output format (GeoParquet is written by pyarrow).
FORMATS: dict[str, tuple[str, str | None]] = {
    "parquet": (".parquet", None),
    "fgb": (".fgb", "FlatGeobuf"),
    "gpkg": (".gpkg", "GPKG"),
}
#: Rows per Parquet row group: small enough that a bounding-box filter skips most
#: of a file, large enough to compress well.
ROW_GROUP_ROWS = 4096
#: Rows sorted together (Hilbert order of their box centres) before they are cut
#: into row groups, in row groups.
SORT_WINDOW = 16
#: The key-value metadata (Parquet) or layer metadata (GDAL formats) holding the
#: label raster's fingerprint, and the one holding the polygon settings. (No
#: colon in the names: GDAL reads ``a:b=c`` as the key ``a``.)
SOURCE_KEY = "fcnrs_source_fingerprint"
SETTINGS_KEY = "fcnrs_vector_settings"
#: Rows of a strip measured at a time (bounds the per-pixel temporaries).
_MEASURE_ROWS = 64

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


class LabelArray(Protocol):
    """What is read of a label raster: a 2-D array, sliced one strip at a time."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


# -- measures ------------------------------------------------------------------


@dataclass(frozen=True)
class PixelMeasure:
    """Metres per pixel of one grid, by row: pixel areas, and the lengths of a
    pixel's horizontal edges (along a parallel, for a geographic CRS) and
    vertical edges (along a meridian)."""

    crs: CRS
    transform: Affine

    def __post_init__(self) -> None:
        if self.transform.b or self.transform.d:
            raise ValueError("Rotated geotransforms are not supported for polygons.")

    @property
    def _unit(self) -> float:
        return self.crs.axis_info[0].unit_conversion_factor

    def area(self, rows: np.ndarray) -> np.ndarray:
        """m^2 of one pixel on each of ``rows``."""
        return row_areas(self.crs, self.transform, rows)

    def horizontal(self, lines: np.ndarray) -> np.ndarray:
        """m of a horizontal pixel edge on each row line (line ``r`` is the top of row ``r``)."""
        t, unit = self.transform, self._unit
        lines = np.asarray(lines, dtype=np.float64)
        if not self.crs.is_geographic:
            return np.full(lines.shape, abs(t.a) * unit)
        ell = self.crs.ellipsoid
        e2 = 1 - (ell.semi_minor_metre / ell.semi_major_metre) ** 2
        lat = (t.f + t.e * lines) * unit
        # Radius of the parallel: N(lat) cos(lat), N the prime-vertical radius.
        radius = ell.semi_major_metre * np.cos(lat) / np.sqrt(1 - e2 * np.sin(lat) ** 2)
        return radius * abs(t.a) * unit

    def vertical(self, rows: np.ndarray) -> np.ndarray:
        """m of a vertical pixel edge on each of ``rows``."""
        t, unit = self.transform, self._unit
        rows = np.asarray(rows, dtype=np.float64)
        if not self.crs.is_geographic:
            return np.full(rows.shape, abs(t.e) * unit)
        ell = self.crs.ellipsoid
        geod = Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre)
        to_deg = unit * 180 / math.pi
        lat1 = (t.f + t.e * rows) * to_deg
        lat2 = (t.f + t.e * (rows + 1)) * to_deg
        zeros = np.zeros_like(rows)
        _, _, dist = geod.inv(zeros, lat1, zeros, lat2)  # meridians are geodesics
        return np.abs(np.asarray(dist, dtype=np.float64))


# -- one strip ---------------------------------------------------------------------


def components(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of equal class in ``block``.

    Returns the component id of every pixel (int32, 1..n; 0 for nodata) and the
    class of each id (``classes[0]`` is :data:`NODATA`).
    """
    ids = np.zeros(block.shape, np.int32)
    scratch = np.empty(block.shape, np.int32)
    classes = [np.array([NODATA], np.uint8)]
    n = 0
    for value in np.flatnonzero(np.bincount(block.ravel(), minlength=256)):
        if value == NODATA:
            continue
        mask = block == value
        # The default structure of ndimage.label is the cross: 4-connectivity.
        k = ndimage.label(mask, output=scratch)
        np.add(scratch, n, out=ids, where=mask)
        classes.append(np.full(k, value, np.uint8))
        n += k
    return ids, np.concatenate(classes)


def strip_measures(
    block: np.ndarray,
    ids: np.ndarray,
    n: int,
    row0: int,
    above: np.ndarray | None,
    last: bool,
    measure: PixelMeasure,
) -> tuple[np.ndarray, np.ndarray]:
    """Area and boundary length (m^2, m) of each component id of one strip.

    A pixel edge is on a boundary when the pixel across it has another class (or
    is nodata, or off the raster). ``above`` is the previous strip's last row
    (None at the top of the raster). The strip's lower edge is counted only when
    it is the raster's (``last``): otherwise the next strip decides it.
    """
    height, width = block.shape
    area = np.zeros(n + 1)
    perimeter = np.zeros(n + 1)
    for i0 in range(0, height, _MEASURE_ROWS):
        i1 = min(height, i0 + _MEASURE_ROWS)
        cls = block[i0:i1]
        rows = np.arange(row0 + i0, row0 + i1)
        top = np.empty(cls.shape, bool)
        prev = block[i0 - 1] if i0 else above
        top[0] = True if prev is None else cls[0] != prev
        top[1:] = cls[1:] != cls[:-1]
        bottom = np.empty(cls.shape, bool)
        bottom[:-1] = top[1:]
        bottom[-1] = (block[i1] != cls[-1]) if i1 < height else last
        sides = np.full(cls.shape, 2, np.uint8)
        inner = cls[:, 1:] != cls[:, :-1]
        sides[:, 1:] -= ~inner
        sides[:, :-1] -= ~inner
        lines = measure.horizontal(np.arange(row0 + i0, row0 + i1 + 1))
        edges = (
            top * lines[:-1, None]
            + bottom * lines[1:, None]
            + sides * measure.vertical(rows)[:, None]
        )
        sub = ids[i0:i1].ravel()
        perimeter += np.bincount(sub, weights=edges.ravel(), minlength=n + 1)
        area += np.bincount(sub, weights=np.repeat(measure.area(rows), width), minlength=n + 1)
    return area, perimeter


def strip_polygons(ids: np.ndarray, n: int, row0: int) -> np.ndarray:
    """One polygon per component id (index = id; 0 unused), in pixel coordinates
    (column, row) of the whole raster."""
    out = np.empty(n + 1, dtype=object)
    origin = Affine.translation(0, row0)
    for geom, value in shapes(ids, mask=ids > 0, connectivity=4, transform=origin):
        rings = geom["coordinates"]
        out[int(value)] = shapely.Polygon(rings[0], rings[1:])
    return out


# -- across strips -----------------------------------------------------------------


@dataclass
class _Open:
    """A polygon that reaches the lower edge of the last strip read: not finished."""

    class_id: int
    pieces: list[shapely.Polygon]
    area: float
    perimeter: float
    #: Its component ids in the strip just read.
    comps: list[int] = field(default_factory=list)


@dataclass
class PixelPolygons:
    """Finished polygons in pixel coordinates, with their classes and measures."""

    class_id: np.ndarray
    geometry: np.ndarray
    area_m2: np.ndarray
    perimeter_m: np.ndarray

    def __len__(self) -> int:
        return len(self.class_id)

    @classmethod
    def join(cls, parts: Sequence[PixelPolygons]) -> PixelPolygons:
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("class_id", "geometry", "area_m2", "perimeter_m")
            )
        )


def merge_pieces(pieces: Sequence[shapely.Polygon]) -> shapely.Polygon:
    """Pieces of one polygon cut along row lines, as one exact polygon."""
    if len(pieces) == 1:
        return pieces[0]
    # Integer coordinates: the overlay nodes and dissolves the seams exactly; the
    # seam's collinear vertices go with a zero-tolerance simplification.
    merged = shapely.simplify(shapely.union_all(pieces), 0, preserve_topology=True)
    if not isinstance(merged, shapely.Polygon):  # connected pieces make one polygon
        raise AssertionError(f"pieces of one component merged into a {merged.geom_type}")
    return merged


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb

    def sets(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return out


@dataclass
class _Carry:
    """What one strip leaves to the next: its open polygons, and its last row's
    classes and open-polygon keys (-1 where nodata)."""

    groups: dict[int, _Open] = field(default_factory=dict)
    row_class: np.ndarray | None = None
    row_group: np.ndarray | None = None
    next_key: int = 0


def pixel_polygons(labels: LabelArray, measure: PixelMeasure | None) -> Iterator[PixelPolygons]:
    """Polygons of a label array in pixel coordinates, one batch per strip read
    (the polygons finished by that strip). Reads one chunk row at a time.
    Without a ``measure`` (no CRS), areas and perimeters are NaN."""
    height, _ = labels.shape[-2:]
    step = labels.chunks[0]
    carry = _Carry()
    for row0 in range(0, height, step):
        row1 = min(height, row0 + step)
        block = np.asarray(labels[row0:row1])
        carry, done = _next_strip(block, row0, row1 == height, carry, measure)
        yield done


@dataclass
class _Strip:
    """One strip read: its components, their measures and polygons."""

    block: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    area: np.ndarray
    perimeter: np.ndarray
    polygons: np.ndarray
    #: Per id: the component reaches the strip's lower edge, and the raster goes on.
    reaches_lower: np.ndarray


def _read_strip(
    block: np.ndarray, row0: int, last: bool, above: np.ndarray | None, measure: PixelMeasure | None
) -> _Strip:
    ids, classes = components(block)
    n = len(classes) - 1
    if measure is None:
        area = perimeter = np.full(n + 1, np.nan)
    else:
        area, perimeter = strip_measures(block, ids, n, row0, above, last, measure)
    reaches_lower = np.zeros(n + 1, bool)
    if not last:
        reaches_lower[ids[-1]] = True
        reaches_lower[0] = False
    polygons = strip_polygons(ids, n, row0)
    return _Strip(block, ids, classes, area, perimeter, polygons, reaches_lower)


def _next_strip(
    block: np.ndarray, row0: int, last: bool, carry: _Carry, measure: PixelMeasure | None
) -> tuple[_Carry, PixelPolygons]:
    strip = _read_strip(block, row0, last, carry.row_class, measure)
    sets: list[list[int]] = []
    if carry.row_class is not None:
        line = np.nan if measure is None else float(measure.horizontal(np.array([row0]))[0])
        _close_lower_edges(carry, block[0], line)
        sets = _links(carry, strip)
    next_carry = _Carry(next_key=carry.next_key)
    linked = np.zeros(len(strip.classes), bool)
    finished: list[_Open] = []
    for members in sets:
        group = _join(carry, strip, members)
        linked[group.comps] = True
        if strip.reaches_lower[group.comps].any():
            _keep_open(next_carry, group)
        else:
            finished.append(group)
    # Carried polygons that nothing in this strip continues are finished.
    finished.extend(carry.groups.values())
    for c in np.flatnonzero(~linked & strip.reaches_lower).tolist():
        _keep_open(next_carry, _join(_Carry(), strip, [c]))
    if not last:
        _carry_lower_row(next_carry, strip)
    alone = np.flatnonzero(~linked & ~strip.reaches_lower)
    return next_carry, _finished(strip, alone[alone > 0], finished)


def _links(carry: _Carry, strip: _Strip) -> list[list[int]]:
    """Sets of carried polygons and new components that are one polygon: a pixel
    of the strip's first row joins the pixel above when both have its class.
    Members: component ``c`` as ``c``, carried polygon ``g`` as ``-(g + 1)``."""
    first, n1 = strip.ids[0], len(strip.classes)
    same = (carry.row_class != NODATA) & (carry.row_class == strip.block[0])
    pairs = np.unique(carry.row_group[same].astype(np.int64) * n1 + first[same])
    uf = _UnionFind()
    for key, c in zip((pairs // n1).tolist(), (pairs % n1).tolist(), strict=True):
        uf.union(-(key + 1), c)
    return list(uf.sets().values())


def _join(carry: _Carry, strip: _Strip, members: list[int]) -> _Open:
    """One polygon from carried polygons (taken out of ``carry``) and components."""
    comps = [m for m in members if m > 0]
    olds = [carry.groups.pop(-m - 1) for m in members if m < 0]
    return _Open(
        class_id=int(strip.classes[comps[0]]),
        pieces=[p for g in olds for p in g.pieces] + [strip.polygons[c] for c in comps],
        area=sum(g.area for g in olds) + float(strip.area[comps].sum()),
        perimeter=sum(g.perimeter for g in olds) + float(strip.perimeter[comps].sum()),
        comps=comps,
    )


def _carry_lower_row(carry: _Carry, strip: _Strip) -> None:
    carry.row_class = strip.block[-1].copy()
    owner = np.full(len(strip.classes), -1, np.int64)
    for key, group in carry.groups.items():
        owner[group.comps] = key
    carry.row_group = owner[strip.ids[-1]]


def _finished(strip: _Strip, alone: np.ndarray, merged: list[_Open]) -> PixelPolygons:
    """Components of this strip alone (most of them) and merged polygons."""
    return PixelPolygons(
        class_id=np.concatenate([strip.classes[alone], [g.class_id for g in merged]]).astype(
            np.uint8
        ),
        geometry=np.concatenate(
            [strip.polygons[alone], _objects(merge_pieces(g.pieces) for g in merged)]
        ),
        area_m2=np.concatenate([strip.area[alone], [g.area for g in merged]]),
        perimeter_m=np.concatenate([strip.perimeter[alone], [g.perimeter for g in merged]]),
    )


def _objects(items: Iterable[Any]) -> np.ndarray:
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _keep_open(carry: _Carry, group: _Open) -> None:
    carry.groups[carry.next_key] = group
    carry.next_key += 1


def _close_lower_edges(carry: _Carry, below: np.ndarray, length: float) -> None:
    """The previous strip's lower edges, now that the row below them is known."""
    edge = (carry.row_class != NODATA) & (carry.row_class != below)
    keys, counts = np.unique(carry.row_group[edge], return_counts=True)
    for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
        carry.groups[key].perimeter += count * length


# -- map coordinates -----------------------------------------------------------------


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
        return json.dumps({"simplify": self.simplify, "min_area_m2": self.min_area_m2})


def _to_map(transform: Affine) -> Any:
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return apply


def _class_names(classes: Sequence[str], ids: np.ndarray) -> list[str]:
    return [classes[i] if i < len(classes) else f"class {i}" for i in ids.tolist()]


def polygons(
    raster: LabelRaster, *, settings: VectorSettings = VectorSettings()
) -> Iterator[pa.Table]:
    """The polygons of a label raster as Arrow tables (:data:`SCHEMA`), one per
    strip read, in map coordinates; exteriors counter-clockwise, holes clockwise.

    Memory holds one strip (one chunk row of the raster, full width) and the
    polygons that reach its lower edge, whatever the raster's size.
    """
    crs = CRS.from_wkt(raster.crs_wkt) if raster.crs_wkt else None
    if crs is None and settings.min_area_m2:
        raise ValueError(f"{raster.path}: has no CRS, so a minimum area in m^2 is undefined.")
    measure = PixelMeasure(crs, raster.transform) if crs is not None else None
    digest = (read_attrs(raster.path) or {}).get("model_digest")
    for batch in pixel_polygons(raster.labels, measure):
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
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    bbox = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
    )
    n = len(class_id)
    columns = {
        "scene": pa.array([raster.name] * n, pa.string()),
        "class_id": pa.array(class_id.astype(np.int32)),
        "class_name": pa.array(_class_names(raster.classes, class_id), pa.string()),
        "area_m2": pa.array(batch.area_m2[keep], pa.float64()),
        "perimeter_m": pa.array(batch.perimeter_m[keep], pa.float64()),
        "model_digest": pa.array([digest] * n, pa.string()),
        "geometry": pa.array(shapely.to_wkb(geoms) if n else [], pa.binary()),
        "bbox": bbox,
    }
    return pa.table(columns, schema=SCHEMA)


# -- files -----------------------------------------------------------------------------


def hilbert_key(
    x: np.ndarray, y: np.ndarray, extent: Sequence[float], order: int = 16
) -> np.ndarray:
    """Position of points along a Hilbert curve over ``extent`` (xmin, ymin, xmax,
    ymax) on a ``2**order`` grid: nearby keys, nearby points."""
    side = 1 << order
    xmin, ymin, xmax, ymax = extent
    scale = (side - 1) / max(xmax - xmin, ymax - ymin, 1e-300)
    xi = np.clip(((x - xmin) * scale).astype(np.int64), 0, side - 1)
    yi = np.clip(((y - ymin) * scale).astype(np.int64), 0, side - 1)
    key = np.zeros_like(xi)
    s = side >> 1
    while s:
        rx = (xi & s) > 0
        ry = (yi & s) > 0
        key += s * s * ((3 * rx) ^ ry)
        flip = ~ry & rx
        xi = np.where(flip, side - 1 - xi, xi)
        yi = np.where(flip, side - 1 - yi, yi)
        xi, yi = np.where(ry, xi, yi), np.where(ry, yi, xi)
        s >>= 1
    return key


def raster_extent(raster: LabelRaster) -> tuple[float, float, float, float]:
    height, width = raster.labels.shape[-2:]
    xs, ys = raster.transform * (np.array([0, width, 0, width]), np.array([0, 0, height, height]))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def geo_metadata(crs: CRS | None, bounds: Sequence[float] | None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata: WKB polygons, PROJJSON CRS, the ``bbox``
    column as the covering, and the file's bounds where it has features."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": crs.to_json_dict() if crs is not None else None,
        "orientation": "counterclockwise",
        "edges": "planar",
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bounds is not None:
        column["bbox"] = [float(v) for v in bounds]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _boxes(table: pa.Table) -> np.ndarray:
    """(n, 4): xmin, ymin, xmax, ymax of every row."""
    box = table.column("bbox").combine_chunks()
    return np.column_stack([box.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])


def write_geoparquet(
    tables: Iterable[pa.Table],
    dst: str | PathLike[str] | Location,
    *,
    crs: CRS | None,
    extent: Sequence[float],
    metadata: dict[str, str],
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write GeoParquet 1.1 to ``dst`` (local or ``s3://``), published whole
    (:meth:`~fcnrs.pipeline.storage.Location.staged`).

    Rows come in strip order (top to bottom); each window of :data:`SORT_WINDOW`
    row groups is sorted along a Hilbert curve of its box centres, so every row
    group covers a compact patch and its ``bbox`` statistics let a reader skip
    it. Returns the number of rows.
    """
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    pending: list[pa.Table] = []
    rows = 0
    with Location(dst).staged() as partial:
        with pq.ParquetWriter(
            partial, SCHEMA, compression="zstd", store_schema=False, write_statistics=True
        ) as out:

            def flush() -> None:
                table = pa.concat_tables(pending)
                pending.clear()
                box = _boxes(table)
                centre_x, centre_y = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
                order = np.argsort(hilbert_key(centre_x, centre_y, extent), kind="stable")
                out.write_table(table.take(order), row_group_size=row_group_rows)

            for table in tables:
                if not table.num_rows:
                    continue
                box = _boxes(table)
                bounds = np.concatenate(
                    [
                        np.minimum(bounds[:2], box[:, :2].min(0)),
                        np.maximum(bounds[2:], box[:, 2:].max(0)),
                    ]
                )
                pending.append(table)
                rows += table.num_rows
                if sum(t.num_rows for t in pending) >= row_group_rows * SORT_WINDOW:
                    flush()
            if pending:
                flush()
            geo = geo_metadata(crs, bounds if rows else None)
            out.add_key_value_metadata({"geo": json.dumps(geo), **metadata})
    return rows


def write_ogr(
    tables: Iterable[pa.Table],
    dst: str | PathLike[str] | Location,
    *,
    driver: str,
    crs: CRS | None,
    layer: str,
    metadata: dict[str, str],
) -> int:
    """Write FlatGeobuf or GeoPackage through pyogrio (its own GDAL), streaming,
    to a local staging file published whole onto ``dst`` (local or ``s3://``). The
    ``bbox`` column is dropped:
    both formats keep their own spatial index. Returns the number of rows."""
    import pyogrio

    schema = SCHEMA.remove(SCHEMA.get_field_index("bbox"))
    rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for table in tables:
            rows += table.num_rows
            yield from table.drop_columns(["bbox"]).to_batches()

    with Location(dst).staged() as partial:
        pyogrio.write_arrow(
            pa.RecordBatchReader.from_batches(schema, batches()),
            partial,
            driver=driver,
            layer=layer,
            geometry_name="geometry",
            geometry_type="Polygon",
            crs=crs.to_wkt() if crs is not None else None,
            layer_metadata=metadata,
            # GeoPackage 1.2: what GDAL 3.6 and QGIS of that age read without a warning.
            dataset_options={"VERSION": "1.2"} if driver == "GPKG" else None,
        )
    return rows


def file_metadata(path: str | PathLike[str] | Location) -> dict[str, str]:
    """The key-value metadata of a GeoParquet file, or the layer metadata of a
    GDAL vector file, local or in S3; empty when it cannot be read."""
    where = Location(path)
    try:
        if where.name.endswith(".parquet"):
            with where.open() as fh:  # in S3: range reads of the footer only
                meta = pq.read_metadata(fh).metadata or {}
            return {k.decode(): v.decode() for k, v in meta.items()}
        import pyogrio

        if where.remote:
            sync_gdal_env()
            clear_gdal_cache()  # the file may have been republished since it was read
        return dict(pyogrio.read_info(where.gdal_path).get("layer_metadata") or {})
    except Exception:  # missing, not a file of ours, or damaged: written anew
        return {}


@dataclass(frozen=True)
class Vectorized:
    """One scene's vector file (a local path, or a Location in S3), and whether
    it was kept as it was."""

    path: Path | Location
    #: Features written (None when the file was kept).
    features: int | None
    kept: bool = False


def vector_path(
    zarr_path: str | PathLike[str] | Location,
    out_dir: str | PathLike[str] | Location | None,
    fmt: Format,
) -> Path | Location:
    """``<out_dir>/<stem><suffix>``. By default ``out_dir`` is ``vectors/`` beside
    the label raster, so the GeoParquet files of every scene of an output folder
    form one dataset; FlatGeobuf and GeoPackage files go to ``vectors_fgb/`` and
    ``vectors_gpkg/``, since a Parquet dataset folder must hold Parquet alone."""
    source = Location(zarr_path)
    default = "vectors" if fmt == "parquet" else f"vectors_{fmt}"
    folder = Location(out_dir) if out_dir is not None else source.parent / default
    return (folder / f"{source.name.removesuffix('.zarr')}{FORMATS[fmt][0]}").native


def vectorize(
    zarr_path: str | PathLike[str] | Location,
    out_dir: str | PathLike[str] | Location | None = None,
    *,
    fmt: Format = "parquet",
    settings: VectorSettings = VectorSettings(),
    force: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Vectorized:
    """Write the polygons of one label raster to ``vector_path(zarr_path, out_dir, fmt)``.
    Either may be local or ``s3://``.

    A file already made from this very raster with the same settings (its
    :data:`SOURCE_KEY` and :data:`SETTINGS_KEY` metadata) is kept unless
    ``force``. A failure leaves any earlier file in place.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}. Got {fmt!r}.")
    raster = open_label_raster(zarr_path)
    dst = Location(vector_path(raster.path, out_dir, fmt))
    stamp = {SOURCE_KEY: raster.fingerprint, SETTINGS_KEY: settings.to_json()}
    if not force and all(file_metadata(dst).get(k) == v for k, v in stamp.items()):
        return Vectorized(dst.native, None, kept=True)
    if dst.is_link() or (not dst.remote and dst.path.is_dir()):
        raise OutputError(f"{dst}: is a link or a folder; it was left untouched.")
    crs = CRS.from_wkt(raster.crs_wkt) if raster.crs_wkt else None
    tables = polygons(raster, settings=settings)
    driver = FORMATS[fmt][1]
    if driver is None:
        rows = write_geoparquet(
            tables,
            dst,
            crs=crs,
            extent=raster_extent(raster),
            metadata=stamp,
            row_group_rows=row_group_rows,
        )
    else:
        rows = write_ogr(tables, dst, driver=driver, crs=crs, layer=raster.name, metadata=stamp)
    return Vectorized(dst.native, rows)
