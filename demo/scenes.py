"""Synthetic scenes the project makes itself, for the demo, tests and benchmarks.

- :func:`make_sample_scene`: a small labeled scene (image and label raster);
- :func:`write_large_scene`: a scene of any size written strip by strip, for
  throughput and memory benchmarks.

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

import numpy as np
import rasterio
from rasterio.transform import from_origin

from fcnrs.pipeline.labels import NODATA

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


def smooth_field(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """A smooth random float32 field in [0, 1]: bilinear upsampling of coarse noise,
    blobs of about ``scale`` pixels."""
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
    fields = np.stack([smooth_field(rng, height, width, 90) for _ in CLASSES])
    fields += 0.15 * np.stack([smooth_field(rng, height, width, 12) for _ in CLASSES])
    labels = fields.argmax(axis=0).astype(np.uint8)
    image = _SPECTRA[labels].transpose(2, 0, 1)
    image *= 1 + 0.25 * (smooth_field(rng, height, width, 20)[None] - 0.5)  # illumination/texture
    image += rng.normal(0, 120, image.shape).astype(np.float32)
    image = np.clip(image, 1, 65535).astype(np.uint16)
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:border] = invalid[:, :border] = True
    image[:, invalid] = 0
    labels[invalid] = NODATA
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


def write_large_scene(
    path: str | PathLike[str],
    height: int,
    width: int | None = None,
    *,
    bands: int = 3,
    strip: int = 512,
) -> Path:
    """A tiled, DEFLATE-compressed uint16 GeoTIFF (nodata 0) with a nodata disc,
    filled with smooth wave patterns computed strip by strip, so a scene of any
    size is written in bounded memory."""
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
            out = np.empty((bands, rows.shape[0], width), dtype=np.uint16)
            for b in range(bands):
                wave = np.sin(cols / (97 + 31 * b)) * np.cos(rows / (131 + 17 * b))
                out[b] = (5000 + 3000 * wave).astype(np.uint16)
            disc = (rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (
                min(height, width) / 5
            ) ** 2
            out[:, disc] = 0
            dst.write(out, window=((row0, row0 + rows.shape[0]), (0, width)))
    return Path(path)


def random_checkpoint(
    path: str | PathLike[str], *, width: float, bands: int = 3, seed: int = 0
) -> Path:
    """A seeded, untrained FCN-8s checkpoint for :func:`write_large_scene`'s uint16
    bands (4 classes): what throughput and memory benchmarks need, no training."""
    import torch

    from fcnrs.fcn_model import FCN8s, save_checkpoint

    torch.manual_seed(seed)
    return save_checkpoint(
        path,
        FCN8s(4, in_channels=bands, width=width),
        classes=["a", "b", "c", "d"],
        bands=list(range(1, bands + 1)),
        mean=[5000.0] * bands,
        std=[3000.0] * bands,
    )
