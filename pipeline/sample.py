"""A labeled sample scene the project makes itself, for the demo and for tests.

The scene is a 4-band (blue, green, red, near-infrared) uint16 GeoTIFF in UTM
with four land-cover classes laid out as smooth blobs, each with its own typical
reflectance spectrum, per-pixel noise and texture, plus a nodata border, and a
matching label GeoTIFF (uint8, 255 = nodata). Water is dark in the near-infrared,
vegetation bright in it and dark in red, so the classes are learnable in seconds
but not by a single threshold on one band.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

CLASSES = ("water", "vegetation", "bare soil", "built-up")
COLORS = ((30, 90, 200), (40, 150, 60), (200, 170, 110), (190, 60, 60))
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


def _blobs(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """A smooth random field (bilinear upsampling of coarse noise)."""
    coarse = rng.random((height // scale + 2, width // scale + 2)).astype(np.float32)
    rows = np.linspace(0, coarse.shape[0] - 1.001, height, dtype=np.float32)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width, dtype=np.float32)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def make_sample_scene(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str] | None = None,
    *,
    height: int = 1000,
    width: int = 1200,
    seed: int = 0,
    border: int = 24,
) -> tuple[Path, Path | None]:
    """Write the sample image (and its label raster) and return their paths."""
    rng = np.random.default_rng(seed)
    fields = np.stack([_blobs(rng, height, width, 90) for _ in CLASSES])
    fields += 0.15 * np.stack([_blobs(rng, height, width, 12) for _ in CLASSES])
    labels = fields.argmax(axis=0).astype(np.uint8)
    image = _SPECTRA[labels].transpose(2, 0, 1)
    image *= 1 + 0.25 * (_blobs(rng, height, width, 20)[None] - 0.5)  # illumination/texture
    image += rng.normal(0, 120, image.shape).astype(np.float32)
    image = np.clip(image, 1, 65535).astype(np.uint16)
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:border] = invalid[:, :border] = True
    image[:, invalid] = 0
    labels[invalid] = 255
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
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(COLORS)})
    return image_path, label_path
