"""Thin-structures scenes: 1 m aerial-like RGB with thin roads and rare buildings.

:func:`make_thin_structures_scene` writes one scene and its labels in four
steps, each drawing from the same seeded generator in turn: the labels
(water, roads, buildings and their shadows), the surface colours painted
from them, the optics and sensor (blur, illumination, noise), and the valid
footprint (a rotated collar and unlabelled patches).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.transform import from_origin

from fcnrs.pipeline.labels import NODATA
from fcnrs.synthetic.scenes import smooth_field

#: Classes of :func:`make_thin_structures_scene`: roads are 2-4 px wide, buildings rare.
THIN_CLASSES = ("background", "water", "road", "building")
THIN_COLORS = ((120, 160, 90), (30, 90, 200), (90, 90, 90), (220, 60, 50))

Floats = NDArray[np.floating[Any]]
Bools = NDArray[np.bool_]
Labels = NDArray[np.uint8]


def make_thin_structures_scene(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str],
    *,
    size: int = 1024,
    seed: int = 0,
    dtype: Literal["uint8", "uint16"] = "uint8",
) -> tuple[Path, Path]:
    """Write a 1 m aerial-like RGB scene with thin roads and rare buildings, and its labels.

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
      patches inside the valid image (labels 255), as in hand-labelled data.

    Parameters
    ----------
    image_path
        The scene to write (3 bands, EPSG:32632 at 1 m); its folder is created.
    label_path
        Its labels: uint8 class ids, 255 = nodata, with a colour map.
    size
        The scene's height and width in pixels.
    seed
        The random seed: the same seed writes the same bytes; it also moves the
        scene's origin 7 km east per unit, so scenes of different seeds do not overlap.
    dtype
        ``uint8`` (nodata 0) or ``uint16`` (the same radiometry, nodata 65535),
        so one model meets both encodings.

    Returns
    -------
    tuple of pathlib.Path
        The image's path and the labels' path.
    """
    rng = np.random.default_rng(seed)
    labels, shadow = _draw_labels(rng, size)
    image = _optics(rng, _paint(rng, labels, shadow))
    invalid, unlabelled = _footprint(rng, size)
    nodata = 0 if dtype == "uint8" else 65535
    pixels = image.astype(dtype)
    pixels[:, invalid] = nodata
    labels[invalid | unlabelled] = NODATA
    return _write(image_path, label_path, pixels, labels, nodata=nodata, seed=seed)


def _draw_labels(rng: np.random.Generator, size: int) -> tuple[Labels, Bools]:
    """The class of every pixel, and the buildings' shadows (background pixels)."""
    h = w = size
    labels = np.zeros((h, w), np.uint8)
    labels[smooth_field(rng, h, w, 160) > 0.78] = 1  # ponds and a river-like band
    river = np.abs(np.arange(h)[:, None] - (0.6 * h + 0.15 * h * np.sin(np.arange(w) / 90)))
    labels[river < 6 + 4 * smooth_field(rng, h, w, 200)] = 1
    _draw_roads(rng, labels, count=max(4, size // 110))
    shadow = _draw_buildings(rng, labels, count=size // 3)
    return labels, shadow


def _paint(rng: np.random.Generator, labels: Labels, shadow: Bools) -> Floats:
    """The surface's colours, ``(h, w, 3)``: textured background, water, asphalt,
    concrete or tiled roofs, darkened in the shadows."""
    h, w = labels.shape
    # Background: grass, crops, bare soil and trees from smooth fields, with texture.
    cover = np.stack([smooth_field(rng, h, w, 70) for _ in range(4)]).argmax(0)
    background = np.array(
        [[80, 120, 60], [120, 150, 70], [150, 130, 110], [50, 80, 45]], np.float32
    )[cover]
    background *= 1 + 0.25 * (smooth_field(rng, h, w, 6) - 0.5)[..., None]
    image: Floats = background
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
    return np.where(shadow[..., None], image * 0.45, image)


def _optics(rng: np.random.Generator, surface: Floats) -> Floats:
    """What the sensor records of ``surface``, as ``(3, h, w)`` values in [1, 254]:
    blurred by the optics, under a smooth illumination field, with noise."""
    image: Floats = surface.transpose(2, 0, 1)
    _, h, w = image.shape
    kernel = np.array([0.25, 0.5, 0.25], np.float32)  # the optics' point-spread function
    for axis in (1, 2):
        image = (
            kernel[0] * np.roll(image, 1, axis)
            + kernel[1] * image
            + kernel[2] * np.roll(image, -1, axis)
        )
    image *= 1 + 0.3 * (smooth_field(rng, h, w, 300)[None] - 0.5)  # illumination
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 1, 254)


def _footprint(rng: np.random.Generator, size: int) -> tuple[Bools, Bools]:
    """The pixels outside a rotated valid footprint, and unlabelled patches inside it."""
    h = w = size
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32) - size / 2
    angle = rng.uniform(0.15, 0.35)
    u = np.cos(angle) * rows + np.sin(angle) * cols
    v = -np.sin(angle) * rows + np.cos(angle) * cols
    invalid = (np.abs(u) > 0.47 * size) | (np.abs(v) > 0.47 * size)
    unlabelled = smooth_field(rng, h, w, 120) > 0.86
    return invalid, unlabelled


def _write(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str],
    image: NDArray[Any],
    labels: Labels,
    *,
    nodata: int,
    seed: int,
) -> tuple[Path, Path]:
    """Write the image and its labels as tiled GeoTIFFs on one grid."""
    _, h, w = image.shape
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
    with rasterio.open(
        image_path, "w", count=3, dtype=image.dtype.name, nodata=nodata, **profile
    ) as dst:
        dst.write(image)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=NODATA, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(THIN_COLORS)})
    return image_path, label_path


def _segment_distance(
    rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Distance of every (row, col) to the segment ``a``-``b`` (pixel units)."""
    d = b - a
    t = ((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0, 1)
    return np.hypot(rows - (a[0] + t * d[0]), cols - (a[1] + t * d[1]))


def _draw_roads(rng: np.random.Generator, labels: Labels, count: int) -> None:
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


def _draw_buildings(rng: np.random.Generator, labels: Labels, count: int) -> Bools:
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
    result: Bools = shadow & (labels == 0)
    return result
