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
- :func:`night_areas` counts a scene's pixel for the night only where no later
  scene has a label at that pixel's centre (:meth:`Night.claimed`);
- :func:`write_night_polygons` polygonises each scene's pixels with the same
  mask, so the strip two scenes share holds one set of outlines.

The night's CRS, for layers that need one (the mosaic, the night's polygons),
is :func:`night_crs`: the CRS most scenes share, ties to the first by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
import zarr
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location, is_url

from .areas import COLUMNS, _chunk_stats, bbox_polygon
from .rasters import PublishedOutput, describe_output, footprint, open_label_raster
from .vectors import (
    FORMATS,
    SETTINGS_KEY,
    SOURCE_KEY,
    Format,
    Vectorized,
    VectorSettings,
    file_metadata,
    polygons,
    write_geoparquet,
    write_ogr,
)

T = TypeVar("T")

#: Columns of the night's table: one row per class, each ground pixel once.
NIGHT_COLUMNS = ["class_id", "class_name", "pixels", "area_m2", "area_km2"]
#: Where the night's layers go, inside an output folder (beside the mosaic).
NIGHT_DIR = "mosaic"
#: The night's polygons: ``<out>/mosaic/polygons<suffix>``.
NIGHT_POLYGONS = "polygons"


def scene_name(where: str | PathLike[str] | Location) -> str:
    """A label raster's scene name: its folder name without ``.zarr``."""
    return Location(where).name.removesuffix(".zarr")


def in_precedence(items: Iterable[T], *, name: Callable[[T], str] = scene_name) -> list[T]:
    """``items`` in the night's drawing order: by scene name, so that the last
    one is on top where scenes overlap."""
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

    output: PublishedOutput
    crs: CRS
    labels: zarr.Array

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def transform(self) -> Affine:
        return self.output.transform

    @property
    def shape(self) -> tuple[int, int]:
        return self.output.height, self.output.width

    def box(self, crs: CRS | None = None) -> tuple[float, float, float, float]:
        """The raster's bounding box in ``crs`` (its own by default)."""
        ring = np.array(
            footprint(self.transform, self.output.width, self.output.height, self.crs, crs)
        )
        return ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()


@dataclass(frozen=True)
class _Later:
    """A later scene as seen from an earlier one: its box in the earlier one's CRS,
    and whether coordinates must be reprojected to look it up."""

    scene: NightScene
    box: tuple[float, float, float, float]
    same_crs: bool


def _meets(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Night:
    """The published label rasters of a night, in precedence order, and which of
    each scene's pixels a later scene claims."""

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
            group = zarr.open_group(
                store=d.location.zarr_store(read_only=True), mode="r", zarr_format=2
            )
            scenes.append(NightScene(d, CRS.from_wkt(d.crs_wkt), group["labels"]))
        self.scenes: list[NightScene] = scenes
        self._later: list[list[_Later]] = []
        for k, scene in enumerate(scenes):
            own = scene.box()
            later = []
            for other in scenes[k + 1 :]:
                same = other.crs == scene.crs
                box = other.box() if same else other.box(scene.crs)
                if _meets(own, box):
                    later.append(_Later(other, box, same))
            self._later.append(later)

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
            if not _meets(box, later.box):
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


def _chunk_windows(shape: tuple[int, int], chunks: tuple[int, ...]) -> Iterator[Window]:
    height, width = shape
    ch, cw = chunks[-2:]
    for r in range(0, height, ch):
        for c in range(0, width, cw):
            yield Window(r, c, min(ch, height - r), min(cw, width - c))


# -- areas ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NightAreas:
    """Areas of one night: per scene, each scene's share, and the whole night."""

    #: Every scene's own areas, overlaps included (:data:`~fcnrs.gis.areas.COLUMNS`,
    #: the same numbers as :func:`~fcnrs.gis.areas.query_areas`).
    scenes: pd.DataFrame
    #: What each scene gives the night: its pixels that no later scene claims.
    shares: pd.DataFrame
    #: One row per class (:data:`NIGHT_COLUMNS`): each ground pixel counted once.
    night: pd.DataFrame


def _area_task(
    night: Night, k: int, window: Window, ring: list | None, ring_box: Sequence[float] | None
) -> tuple[int, np.ndarray, np.ndarray]:
    scene = night.scenes[k]
    zero = np.zeros((2, 256))
    if ring_box is not None:
        t = scene.transform
        xs = (t.c + t.a * window.col, t.c + t.a * window.col_end)
        ys = (t.f + t.e * window.row, t.f + t.e * window.row_end)
        if not _meets((min(xs), min(ys), max(xs), max(ys)), ring_box):
            return k, zero, zero
    block = np.asarray(scene.labels[window.slices()])
    args = (window.row, window.col, scene.crs, scene.transform, ring)
    every = _chunk_stats(block, *args)
    if not night.overlapped(k):
        return k, every, every
    return k, every, _chunk_stats(night.owned(k, window, block), *args)


def night_areas(
    outputs: Iterable[str | PathLike[str] | Location],
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: str | CRS | None = None,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> NightAreas:
    """Areas per class of a night's label rasters, per scene and for the night,
    where each ground pixel counts once (by :func:`in_precedence`).

    Each chunk of each scene is read once (a few chunks in memory at a time, on
    a threaded dask scheduler); where a later scene's box meets the chunk, the
    later scene's labels under the chunk's pixel centres are read too. Pixel
    areas, the bounding box and the ``classes`` filter follow
    :func:`~fcnrs.gis.areas.query_areas`. Local folders and ``s3://`` outputs.
    """
    night = Night(outputs)
    want_crs = CRS.from_user_input(bbox_crs) if bbox_crs is not None else None
    tasks = []
    for k, scene in enumerate(night.scenes):
        ring = ring_box = None
        if bbox is not None:
            ring, ring_box = bbox_polygon(bbox, want_crs or scene.crs, scene.crs)
        for window in _chunk_windows(scene.shape, scene.labels.chunks):
            tasks.append(dask.delayed(_area_task)(night, k, window, ring, ring_box))
    results = dask.compute(*tasks, scheduler="threads", num_workers=num_workers)
    every = np.zeros((len(night.scenes), 2, 256))
    share = np.zeros_like(every)
    for k, a, b in results:
        every[k] += a
        share[k] += b
    keep = [
        (i, name)
        for i, name in enumerate(night.classes)
        if not classes or name in classes or str(i) in classes
    ]

    def per_scene(totals: np.ndarray) -> pd.DataFrame:
        rows = [
            _area_row(totals[k], i, name) | {"scene": s.name, "output": str(s.output.location)}
            for k, s in enumerate(night.scenes)
            for i, name in keep
        ]
        return _typed(pd.DataFrame(rows, columns=COLUMNS))

    total = share.sum(axis=0)
    night_rows = [_area_row(total, i, name) for i, name in keep]
    return NightAreas(
        per_scene(every), per_scene(share), _typed(pd.DataFrame(night_rows, columns=NIGHT_COLUMNS))
    )


def _area_row(totals: np.ndarray, class_id: int, name: str) -> dict[str, Any]:
    return {
        "class_id": class_id,
        "class_name": name,
        "pixels": int(totals[0, class_id]),
        "area_m2": float(totals[1, class_id]),
        "area_km2": float(totals[1, class_id]) / 1e6,
    }


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype(
        {"class_id": "int64", "pixels": "int64", "area_m2": "float64", "area_km2": "float64"}
    )


# -- polygons ----------------------------------------------------------------------------


class OwnedLabels:
    """Scene ``k``'s label array as the night sees it (pixels a later scene claims
    read as nodata), sliced by strips of rows like a Zarr array: what
    :func:`~fcnrs.gis.vectors.pixel_polygons` reads."""

    def __init__(self, night: Night, k: int) -> None:
        self.night, self.k = night, k
        labels = night.scenes[k].labels
        self.shape: tuple[int, ...] = tuple(labels.shape)
        self.chunks: tuple[int, ...] = tuple(labels.chunks)

    def __getitem__(self, rows: slice) -> np.ndarray:
        scene = self.night.scenes[self.k]
        block = np.asarray(scene.labels[rows])
        if not self.night.overlapped(self.k):
            return block
        row0 = rows.start or 0
        step = self.chunks[-1]
        out = block.copy()
        for c in range(0, block.shape[1], step):
            window = Window(row0, c, block.shape[0], min(step, block.shape[1] - c))
            out[:, window.col : window.col_end] = self.night.owned(
                self.k, window, block[:, window.col : window.col_end]
            )
        return out


def night_polygons_path(out_dir: str | PathLike[str] | Location, fmt: Format) -> Path | Location:
    """``<out>/mosaic/polygons<suffix>``: the night's polygons, beside its mosaic
    (a local path, or a Location in S3)."""
    return (Location(out_dir) / NIGHT_DIR / f"{NIGHT_POLYGONS}{FORMATS[fmt][0]}").native


def _reprojected(table: pa.Table, src: CRS, dst: CRS, step: float) -> pa.Table:
    """A polygon table in ``dst``: outlines densified to ``step`` (a pixel, in
    ``src`` units) so that straight pixel edges bend as they should."""
    geoms = shapely.segmentize(shapely.from_wkb(table.column("geometry").to_numpy()), step)
    to = Transformer.from_crs(src, dst, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = to.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    geoms = shapely.orient_polygons(shapely.transform(geoms, project))
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    bbox = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
    )
    table = table.set_column(
        table.schema.get_field_index("geometry"), "geometry", pa.array(shapely.to_wkb(geoms))
    )
    return table.set_column(table.schema.get_field_index("bbox"), "bbox", bbox)


def write_night_polygons(
    outputs: Sequence[str | PathLike[str] | Location],
    *,
    fmt: Format = "parquet",
    settings: VectorSettings | None = None,
    force: bool = False,
) -> Vectorized:
    """Write the night's polygons to :func:`night_polygons_path` of the outputs' folder.

    Each scene's pixels that no later scene claims (:meth:`Night.owned`) are
    polygonised strip by strip as :func:`~fcnrs.gis.vectors.polygons` does, with
    the same columns (``scene`` says whose pixels a polygon holds), and moved into
    :func:`night_crs` where a scene has another CRS. No two polygons overlap on a
    common grid; a region crossing from one scene into a later one is two
    polygons meeting where the later scene's labels begin. A file made from the
    very same rasters with the same settings is kept unless ``force``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}. Got {fmt!r}.")
    where = [Location(o) if is_url(o) else Location(Path(o).resolve()) for o in outputs]
    folders = {w.parent for w in where}
    if len(folders) != 1:
        raise OutputError(
            f"the night's label rasters must be in one output folder. Got {sorted(map(str, folders))}."
        )
    settings = settings or VectorSettings()
    night = Night(outputs)
    crs = night.crs()
    dst = Location(night_polygons_path(folders.pop(), fmt))
    rasters = [open_label_raster(s.output.location) for s in night.scenes]
    fingerprint = hashlib.sha256(
        json.dumps([[r.name, r.fingerprint] for r in rasters] + [crs.to_wkt()]).encode()
    ).hexdigest()
    stamp = {SOURCE_KEY: fingerprint, SETTINGS_KEY: settings.to_json()}
    if not force and all(file_metadata(dst).get(k) == v for k, v in stamp.items()):
        return Vectorized(dst.native, None, kept=True)
    if dst.is_link() or (not dst.remote and dst.path.is_dir()):
        raise OutputError(f"{dst}: is a link or a folder; it was left untouched.")

    def tables() -> Iterator[pa.Table]:
        for k, (scene, raster) in enumerate(zip(night.scenes, rasters, strict=True)):
            owned = replace(raster, labels=OwnedLabels(night, k))
            step = min(abs(scene.transform.a), abs(scene.transform.e))
            for table in polygons(owned, settings=settings):
                if scene.crs != crs and table.num_rows:
                    table = _reprojected(table, scene.crs, crs, step)
                yield table

    boxes = np.array([s.box(crs) for s in night.scenes])
    extent = (*boxes[:, :2].min(0), *boxes[:, 2:].max(0))
    driver = FORMATS[fmt][1]
    if driver is None:
        rows = write_geoparquet(tables(), dst, crs=crs, extent=extent, metadata=stamp)
    else:
        rows = write_ogr(tables(), dst, driver=driver, crs=crs, layer="night", metadata=stamp)
    return Vectorized(dst.native, rows)
