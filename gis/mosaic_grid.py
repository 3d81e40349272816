"""The mosaic's pixel grid, planned from its scenes' COGs.

The mosaic's CRS is the one most scenes share (the night's rule,
:func:`~fcnrs.gis.night.night_crs`), or one given. Its grid has the finest
pixel size among the scenes in that CRS, anchored on one of them, so scenes on
a common grid keep their pixels exactly; it covers every scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.storage import Location

from .night import night_crs
from .rasters import footprint, reopen

#: Snapping tolerance, in pixels, for scene edges that sit on the mosaic grid.
_EPS = 1e-6


@dataclass(frozen=True)
class SceneCog:
    """One scene's COG as a piece of the mosaic: where it is, and its grid."""

    name: str
    cog: Path | Location
    crs: CRS
    transform: Affine
    width: int
    height: int
    block: tuple[int, int]  # (rows, cols)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the COG's CRS."""
        t = self.transform  # north-up: the pipeline refuses rotated scenes
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


@dataclass(frozen=True)
class MosaicGrid:
    """The mosaic's pixel grid: CRS, north-up transform, size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def window(self, bounds: Sequence[float]) -> tuple[float, float, float, float]:
        """(col, row, width, height) of a box in this grid's pixels (not rounded)."""
        west, south, east, north = bounds
        col, row = ~self.transform @ (west, north)
        return col, row, (east - west) / self.transform.a, (north - south) / -self.transform.e

    def snapped(self, bounds: Sequence[float]) -> tuple[int, int, int, int]:
        """The smallest whole-pixel window of this grid that covers a box."""
        col, row, width, height = self.window(bounds)
        c0, r0 = math.floor(col + _EPS), math.floor(row + _EPS)
        c1, r1 = math.ceil(col + width - _EPS), math.ceil(row + height - _EPS)
        return c0, r0, c1 - c0, r1 - r0


def read_scene_cog(name: str, cog: str | PathLike[str] | Location) -> SceneCog:
    """A COG's grid, read where it is (in S3 after clearing GDAL's cache: a
    re-segmented scene's COG was just republished)."""
    where = Location(cog).native
    with reopen(where) as src:
        if src.crs is None:
            raise OutputError(f"{cog}: has no CRS, so it cannot take part in a mosaic.")
        return SceneCog(
            name, where, src.crs, src.transform, src.width, src.height, src.block_shapes[0]
        )


def choose_crs(scenes: Sequence[SceneCog]) -> CRS:
    """The CRS most scenes share; ties go to the first scene's (the night's rule,
    :func:`~fcnrs.gis.night.night_crs`)."""
    return night_crs([t.crs for t in scenes])


def bounds_in(scene: SceneCog, crs: CRS) -> tuple[float, float, float, float]:
    """A scene's bounding box in ``crs`` (its densified outline reprojected)."""
    if scene.crs == crs:
        return scene.bounds
    ring = np.array(footprint(scene.transform, scene.width, scene.height, scene.crs, to_crs=crs))
    return ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()


def plan_grid(scenes: Sequence[SceneCog], crs: CRS) -> MosaicGrid:
    """The mosaic grid in ``crs``: the finest pixel size of the scenes already in
    ``crs`` (or of the others once reprojected, when none is), anchored on such a
    scene's origin, covering every scene."""
    native = [t for t in scenes if t.crs == crs]
    if native:
        anchor = min(native, key=lambda t: (abs(t.transform.a), abs(t.transform.e)))
        xres, yres = abs(anchor.transform.a), abs(anchor.transform.e)
        origin = anchor.transform.c, anchor.transform.f
    else:
        sizes = []
        for t in scenes:
            warped, _, _ = calculate_default_transform(t.crs, crs, t.width, t.height, *t.bounds)
            sizes.append((abs(warped.a), abs(warped.e)))
        xres, yres = min(sizes)
        origin = 0.0, 0.0
    boxes = np.array([bounds_in(t, crs) for t in scenes])
    anchor_grid = MosaicGrid(crs, Affine(xres, 0, origin[0], 0, -yres, origin[1]), 0, 0)
    union = boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()
    col, row, width, height = anchor_grid.snapped(union)
    return MosaicGrid(crs, anchor_grid.transform @ Affine.translation(col, row), width, height)
