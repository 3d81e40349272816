"""Quicklooks: a label raster (a COG, or the mosaic's VRT) as a small paletted PNG.

One renderer for the COG export's ``<name>.png``, ``fcnrs mosaic --quicklook``
and the night's map: the labels are read downsampled by *mode* (an overview
pixel is the most frequent class below it, never an average of class ids),
from the raster's own overviews where it has them, with its colour table
(nodata transparent).
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from fcnrs.pipeline.storage import Location

from .rasters import reopen


def quicklook_shape(height: int, width: int, *, size: int) -> tuple[int, int]:
    """(height, width) of a raster shrunk so that its longer side is at most
    ``size`` pixels (never enlarged, never below one pixel)."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_quicklook(
    src: rasterio.io.DatasetReader, size: int
) -> tuple[np.ndarray, dict[int, tuple[int, ...]]]:
    """Band 1 of an open label raster, longer side ``size`` pixels, by mode,
    and its colour table."""
    shape = quicklook_shape(src.height, src.width, size=size)
    return src.read(1, out_shape=shape, resampling=Resampling.mode), src.colormap(1)


def write_png(
    labels: np.ndarray, cmap: dict[int, tuple[int, ...]], dst: str | PathLike[str] | Location
) -> Path | Location:
    """Class ids as a paletted PNG, published whole (local or ``s3://``)."""
    dst = Location(dst)
    height, width = labels.shape
    with dst.staged() as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture: no georeferencing
        with rasterio.open(
            partial, "w", driver="PNG", height=height, width=width, count=1, dtype="uint8"
        ) as out:
            out.write(labels, 1)
            out.write_colormap(1, cmap)
    return dst.native


def write_quicklook(
    raster: str | PathLike[str] | Location, dst: str | PathLike[str] | Location, *, size: int
) -> Path | Location:
    """A paletted PNG of a label COG or mosaic VRT the project wrote.

    Parameters
    ----------
    raster
        The COG or ``.vrt``, local or ``s3://`` (:func:`~fcnrs.gis.rasters.reopen`).
    dst
        The PNG, local or ``s3://``.
    size
        Its longer side in pixels.

    Returns
    -------
    Path or Location
        ``dst``: a local path, or a Location in S3.
    """
    with reopen(raster) as src:
        small, cmap = read_quicklook(src, size)
    return write_png(small, cmap, dst)
