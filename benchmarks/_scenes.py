"""Synthetic scenes and models for benchmarks; scenes written strip by strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from fcn_model import FCN8s, save_checkpoint


def write_large_scene(path: Path, size: int, *, bands: int = 3, strip: int = 512) -> Path:
    """A tiled, DEFLATE-compressed uint16 GeoTIFF of ``size x size`` pixels with a
    nodata disc, filled with smooth patterns computed per strip."""
    profile = dict(
        driver="GTiff",
        height=size,
        width=size,
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
    cols = np.arange(size, dtype=np.float32)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, size, strip):
            rows = np.arange(row0, min(row0 + strip, size), dtype=np.float32)[:, None]
            out = np.empty((bands, rows.shape[0], size), dtype=np.uint16)
            for b in range(bands):
                wave = np.sin(cols / (97 + 31 * b)) * np.cos(rows / (131 + 17 * b))
                out[b] = (5000 + 3000 * wave).astype(np.uint16)
            disc = (rows - size / 2) ** 2 + (cols - size / 3) ** 2 < (size / 5) ** 2
            out[:, disc] = 0
            dst.write(out, window=((row0, row0 + rows.shape[0]), (0, size)))
    return path


def random_checkpoint(path: Path, width: float) -> Path:
    """A seeded random FCN-8s for :func:`write_large_scene`'s 3 uint16 bands."""
    torch.manual_seed(0)
    return save_checkpoint(
        path,
        FCN8s(4, width=width),
        classes=["a", "b", "c", "d"],
        bands=[1, 2, 3],
        mean=[5000] * 3,
        std=[3000] * 3,
    )
