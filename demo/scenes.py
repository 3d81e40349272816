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

from collections.abc import Callable
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


#: Classes of :func:`make_thin_structures_scene`: roads are 2-4 px wide, buildings rare.
THIN_CLASSES = ("background", "water", "road", "building")
THIN_COLORS = ((120, 160, 90), (30, 90, 200), (90, 90, 90), (220, 60, 50))


def _segment_distance(
    rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Distance of every (row, col) to the segment ``a``-``b`` (pixel units)."""
    d = b - a
    t = ((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0, 1)
    return np.hypot(rows - (a[0] + t * d[0]), cols - (a[1] + t * d[1]))


def _draw_roads(rng: np.random.Generator, labels: np.ndarray, count: int) -> None:
    """Wavy roads 2-4 px wide crossing the scene, drawn as polylines of short segments."""
    h, w = labels.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(count):
        width = rng.uniform(1.0, 2.0)  # half-width: roads 2-4 px wide
        start = np.array([rng.uniform(0, h), 0.0]) if rng.random() < 0.5 else None
        if start is None:
            start, heading = np.array([0.0, rng.uniform(0, w)]), np.pi / 2
        else:
            heading = 0.0
        heading += rng.normal(0, 0.3)
        point = start
        for _ in range(60):
            heading += rng.normal(0, 0.12)
            nxt = point + 40 * np.array([np.sin(heading), np.cos(heading)])
            lo = np.floor(np.minimum(point, nxt) - 3).astype(int).clip(0)
            hi = np.ceil(np.maximum(point, nxt) + 3).astype(int)
            r, c = rows[lo[0] : hi[0], lo[1] : hi[1]], cols[lo[0] : hi[0], lo[1] : hi[1]]
            if r.size:
                near = _segment_distance(r, c, point, nxt) <= width
                labels[lo[0] : hi[0], lo[1] : hi[1]][near] = 2
            point = nxt
            if not (-50 < point[0] < h + 50 and -50 < point[1] < w + 50):
                break


def _draw_buildings(rng: np.random.Generator, labels: np.ndarray, count: int) -> np.ndarray:
    """Small rectangular buildings (6-16 px) near roads; returns their shadows' mask
    (a 2-px strip south-east of each roof, labelled background)."""
    h, w = labels.shape
    roads = np.argwhere(labels == 2)
    shadow = np.zeros_like(labels, dtype=bool)
    for _ in range(count):
        r, c = roads[rng.integers(len(roads))] + rng.integers(6, 22, 2) * rng.choice([-1, 1], 2)
        bh, bw = rng.integers(6, 17, 2)
        r0, c0 = int(np.clip(r, 0, h - bh)), int(np.clip(c, 0, w - bw))
        box = labels[r0 : r0 + bh, c0 : c0 + bw]
        if (box == 2).any() or (box == 1).any():
            continue
        shadow[r0 + 2 : r0 + bh + 2, c0 + 2 : c0 + bw + 2] = True
        box[:] = 3
    return shadow & (labels == 0)


def make_thin_structures_scene(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str],
    *,
    size: int = 1024,
    seed: int = 0,
    dtype: str = "uint8",
) -> tuple[Path, Path]:
    """A 1 m aerial-like RGB scene with thin roads and rare buildings, and its labels.

    Four classes (:data:`THIN_CLASSES`): background (fields, grass, bare soil and
    trees with texture), water (a river and ponds), roads 2-4 px wide (a rare,
    thin class) and buildings (about 1-2 % of pixels, the rarest). What makes it
    a fair stand-in for real aerial imagery rather than a toy:

    - spectra overlap: concrete roofs are the grey of asphalt, bare soil patches
      and dark water overlap roads and shadows, so per-pixel colour does not
      separate the classes and shape (long and thin against compact) must be learned;
    - the optics blur (a 3x3 point-spread function) mixes a 2-px road with its
      verges, and sensor noise and a smooth illumination field vary every pixel;
    - a rotated nodata collar (image nodata declared, labels 255), and unlabelled
      patches inside the valid image (labels 255), as in hand-labelled data;
    - ``dtype``: ``uint8`` (nodata 0) or ``uint16`` (the same radiometry, nodata
      65535), so one model meets both encodings.
    """
    rng = np.random.default_rng(seed)
    h = w = size
    labels = np.zeros((h, w), np.uint8)
    labels[smooth_field(rng, h, w, 160) > 0.78] = 1  # ponds and a river-like band
    river = np.abs(np.arange(h)[:, None] - (0.6 * h + 0.15 * h * np.sin(np.arange(w) / 90)))
    labels[river < 6 + 4 * smooth_field(rng, h, w, 200)] = 1
    _draw_roads(rng, labels, count=max(4, size // 110))
    shadow = _draw_buildings(rng, labels, count=size // 3)
    # Background: grass, crops, bare soil and trees from smooth fields, with texture.
    cover = np.stack([smooth_field(rng, h, w, 70) for _ in range(4)]).argmax(0)
    background = np.array(
        [[80, 120, 60], [120, 150, 70], [150, 130, 110], [50, 80, 45]], np.float32
    )[cover]
    background *= 1 + 0.25 * (smooth_field(rng, h, w, 6) - 0.5)[..., None]
    image = background
    water = np.array([40, 60, 70], np.float32) * (1 + 0.4 * smooth_field(rng, h, w, 50))[..., None]
    image = np.where((labels == 1)[..., None], water, image)
    asphalt = np.array([105, 105, 108], np.float32) * (1 + 0.15 * rng.random((h, w)))[..., None]
    image = np.where((labels == 2)[..., None], asphalt, image)
    roofs = np.where(
        (smooth_field(rng, h, w, 9) > 0.5)[..., None],
        np.array([115, 112, 110], np.float32),  # concrete: the grey of asphalt
        np.array([170, 85, 70], np.float32),  # tiles
    )
    image = np.where((labels == 3)[..., None], roofs, image)
    image = np.where(shadow[..., None], image * 0.45, image)
    image = image.transpose(2, 0, 1)
    kernel = np.array([0.25, 0.5, 0.25], np.float32)  # the optics' point-spread function
    for axis in (1, 2):
        image = (
            kernel[0] * np.roll(image, 1, axis)
            + kernel[1] * image
            + kernel[2] * np.roll(image, -1, axis)
        )
    image *= 1 + 0.3 * (smooth_field(rng, h, w, 300)[None] - 0.5)  # illumination
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    image = np.clip(image, 1, 254)
    # A rotated valid footprint, and unlabelled patches inside it.
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32) - size / 2
    angle = rng.uniform(0.15, 0.35)
    u = np.cos(angle) * rows + np.sin(angle) * cols
    v = -np.sin(angle) * rows + np.cos(angle) * cols
    invalid = (np.abs(u) > 0.47 * size) | (np.abs(v) > 0.47 * size)
    unlabelled = smooth_field(rng, h, w, 120) > 0.86
    nodata = 0 if dtype == "uint8" else 65535
    image = image.astype(dtype)
    image[:, invalid] = nodata
    labels[invalid | unlabelled] = NODATA
    profile = dict(
        driver="GTiff",
        height=h,
        width=w,
        crs="EPSG:32632",
        transform=from_origin(500000.0 + 7000 * seed, 5000000.0, 1.0, 1.0),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    image_path, label_path = Path(image_path), Path(label_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image_path, "w", count=3, dtype=dtype, nodata=nodata, **profile) as dst:
        dst.write(image)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=NODATA, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(THIN_COLORS)})
    return image_path, label_path


def write_label_raster(
    path: str | PathLike[str],
    size: int,
    classes_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    tile: int = 1024,
) -> Path:
    """Publish a ``size`` x ``size`` Zarr label raster chunk by chunk (bounded
    memory, through the pipeline's writer): class ids from ``classes_at(rows,
    cols)`` and a nodata disc in the middle; for the memory benchmarks."""
    from pyproj import CRS

    from fcnrs.pipeline.planning import plan_tiles
    from fcnrs.pipeline.reading import SceneInfo
    from fcnrs.pipeline.writing import StagingGroup

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
    grid = plan_tiles(size, size, tile_size=tile, overlap=32)
    group = StagingGroup(
        Path(path),
        info=info,
        grid=grid,
        classes=["water", "forest", "field", "town"],
        colors=[(0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0)],
    )
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
    return group.publish(valid)
