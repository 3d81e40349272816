"""Areas of a night: per scene, each scene's share, and the whole night, where
each ground pixel counts once (the rule of :mod:`fcnrs.gis.night`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike

import dask
import numpy as np
import pandas as pd
from pyproj import CRS

from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.storage import Location

from .areas import COLUMNS, area_row, area_table, bbox_polygon, chunk_stats, wanted_classes
from .night import Night, boxes_meet
from .rasters import chunk_windows

#: Columns of the night's table: one row per class, each ground pixel once.
NIGHT_COLUMNS = ["class_id", "class_name", "pixels", "area_m2", "area_km2"]


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
    night: Night,
    k: int,
    window: Window,
    ring: list[tuple[float, float]] | None,
    ring_box: Sequence[float] | None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """(2, 256) totals of one chunk of scene ``k``: all its pixels, and those
    it gives the night."""
    scene = night.scenes[k]
    zero = np.zeros((2, 256))
    if ring_box is not None:
        t = scene.transform
        xs = (t.c + t.a * window.col, t.c + t.a * window.col_end)
        ys = (t.f + t.e * window.row, t.f + t.e * window.row_end)
        if not boxes_meet((min(xs), min(ys), max(xs), max(ys)), ring_box):
            return k, zero, zero
    block = np.asarray(scene.labels[window.slices()])

    def stats(labels: np.ndarray) -> np.ndarray:
        return chunk_stats(
            labels,
            row0=window.row,
            col0=window.col,
            crs=scene.crs,
            transform=scene.transform,
            ring=ring,
        )

    every = stats(block)
    if not night.overlapped(k):
        return k, every, every
    return k, every, stats(night.owned(k, window, block))


def night_areas(
    outputs: Iterable[str | PathLike[str] | Location],
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: str | CRS | None = None,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> NightAreas:
    """Areas per class of a night's label rasters, per scene and for the night,
    where each ground pixel counts once (by :func:`~fcnrs.gis.night.in_precedence`).

    Each chunk of each scene is read once (a few chunks in memory at a time, on
    a threaded dask scheduler); where a later scene's box meets the chunk, the
    later scene's labels under the chunk's pixel centres are read too. Local
    folders and ``s3://`` outputs.

    Parameters
    ----------
    outputs
        The night's published label rasters.
    bbox, bbox_crs, classes, num_workers
        As :func:`~fcnrs.gis.areas.query_areas` takes them.

    Raises
    ------
    OutputError
        When there is no output, an output is not a complete label raster, has
        no CRS, or has another class list than the first.
    """
    night = Night(outputs)
    want_crs = CRS.from_user_input(bbox_crs) if bbox_crs is not None else None
    tasks = []
    for k, scene in enumerate(night.scenes):
        ring = ring_box = None
        if bbox is not None:
            ring, ring_box = bbox_polygon(bbox, bbox_crs=want_crs or scene.crs, crs=scene.crs)
        for window in chunk_windows(scene.shape, scene.labels.chunks):
            tasks.append(dask.delayed(_area_task)(night, k, window, ring, ring_box))
    results = dask.compute(*tasks, scheduler="threads", num_workers=num_workers)
    every = np.zeros((len(night.scenes), 2, 256))
    share = np.zeros_like(every)
    for k, a, b in results:
        every[k] += a
        share[k] += b
    keep = wanted_classes(night.classes, classes)

    def per_scene(totals: np.ndarray) -> pd.DataFrame:
        rows = [
            area_row(totals[k], i, name) | {"scene": s.name, "output": str(s.output.location)}
            for k, s in enumerate(night.scenes)
            for i, name in keep
        ]
        return area_table(rows, COLUMNS)

    total = share.sum(axis=0)
    night_rows = [area_row(total, i, name) for i, name in keep]
    return NightAreas(per_scene(every), per_scene(share), area_table(night_rows, NIGHT_COLUMNS))
