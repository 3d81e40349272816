"""Synthetic scenes: the sample scene and large scenes of any size.

- :func:`make_sample_scene`: a small labeled scene (image and label GeoTIFFs),
  what the demo fine-tunes on and the training tests use;
- :func:`write_large_scene`: a scene of any size written strip by strip, for
  throughput and memory benchmarks;
- :func:`smooth_field`: the smooth random field both (and the tests' scene
  factory) are drawn from.

The sample scene is a 4-band (blue, green, red, near-infrared) uint16 GeoTIFF in UTM
with four land-cover classes laid out as smooth blobs, each with its own typical
reflectance spectrum, per-pixel noise and texture, plus a nodata border, and a
matching label GeoTIFF (uint8, 255 = nodata). Water is dark in the near-infrared,
vegetation bright in it and dark in red, so the classes are learnable in seconds
but not by a single threshold on one band.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import overload

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.transform import from_origin

from fcnrs.pipeline.labels import NODATA

#: The sample scene's classes, in class-id order, and their colours (RGB).
CLASSES = ("water", "vegetation", "bare soil", "built-up")
COLORS = ((30, 90, 200), (40, 150, 60), (200, 170, 110), (190, 60, 60))
#: The sample scene's bands, in band order (their descriptions in the GeoTIFF).
BANDS = ("blue", "green", "red", "nir")
# Typical surface reflectance x 10000 per class and band (B, G, R, NIR).
_SPECTRA = np.array(
    [
        [600, 700, 500, 300],  # water
        [400, 800, 450, 3500],  # vegetation
        [1200, 1500, 1900, 2600],  # bare soil
        [1500, 1550, 1600, 1900],  # built-up
    ],
    dtype=np.float32,
)


def smooth_field(
    rng: np.random.Generator, height: int, width: int, scale: int
) -> NDArray[np.float32]:
    """A smooth random field: bilinear upsampling of coarse noise.

    Parameters
    ----------
    rng
        The random generator it draws from (one draw of the coarse grid).
    height, width
        The field's shape in pixels.
    scale
        The coarse grid's spacing: blobs of about ``scale`` pixels.

    Returns
    -------
    numpy.ndarray
        A float32 ``(height, width)`` array with values in [0, 1].
    """
    coarse = rng.random((height // scale + 2, width // scale + 2)).astype(np.float32)
    rows = np.linspace(0, coarse.shape[0] - 1.001, height, dtype=np.float32)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width, dtype=np.float32)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    field: NDArray[np.float32] = top * (1 - fr) + bottom * fr
    return field


@overload
def make_sample_scene(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str],
    *,
    height: int = ...,
    width: int = ...,
    seed: int = ...,
    border: int = ...,
) -> tuple[Path, Path]: ...


@overload
def make_sample_scene(
    image_path: str | PathLike[str],
    label_path: None = ...,
    *,
    height: int = ...,
    width: int = ...,
    seed: int = ...,
    border: int = ...,
) -> tuple[Path, None]: ...


def make_sample_scene(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str] | None = None,
    *,
    height: int = 1000,
    width: int = 1200,
    seed: int = 0,
    border: int = 24,
) -> tuple[Path, Path | None]:
    """Write the sample scene (and its label GeoTIFF).

    Parameters
    ----------
    image_path
        The scene to write: 4 bands (:data:`BANDS`), uint16, nodata 0, EPSG:32633
        at 10 m; its folder is created.
    label_path
        Where to write its labels (uint8 class ids of :data:`CLASSES`, 255 =
        nodata, with a colour map); None: no labels.
    height, width
        The scene's shape in pixels.
    seed
        The random seed: the same seed writes the same bytes.
    border
        Width in pixels of the nodata border along the top and left edges.

    Returns
    -------
    tuple of pathlib.Path
        The image's path and the labels' path (None when ``label_path`` is None).
    """
    image, labels = _draw_sample(height, width, seed=seed, border=border)
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        crs="EPSG:32633",
        transform=from_origin(399960.0, 4900020.0, 10.0, 10.0),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    image_path = Path(image_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image_path, "w", count=4, dtype="uint16", nodata=0, **profile) as dst:
        dst.write(image)
        dst.descriptions = BANDS
    if label_path is None:
        return image_path, None
    label_path = Path(label_path)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=NODATA, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(COLORS)})
    return image_path, label_path


def _draw_sample(
    height: int, width: int, *, seed: int, border: int
) -> tuple[NDArray[np.uint16], NDArray[np.uint8]]:
    """The sample scene's pixels ``(4, height, width)`` and labels, nodata border included."""
    rng = np.random.default_rng(seed)
    fields = np.stack([smooth_field(rng, height, width, 90) for _ in CLASSES])
    fields += 0.15 * np.stack([smooth_field(rng, height, width, 12) for _ in CLASSES])
    labels = fields.argmax(axis=0).astype(np.uint8)
    image = _SPECTRA[labels].transpose(2, 0, 1)
    image *= 1 + 0.25 * (smooth_field(rng, height, width, 20)[None] - 0.5)  # illumination/texture
    image += rng.normal(0, 120, image.shape).astype(np.float32)
    pixels = np.clip(image, 1, 65535).astype(np.uint16)
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:border] = invalid[:, :border] = True
    pixels[:, invalid] = 0
    labels[invalid] = NODATA
    return pixels, labels


def write_large_scene(
    path: str | PathLike[str],
    height: int,
    *,
    width: int | None = None,
    bands: int = 3,
    strip: int = 512,
) -> Path:
    """Write a scene of any size in bounded memory, strip by strip.

    A tiled, DEFLATE-compressed uint16 GeoTIFF (nodata 0, EPSG:32633 at 10 m)
    filled with smooth wave patterns, with a nodata disc.

    Parameters
    ----------
    path
        The GeoTIFF to write (BigTIFF where it needs to be).
    height
        Its height in pixels.
    width
        Its width in pixels; None: ``height``.
    bands
        The number of bands.
    strip
        Rows computed and written at a time: what bounds the memory.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    width = width or height
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4200000, 10, 10),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    cols = np.arange(width, dtype=np.float32)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, strip):
            rows = np.arange(row0, min(row0 + strip, height), dtype=np.float32)[:, None]
            out = _waves(rows, cols, bands=bands, height=height, width=width)
            dst.write(out, window=((row0, row0 + rows.shape[0]), (0, width)))
    return Path(path)


def _waves(
    rows: NDArray[np.float32], cols: NDArray[np.float32], *, bands: int, height: int, width: int
) -> NDArray[np.uint16]:
    """The large scene's pixels at ``rows`` (a column) and ``cols`` (a row): waves
    of a period of their own per band, 0 in a disc."""
    out = np.empty((bands, rows.shape[0], cols.shape[1]), dtype=np.uint16)
    for b in range(bands):
        wave = np.sin(cols / (97 + 31 * b)) * np.cos(rows / (131 + 17 * b))
        out[b] = (5000 + 3000 * wave).astype(np.uint16)
    disc = (rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (min(height, width) / 5) ** 2
    out[:, disc] = 0
    return out
