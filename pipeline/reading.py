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
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Literal

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from .batches import PixelBatch
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
    window = window.to_rasterio()
    try:
        data = src.read(list(bands), window=window, out_dtype="float32")
        band_valid = src.read_masks(list(bands), window=window) > 0
    except RasterioError as exc:
        raise SceneError(
            src.name,
            f"cannot read rows {window.row_off}-{window.row_off + window.height}, cols "
            f"{window.col_off}-{window.col_off + window.width} ({exc}); the file may be "
            "truncated or corrupt",
        ) from exc
    band_valid &= np.isfinite(data)
    return data, band_valid


def pixel_valid(band_valid: np.ndarray) -> np.ndarray:
    """Pixels with at least one valid band: ``(h, w)`` from ``(bands, h, w)``."""
    return band_valid.any(axis=0)


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
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.path = str(path)
        self.bands = list(bands)
        self._mean = np.asarray(mean, dtype=np.float32)
        self._std = np.asarray(std, dtype=np.float32)
        self._local = threading.local()
        self._handles: list[rasterio.io.DatasetReader] = []
        self._lock = threading.Lock()

    def _handle(self) -> rasterio.io.DatasetReader:
        src = getattr(self._local, "src", None)
        if src is None:
            src = open_raster(self.path)
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image, valid)``: float32 ``(bands, h, w)`` normalised, with invalid
        band values at 0, and bool ``(h, w)`` (:func:`read_bands`' rule)."""
        data, band_valid = read_bands(self._handle(), self.bands, window)
        return normalize(data, band_valid, self._mean, self._std), pixel_valid(band_valid)

    def close(self) -> None:
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()
        self._local = threading.local()

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


# -- raw batches for inference --------------------------------------------------
#
# Inference reads the source's own values (no float32 copy, no normalisation:
# the model's replica does that on its device) through a cache of decoded,
# block-aligned pieces of the scene. GDAL decodes a block once when it is read
# whole and aligned, but a window that cuts blocks (every tile's halo does) is
# decoded afresh on every read, bypassing GDAL's block cache: with 512-px blocks
# a 1536-px core plus its 96-px halo touches 5 x 5 blocks against 3 x 3 for the
# core, 2.8 times the decoding. Here each block is decoded once per process
# while it stays in the cache, whichever thread needs it, and windows are
# assembled from the decoded pieces.

#: How a scene's file declares which values are valid (see :class:`PixelBatch`).
ValidityRule = Literal["nodata", "dataset", "bands"]

#: Decoded pixels a process keeps for raw reads, all scenes together.
READ_CACHE_BYTES = 256 * 2**20
#: A cached piece is whole GDAL blocks, at least this many pixels on a side
#: (striped files have blocks of a few rows) ...
_MIN_PIECE_EDGE = 256
#: ... and at most this many pixels; a file whose blocks are larger (one strip
#: for the whole scene) is read window by window instead.
_MAX_PIECE_PIXELS = 4 * 2**20


def validity_rule(
    flags: Sequence[Sequence[str]], dtypes: Sequence[str], nodatavals: Sequence[float | None]
) -> tuple[ValidityRule, tuple[float | None, ...]]:
    """Which rule decides validity for these bands (GDAL mask flag names, dtypes,
    nodata values), and the per-band nodata values it applies.

    ``nodata``: every band is either all valid or masked by its nodata value, and
    the data are integers, so ``value != nodata`` is exactly GDAL's mask (no mask
    needs reading). ``dataset``: one GDAL mask for all bands (internal or sidecar
    mask, alpha band). ``bands``: anything else (floating-point nodata, per-band
    masks): each band's GDAL mask is read, as :func:`read_bands` does.
    """
    names = [set(f) for f in flags]
    integer = all(np.issubdtype(np.dtype(d), np.integer) for d in dtypes)
    if all(n == {"all_valid"} for n in names) or (
        integer and all(n in ({"nodata"}, {"all_valid"}) for n in names)
    ):
        nodata = tuple(
            float(v) if "nodata" in n and v is not None else None
            for n, v in zip(names, nodatavals, strict=True)
        )
        return "nodata", nodata
    none = (None,) * len(names)
    if all("per_dataset" in n for n in names):
        return "dataset", none
    return "bands", none


class _DecodedPieces:
    """Decoded block-aligned pieces of scenes, shared by every thread of a process:
    least recently used first out, within :data:`READ_CACHE_BYTES`. A piece two
    threads ask for at once is decoded by one of them."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.pieces: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray | None]] = (
            OrderedDict()
        )
        self.pending: dict[tuple[int, int, int], threading.Event] = {}
        self.lock = threading.Lock()

    def get(self, key, decode):  # type: ignore[no-untyped-def]
        while True:
            with self.lock:
                piece = self.pieces.get(key)
                if piece is not None:
                    self.pieces.move_to_end(key)
                    return piece
                waiting = self.pending.get(key)
                if waiting is None:
                    self.pending[key] = threading.Event()
                    break
            waiting.wait()  # another thread decodes it; then look again
        try:
            piece = decode()
        except BaseException:
            with self.lock:
                self.pending.pop(key).set()
            raise
        with self.lock:
            self.pieces[key] = piece
            self.bytes += sum(a.nbytes for a in piece if a is not None)
            while self.bytes > self.budget and len(self.pieces) > 1:
                _, old = self.pieces.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old if a is not None)
            self.pending.pop(key).set()
        return piece

    def drop(self, owner: int) -> None:
        with self.lock:
            for key in [k for k in self.pieces if k[0] == owner]:
                old = self.pieces.pop(key)
                self.bytes -= sum(a.nbytes for a in old if a is not None)


_PIECES = _DecodedPieces(READ_CACHE_BYTES)


class SceneReader:
    """Reads batches of tile windows of one scene as stored (:class:`PixelBatch`),
    from any number of threads: one GDAL handle per thread, decoded pieces shared.

    Pixels are kept interleaved, ``(h, w, bands)``: how most imagery is stored
    (GDAL reads it without reordering) and the model's channels-last layout, so
    the window is never transposed on the way.

    Parameters
    ----------
    path
        The scene.
    bands
        1-based band indexes, in the order the model takes them.
    """

    def __init__(self, path: str | PathLike[str], bands: Sequence[int]) -> None:
        self.path = str(path)
        self.bands = [int(b) for b in bands]
        self._local = threading.local()
        self._handles: list[rasterio.io.DatasetReader] = []
        self._lock = threading.Lock()
        src = self._handle()
        i = [b - 1 for b in self.bands]
        self.dtype = np.dtype(src.dtypes[i[0]])
        if any(np.dtype(src.dtypes[k]) != self.dtype for k in i):
            raise SceneError(self.path, "the selected bands have different data types")
        self.shape = (src.height, src.width)
        flags = [[f.name for f in src.mask_flag_enums[k]] for k in i]
        self.rule, self.nodata = validity_rule(
            flags, [src.dtypes[k] for k in i], [src.nodatavals[k] for k in i]
        )
        self.piece = self._piece_shape({src.block_shapes[k] for k in i})

    def _piece_shape(self, blocks: set[tuple[int, int]]) -> tuple[int, int] | None:
        if len(blocks) != 1:
            return None
        (bh, bw), (h, w) = blocks.pop(), self.shape
        ph = min(bh * -(-_MIN_PIECE_EDGE // bh), h)
        pw = min(bw * -(-_MIN_PIECE_EDGE // bw), w)
        return (ph, pw) if ph * pw <= _MAX_PIECE_PIXELS else None

    def _handle(self) -> rasterio.io.DatasetReader:
        src = getattr(self._local, "src", None)
        if src is None:
            src = open_raster(self.path)
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def read_batch(self, tiles: Sequence[Tile]) -> PixelBatch:
        """Read the windows of a planned batch (tiles of equal geometry) into one
        array of the source's dtype, with the GDAL masks its rule needs."""
        h, w = tiles[0].read.shape
        n, b = len(tiles), len(self.bands)
        image = np.empty((n, h, w, b), self.dtype)
        masks = {"nodata": 0, "dataset": 1, "bands": b}[self.rule]
        valid = np.empty((n, h, w, masks), bool) if masks else None
        for k, tile in enumerate(tiles):
            self.read_into(tile.read, image[k], None if valid is None else valid[k])
        return PixelBatch(image, valid, self.nodata, tuple(int(v) for v in core_box(tiles[0])))

    def read_into(self, window: Window, image: np.ndarray, valid: np.ndarray | None) -> None:
        """Fill ``image`` ``(h, w, bands)`` (and ``valid``, when the rule reads
        masks) with a window's stored values."""
        if self.piece is None:
            self._decode(window, image, valid)
            return
        for piece, part in self._pieces(window):
            data, mask = _PIECES.get(
                (id(self), piece.row, piece.col), lambda p=piece: self._load(p)
            )
            inner = part.relative_to(piece)
            outer = part.relative_to(window)
            image[outer] = data[inner]
            if valid is not None and mask is not None:
                valid[outer] = mask[inner]

    def _pieces(self, window: Window) -> Iterator[tuple[Window, Window]]:
        """The cached pieces a window touches, and the part of the window in each."""
        assert self.piece is not None
        (ph, pw), (h, w) = self.piece, self.shape
        for r in range(window.row // ph * ph, window.row_end, ph):
            for c in range(window.col // pw * pw, window.col_end, pw):
                piece = Window(r, c, min(ph, h - r), min(pw, w - c))
                r0, c0 = max(r, window.row), max(c, window.col)
                r1, c1 = min(piece.row_end, window.row_end), min(piece.col_end, window.col_end)
                yield piece, Window(r0, c0, r1 - r0, c1 - c0)

    def _load(self, piece: Window) -> tuple[np.ndarray, np.ndarray | None]:
        image = np.empty((*piece.shape, len(self.bands)), self.dtype)
        masks = {"nodata": 0, "dataset": 1, "bands": len(self.bands)}[self.rule]
        valid = np.empty((*piece.shape, masks), bool) if masks else None
        self._decode(piece, image, valid)
        return image, valid

    def _decode(self, window: Window, image: np.ndarray, valid: np.ndarray | None) -> None:
        src, where = self._handle(), window.to_rasterio()
        try:
            # GDAL fills the (bands, h, w) view of the pixel-interleaved arrays.
            src.read(self.bands, window=where, out=image.transpose(2, 0, 1))
            if valid is not None:
                bands = self.bands[:1] if self.rule == "dataset" else self.bands
                valid[:] = src.read_masks(bands, window=where).transpose(1, 2, 0) > 0
        except RasterioError as exc:
            raise SceneError(
                self.path,
                f"cannot read rows {window.row}-{window.row_end}, cols {window.col}-"
                f"{window.col_end} ({exc}); the file may be truncated or corrupt",
            ) from exc

    def close(self) -> None:
        _PIECES.drop(id(self))
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()
        self._local = threading.local()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
