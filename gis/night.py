"""The night as one answer: where scenes overlap, each ground pixel counts once.

**The rule (precedence).** The night's scenes are stacked in name order, the
last name on top: a ground pixel belongs to the last scene, by name, that has a
label there. A scene's nodata never hides another scene's label. Scenes are
compared pixel centre to pixel, by nearest neighbour, as the mosaic samples
them. Name order is a function of the folder alone (no manifest, no clock), so
every copy of a folder gives the same night; name scenes so that the one that
should win sorts last (acquisition date first, as Sentinel-2 product names do).

One rule, used everywhere:

- :func:`in_precedence` orders the mosaic's sources (VRT source order, the GTI
  ``sort_key``), so the mosaic draws the last name on top;
- :func:`~fcnrs.gis.night_areas.night_areas` counts a scene's pixel for the
  night only where no later scene has a label at that pixel's centre
  (:meth:`Night.claimed`);
- :func:`~fcnrs.gis.night_polygons.write_night_polygons` polygonises each
  scene's pixels with the same mask (:meth:`Night.owned`), so the strip two
  scenes share holds one set of outlines.

The night's CRS, for layers that need one (the mosaic, the night's polygons),
is :func:`night_crs`: the CRS most scenes share, ties to the first by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, TypeVar, overload

import numpy as np
import zarr
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location

from .rasters import LabelRaster, PublishedOutput, describe_output, footprint, open_label_raster

T = TypeVar("T")
#: A label raster's path, local or ``s3://``.
P = TypeVar("P", bound="str | PathLike[str] | Location")


def scene_name(where: str | PathLike[str] | Location) -> str:
    """A label raster's scene name: its folder name without ``.zarr``."""
    return Location(where).name.removesuffix(".zarr")


@overload
def in_precedence(items: Iterable[P]) -> list[P]: ...


@overload
def in_precedence(items: Iterable[T], *, name: Callable[[T], str]) -> list[T]: ...


def in_precedence(items: Iterable[Any], *, name: Callable[[Any], str] = scene_name) -> list[Any]:
    """``items`` in the night's drawing order: by scene name (``name`` tells
    it; by default items are label rasters' paths), so that the last one is on
    top where scenes overlap."""
    return sorted(items, key=name)


def night_crs(crss: Sequence[T]) -> T:
    """The CRS most of ``crss`` share (in precedence order); a tie goes to the
    first. Works for any CRS type with ``==`` (pyproj's, rasterio's)."""
    if not crss:
        raise ValueError("no scenes, so no CRS")
    groups: list[list[T]] = []
    for crs in crss:
        group = next((g for g in groups if g[0] == crs), None)
        if group is None:
            groups.append([crs])
        else:
            group.append(crs)
    return max(groups, key=len)[0]  # max keeps the first of equals


@dataclass(frozen=True)
class NightScene:
    """One published label raster as a layer of the night."""

    raster: LabelRaster
    crs: CRS

    @property
    def output(self) -> PublishedOutput:
        return self.raster.output

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def labels(self) -> zarr.Array:
        return self.raster.labels

    @property
    def transform(self) -> Affine:
        return self.output.transform

    @property
    def shape(self) -> tuple[int, int]:
        return self.output.height, self.output.width

    def box(self, crs: CRS | None = None) -> tuple[float, float, float, float]:
        """The raster's bounding box in ``crs`` (its own by default)."""
        ring = np.array(
            footprint(self.transform, self.output.width, self.output.height, self.crs, to_crs=crs)
        )
        return ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()


@dataclass(frozen=True)
class _Later:
    """A later scene as seen from an earlier one: its box in the earlier one's CRS,
    and whether coordinates must be reprojected to look it up."""

    scene: NightScene
    box: tuple[float, float, float, float]
    same_crs: bool


def boxes_meet(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two boxes (xmin, ymin, xmax, ymax) overlap (touching is not enough)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Night:
    """The published label rasters of a night, in precedence order, and which of
    each scene's pixels a later scene claims.

    Raises :class:`OutputError` when there are none, when their class lists
    differ, or when one has no CRS.
    """

    def __init__(self, outputs: Iterable[str | PathLike[str] | Location]) -> None:
        described = in_precedence([describe_output(o) for o in outputs], name=lambda d: d.name)
        if not described:
            raise OutputError("no published label rasters: the night is empty.")
        first = described[0]
        for d in described[1:]:
            if d.classes != first.classes:
                raise OutputError(
                    f"{d.location}: classes {list(d.classes)} differ from {first.name}'s "
                    f"{list(first.classes)}; a night needs one class list (put the scenes "
                    "of each model in its own output folder)."
                )
        scenes = []
        for d in described:
            if not d.crs_wkt:
                raise OutputError(f"{d.location}: has no CRS, so it has no place in the night.")
            scenes.append(NightScene(open_label_raster(d), CRS.from_wkt(d.crs_wkt)))
        self.scenes: list[NightScene] = scenes
        self._later = [self._later_scenes(k) for k in range(len(scenes))]

    def _later_scenes(self, k: int) -> list[_Later]:
        """The later scenes whose box meets scene ``k``'s."""
        scene = self.scenes[k]
        own = scene.box()
        later = []
        for other in self.scenes[k + 1 :]:
            same = other.crs == scene.crs
            box = other.box() if same else other.box(scene.crs)
            if boxes_meet(own, box):
                later.append(_Later(other, box, same))
        return later

    @property
    def classes(self) -> tuple[str, ...]:
        return self.scenes[0].output.classes

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        return self.scenes[0].output.colors

    def crs(self) -> CRS:
        """The night's CRS (:func:`night_crs`)."""
        return night_crs([s.crs for s in self.scenes])

    def overlapped(self, k: int) -> bool:
        """Whether any later scene's box meets scene ``k``."""
        return bool(self._later[k])

    def claimed(self, k: int, window: Window) -> np.ndarray:
        """Pixels of scene ``k`` in ``window`` whose centre falls on a labelled
        (not nodata) pixel of a later scene: those belong to the later scene."""
        scene = self.scenes[k]
        t = scene.transform
        xs0, xs1 = t.c + t.a * window.col, t.c + t.a * window.col_end
        ys0, ys1 = t.f + t.e * window.row, t.f + t.e * window.row_end
        box = (min(xs0, xs1), min(ys0, ys1), max(xs0, xs1), max(ys0, ys1))
        claimed = np.zeros(window.shape, bool)
        for later in self._later[k]:
            if not boxes_meet(box, later.box):
                continue
            cols = t.c + t.a * (np.arange(window.col, window.col_end) + 0.5)
            rows = t.f + t.e * (np.arange(window.row, window.row_end) + 0.5)
            xs, ys = np.meshgrid(cols, rows)
            if not later.same_crs:
                # A Transformer per call: pyproj objects are not shared across threads.
                to = Transformer.from_crs(scene.crs, later.scene.crs, always_xy=True)
                xs, ys = to.transform(xs, ys)
            claimed |= _labelled_at(later.scene, xs, ys, skip=claimed)
        return claimed

    def owned(self, k: int, window: Window, block: np.ndarray) -> np.ndarray:
        """Scene ``k``'s labels in ``window`` (``block``) with the pixels a later
        scene claims set to nodata: what scene ``k`` gives the night."""
        if not self.overlapped(k):
            return block
        return np.where(self.claimed(k, window), np.uint8(NODATA), block)


def _labelled_at(scene: NightScene, xs: np.ndarray, ys: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """Whether ``scene`` has a label at each point (x, y in its CRS): the pixel
    that contains it, nearest neighbour. Points in ``skip`` are not looked up."""
    t = scene.transform
    height, width = scene.shape
    with np.errstate(invalid="ignore"):  # points that did not reproject are NaN
        cols = np.floor((xs - t.c) / t.a)
        rows = np.floor((ys - t.f) / t.e)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & ~skip
    out = np.zeros(xs.shape, bool)
    if not inside.any():
        return out
    cols, rows = cols[inside].astype(np.int64), rows[inside].astype(np.int64)
    r0, c0 = int(rows.min()), int(cols.min())
    window = np.asarray(scene.labels[r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1])
    out[inside] = window[rows - r0, cols - c0] != NODATA
    return out
