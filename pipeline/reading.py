"""Scene reading: metadata, band selection, validity masks and windowed reads.

GDAL dataset handles are not thread-safe, so a :class:`TileReader` keeps one
handle per thread (and each process builds its own reader). A scene is only ever
read window by window.

Validity comes from the file itself, through GDAL's mask machinery: a declared
nodata value, an internal or sidecar (``.msk``) mask, or an alpha band. As with
GDAL's dataset mask, a pixel is valid when any selected band is valid there; a
band that is invalid (or not finite) inside a valid pixel is replaced by its mean,
which normalises to 0. Non-finite values count as invalid even with no nodata
declared, as real float archives often hold NaN without saying so.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from .errors import SceneError
from .planning import Tile, Window
from .storage import Location, is_url, sync_gdal_env

# GDAL's block cache defaults to 5% of RAM (1.2 GiB on a 24 GiB machine) and fills
# up on large scenes; a tile needs a few MiB of it. The operator's setting wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")

#: The one GDAL driver an untrusted scene is opened with (COGs are GeoTIFFs too); not
#: every driver GDAL has, as several parse formats that can reference other files.
SCENE_DRIVER = "GTiff"


@dataclass(frozen=True)
class SceneInfo:
    """What planning and writing need to know about a scene, read from its header."""

    path: str
    height: int
    width: int
    count: int
    dtypes: tuple[str, ...]
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    nodata: float | None
    mask_flags: tuple[tuple[str, ...], ...]
    size_bytes: int
    mtime_ns: int
    etag: str = ""  # objects in S3: a replaced object has a new one


def open_raster(path: str | PathLike[str]) -> rasterio.io.DatasetReader:
    """Open a raster for reading with the allowed driver only, or raise
    :class:`SceneError` naming it. Every raster the project reads (scenes, label
    rasters for training, GeoTIFFs it exported) goes through here."""
    path = str(path)
    if not is_url(path) and not os.path.exists(path):
        raise SceneError(path, "no such file")
    if is_url(path):
        sync_gdal_env()
    try:
        return rasterio.open(path, driver=SCENE_DRIVER)
    except RasterioError as exc:
        if is_url(path):
            _check_object(path)  # a missing object or a refused request says so
        raise SceneError(path, f"not a readable {SCENE_DRIVER} raster ({exc})") from exc


def _check_object(url: str) -> None:
    try:
        Location(url).head()
    except OSError as exc:  # FileNotFoundError, PermissionError: the reason, and fast
        raise SceneError(url, str(exc).removeprefix(f"{url}: ")) from None


def inspect_scene(path: str | PathLike[str]) -> SceneInfo:
    """Read a scene's header (no pixels)."""
    with open_raster(path) as src:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise SceneError(
                path,
                "rotated or sheared geotransform; output label rasters carry 1-D x/y "
                "coordinates, so warp the scene to a north-up grid first (gdalwarp)",
            )
        source = Location(path).head()
        return SceneInfo(
            path=str(path),
            height=src.height,
            width=src.width,
            count=src.count,
            dtypes=tuple(src.dtypes),
            crs_wkt=src.crs.to_wkt() if src.crs else None,
            transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            nodata=src.nodata,
            mask_flags=tuple(tuple(f.name for f in flags) for flags in src.mask_flag_enums),
            size_bytes=source["size"],
            mtime_ns=source["mtime_ns"],
            etag=source["etag"],
        )


def resolve_bands(
    info: SceneInfo, bands: Sequence[int], *, expected: int | None = None
) -> tuple[int, ...]:
    """Check 1-based band indexes against the scene (and the model's band count)."""
    bands = tuple(int(b) for b in bands)
    if expected is not None and len(bands) != expected:
        raise SceneError(
            info.path,
            f"the model takes {expected} bands but {len(bands)} were selected "
            f"({list(bands)}); choose {expected} with --bands",
        )
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise SceneError(
            info.path,
            f"band index {bad[0]} does not exist: the file has {info.count} band(s), "
            f"numbered 1..{info.count} (GDAL's 1-based convention)",
        )
    return bands


def read_bands(
    src: rasterio.io.DatasetReader, bands: Sequence[int], window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Raw float32 ``(bands, h, w)`` values of a window and their per-band validity.

    This is the one pixel-validity rule, used alike by inference, training and band
    statistics: a band value is valid where GDAL's mask for that band says so (nodata
    value, internal or sidecar mask, alpha) and it is finite. A *pixel* is valid
    where any of its bands is (:func:`pixel_valid`), as with GDAL's dataset mask.
    """
    try:
        data = src.read(list(bands), window=window.to_rasterio(), out_dtype="float32")
        band_valid = src.read_masks(list(bands), window=window.to_rasterio()) > 0
    except RasterioError as exc:
        raise SceneError(
            src.name,
            f"cannot read rows {window.row}-{window.row + window.height}, cols "
            f"{window.col}-{window.col + window.width} ({exc}); the file may be "
            "truncated or corrupt",
        ) from exc
    band_valid &= np.isfinite(data)
    return data, band_valid


def pixel_valid(band_valid: np.ndarray) -> np.ndarray:
    """Pixels with at least one valid band: ``(h, w)`` from ``(bands, h, w)``."""
    return np.asarray(band_valid.any(axis=0))


def normalize(
    data: np.ndarray,
    band_valid: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(data - mean) / std`` in place (or into ``out``, float32, which may then
    be read from any view of ``data``: one pass copies and normalises), with
    invalid band values at 0 (the band's mean), so raw nodata values never reach
    the model."""
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    if out is None:
        out = data
        out -= mean
    else:
        np.subtract(data, mean, out=out)
    out *= (1.0 / np.asarray(std, np.float32)).reshape(-1, 1, 1)
    out[~band_valid] = 0.0
    return out


class ThreadHandles:
    """One open dataset per thread for a scene (GDAL handles are not shared
    between threads), all closed together."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._handles: list[rasterio.io.DatasetReader] = []
        self._lock = threading.Lock()

    def get(self) -> rasterio.io.DatasetReader:
        """This thread's handle, opened (:func:`open_raster`) on first use."""
        src: rasterio.io.DatasetReader | None = getattr(self._local, "src", None)
        if src is None:
            src = open_raster(self.path)
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def close(self) -> None:
        """Close every thread's handle; a later :meth:`get` opens anew."""
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()
        self._local = threading.local()


class TileReader:
    """Reads normalised windows of selected bands and their validity.

    Parameters
    ----------
    path
        The scene.
    bands
        1-based band indexes, in the order the model takes them.
    mean, std
        Per-band normalisation, ``(value - mean) / std``.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        bands: Sequence[int],
        *,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.path = str(path)
        self.bands = list(bands)
        self._mean = np.asarray(mean, dtype=np.float32)
        self._std = np.asarray(std, dtype=np.float32)
        self._handles = ThreadHandles(self.path)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image, valid)``: float32 ``(bands, h, w)`` normalised, with invalid
        band values at 0, and bool ``(h, w)`` (:func:`read_bands`' rule)."""
        data, band_valid = read_bands(self._handles.get(), self.bands, window)
        return normalize(data, band_valid, self._mean, self._std), pixel_valid(band_valid)

    def close(self) -> None:
        """Close every thread's handle."""
        self._handles.close()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def core_box(tile: Tile) -> np.ndarray:
    """Row, col, height, width of a tile's core inside its read window."""
    core, read = tile.core, tile.read
    return np.array([core.row - read.row, core.col - read.col, core.height, core.width])


def read_batch(
    reader: TileReader, batch: Sequence[Tile]
) -> tuple[list[Tile], list[Tile], dict[str, np.ndarray] | None]:
    """Read a planned batch. Returns ``(nodata_tiles, tiles, arrays)``: tiles whose
    core has no valid pixel never reach the model; the others are stacked into the
    arrays :class:`~fcnrs.pipeline.inference.Predictor` takes (None when none is left)."""
    nodata, keep, images, valids = [], [], [], []
    for tile in batch:
        image, valid = reader.read(tile.read)
        if not valid[tile.core.relative_to(tile.read)].any():
            nodata.append(tile)
            continue
        keep.append(tile)
        images.append(image)
        valids.append(valid)
    if not keep:
        return nodata, keep, None
    arrays = {
        "image": np.stack(images),
        "valid": np.stack(valids),
        "core": np.stack([core_box(t) for t in keep]),
    }
    return nodata, keep, arrays
