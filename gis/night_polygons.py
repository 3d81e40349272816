"""The night's polygons: one layer where each ground pixel belongs to one scene
(the rule of :mod:`fcnrs.gis.night`), beside the mosaic."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS, Transformer

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location, is_url

from .folders import MOSAIC_DIR, NIGHT_POLYGONS
from .night import Night
from .polygons import DEFAULT_SETTINGS, VectorSettings, polygons, with_geometry
from .vector_files import (
    FORMATS,
    SETTINGS_KEY,
    SOURCE_KEY,
    Format,
    check_format,
    check_replaceable,
    is_current,
    write_vector_file,
)
from .vectors import Vectorized


class OwnedLabels:
    """Scene ``k``'s label array as the night sees it (pixels a later scene claims
    read as nodata), sliced by strips of rows like a Zarr array: what
    :func:`~fcnrs.gis.strips.pixel_polygons` reads."""

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
    return (Location(out_dir) / MOSAIC_DIR / f"{NIGHT_POLYGONS}{FORMATS[fmt][0]}").native


def _reprojected(table: pa.Table, src: CRS, dst: CRS, step: float) -> pa.Table:
    """A polygon table in ``dst``: outlines densified to ``step`` (a pixel, in
    ``src`` units) so that straight pixel edges bend as they should."""
    geoms = shapely.segmentize(shapely.from_wkb(table.column("geometry").to_numpy()), step)
    to = Transformer.from_crs(src, dst, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = to.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return with_geometry(table, shapely.orient_polygons(shapely.transform(geoms, project)))


def _one_folder(outputs: Sequence[str | PathLike[str] | Location]) -> Location:
    """The output folder of every one of ``outputs``, or :class:`OutputError`."""
    where = [Location(o) if is_url(o) else Location(Path(o).resolve()) for o in outputs]
    folders = {w.parent for w in where}
    if len(folders) != 1:
        raise OutputError(
            f"the night's label rasters must be in one output folder. Got {sorted(map(str, folders))}."
        )
    return folders.pop()


def _fingerprint(night: Night, crs: CRS) -> str:
    """What the night's polygons are made from: every scene and the night's CRS."""
    sources = [[s.name, s.raster.fingerprint] for s in night.scenes] + [crs.to_wkt()]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def write_night_polygons(
    outputs: Sequence[str | PathLike[str] | Location],
    *,
    fmt: Format = "parquet",
    settings: VectorSettings = DEFAULT_SETTINGS,
    force: bool = False,
) -> Vectorized:
    """Write the night's polygons to :func:`night_polygons_path` of the outputs' folder.

    Each scene's pixels that no later scene claims (:meth:`Night.owned`) are
    polygonised strip by strip as :func:`~fcnrs.gis.polygons.polygons` does,
    with the same columns (``scene`` says whose pixels a polygon holds), and
    moved into the night's CRS (:func:`~fcnrs.gis.night.night_crs`) where a
    scene has another CRS. No two polygons overlap on a common grid; a region
    crossing from one scene into a later one is two polygons meeting where the
    later scene's labels begin.

    Parameters
    ----------
    outputs
        The night's published label rasters, all in one output folder.
    fmt, settings
        As :func:`~fcnrs.gis.vectors.vectorize` takes them.
    force
        Rewrite a file made from the very same rasters with the same settings.

    Raises
    ------
    ValueError
        For an unknown ``fmt``.
    OutputError
        When the outputs are in several folders, do not make a night
        (:class:`~fcnrs.gis.night.Night`), or the file's place is taken by a
        link or a folder.
    """
    fmt = check_format(fmt)
    folder = _one_folder(outputs)
    night = Night(outputs)
    crs = night.crs()
    dst = Location(night_polygons_path(folder, fmt))
    stamp = {SOURCE_KEY: _fingerprint(night, crs), SETTINGS_KEY: settings.to_json()}
    if not force and is_current(dst, stamp):
        return Vectorized(dst.native, None, kept=True)
    check_replaceable(dst)

    def tables() -> Iterator[pa.Table]:
        for k, scene in enumerate(night.scenes):
            step = min(abs(scene.transform.a), abs(scene.transform.e))
            owned = OwnedLabels(night, k)
            for table in polygons(scene.raster, settings=settings, labels=owned):
                if scene.crs != crs and table.num_rows:
                    table = _reprojected(table, scene.crs, crs, step)
                yield table

    boxes = np.array([s.box(crs) for s in night.scenes])
    extent = (*boxes[:, :2].min(0), *boxes[:, 2:].max(0))
    rows = write_vector_file(
        tables(), dst, fmt=fmt, crs=crs, extent=extent, layer="night", metadata=stamp
    )
    return Vectorized(dst.native, rows)
