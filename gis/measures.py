"""Metres per pixel, and the area and perimeter of the polygons of one strip.

Measures are the pixels', by the rule of :mod:`fcnrs.gis.areas`: ``area_m2``
is the summed area of the pixels a polygon covers (so per-class sums equal
:func:`~fcnrs.gis.areas.query_areas`), exact on the CRS's ellipsoid for
geographic CRSs; ``perimeter_m`` is the summed length of the pixel edges on its
boundary (holes included): for geographic CRSs an edge along a parallel is that
parallel's arc on the ellipsoid and an edge along a meridian the meridian's arc
(its geodesic). Both describe the pixels, so simplification (drawing) leaves
them unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import CRS, Geod
from rasterio.transform import Affine

from .areas import ellipsoid_axes, row_areas

#: Rows of a strip measured at a time (bounds the per-pixel temporaries).
_MEASURE_ROWS = 64


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
        major, minor = ellipsoid_axes(self.crs)
        e2 = 1 - (minor / major) ** 2
        lat = (t.f + t.e * lines) * unit
        # Radius of the parallel: N(lat) cos(lat), N the prime-vertical radius.
        radius = major * np.cos(lat) / np.sqrt(1 - e2 * np.sin(lat) ** 2)
        return radius * abs(t.a) * unit

    def vertical(self, rows: np.ndarray) -> np.ndarray:
        """m of a vertical pixel edge on each of ``rows``."""
        t, unit = self.transform, self._unit
        rows = np.asarray(rows, dtype=np.float64)
        if not self.crs.is_geographic:
            return np.full(rows.shape, abs(t.e) * unit)
        major, minor = ellipsoid_axes(self.crs)
        geod = Geod(a=major, b=minor)
        to_deg = unit * 180 / math.pi
        lat1 = (t.f + t.e * rows) * to_deg
        lat2 = (t.f + t.e * (rows + 1)) * to_deg
        zeros = np.zeros_like(rows)
        _, _, dist = geod.inv(zeros, lat1, zeros, lat2)  # meridians are geodesics
        return np.abs(np.asarray(dist, dtype=np.float64))


def strip_measures(
    block: np.ndarray,
    ids: np.ndarray,
    *,
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
