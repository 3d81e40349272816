"""Polygons per class of a label array in pixel coordinates, strip by strip.

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
has exactly the vertices a whole-raster polygonization would give.

Connectivity is 4 (edges, not corners): two pixels of a class that touch only
at a corner are separate polygons. A polygon joined at a single vertex is not a
valid simple polygon in OGC terms, and 4 is what GDAL's polygonizer (and
rasterio's ``shapes``) use by default. Nodata (255) never becomes a polygon.
Measures (:mod:`fcnrs.gis.measures`) are summed over a polygon's pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage

from fcnrs.pipeline.labels import NODATA

from .measures import PixelMeasure, strip_measures
from .rasters import LabelArray

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
        area, perimeter = strip_measures(
            block, ids, n=n, row0=row0, above=above, last=last, measure=measure
        )
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
    if carry.row_class is not None and carry.row_group is not None:
        line = np.nan if measure is None else float(measure.horizontal(np.array([row0]))[0])
        _close_lower_edges(carry, carry.row_class, carry.row_group, block[0], line)
        sets = _links(carry.row_class, carry.row_group, strip)
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


def _links(row_class: np.ndarray, row_group: np.ndarray, strip: _Strip) -> list[list[int]]:
    """Sets of carried polygons and new components that are one polygon: a pixel
    of the strip's first row joins the pixel above (of ``row_class``, in the
    carried polygon ``row_group``) when both have its class.
    Members: component ``c`` as ``c``, carried polygon ``g`` as ``-(g + 1)``."""
    first, n1 = strip.ids[0], len(strip.classes)
    same = (row_class != NODATA) & (row_class == strip.block[0])
    pairs = np.unique(row_group[same].astype(np.int64) * n1 + first[same])
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


def _close_lower_edges(
    carry: _Carry, row_class: np.ndarray, row_group: np.ndarray, below: np.ndarray, length: float
) -> None:
    """The previous strip's lower edges (its last row: ``row_class``, in the
    carried polygons ``row_group``), now that the row below them is known."""
    edge = (row_class != NODATA) & (row_class != below)
    keys, counts = np.unique(row_group[edge], return_counts=True)
    for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
        carry.groups[key].perimeter += count * length
