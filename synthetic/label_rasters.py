"""Large synthetic label rasters, published chunk by chunk through the pipeline's writer."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import CRS
from rasterio.transform import from_origin

from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import plan_tiles
from fcnrs.pipeline.reading import SceneInfo
from fcnrs.pipeline.writing import StagingGroup

#: The classes and colours (RGB) of :func:`write_label_raster`'s label rasters.
CLASSES = ("water", "forest", "field", "town")
COLORS = ((0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0))

#: ``classes_at(rows, cols)``: class ids at int64 row and column indexes.
ClassesAt = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[Any]]


def write_label_raster(
    path: str | PathLike[str], size: int, classes_at: ClassesAt, *, tile_size: int = 1024
) -> Path:
    """Publish a square label raster of any size in bounded memory, tile core by tile core.

    The label raster (EPSG:32633 at 10 m, classes :data:`CLASSES`) is written
    through the pipeline's own writer, as a run would, with a nodata disc in
    the middle; for the memory benchmarks.

    Parameters
    ----------
    path
        The label raster to publish (a local ``.zarr`` folder).
    size
        Its height and width in pixels.
    classes_at
        ``classes_at(rows, cols)``: the class ids of the pixels at int64 ``rows``
        (a column vector) and ``cols`` (a row vector), broadcast to one core.
    tile_size
        The edge of the tiles' cores: one Zarr chunk each.

    Returns
    -------
    pathlib.Path
        The published label raster: ``path``.
    """
    info = SceneInfo(
        path="synthetic",
        height=size,
        width=size,
        count=1,
        dtypes=("uint8",),
        crs_wkt=CRS.from_epsg(32633).to_wkt(),
        transform=tuple(from_origin(500_000, 4_200_000, 10, 10))[:6],
        nodata=None,
        mask_flags=(("all_valid",),),
        size_bytes=0,
        mtime_ns=0,
    )
    grid = plan_tiles(size, size, tile_size=tile_size, overlap=32)
    group = StagingGroup(Path(path), info=info, grid=grid, classes=CLASSES, colors=COLORS)
    group.create()
    chunks = group.chunks()
    valid = 0
    for planned in grid:
        c = planned.core
        rows = np.arange(c.row, c.row_end, dtype=np.int64)[:, None]
        cols = np.arange(c.col, c.col_end, dtype=np.int64)[None, :]
        labels = classes_at(rows, cols).astype(np.uint8)
        labels[(rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 6) ** 2] = NODATA
        valid += chunks.write(c, labels)
    return Path(group.publish(valid))
