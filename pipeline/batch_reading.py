"""Reading batches for inference: the stored values of a batch's windows.

Inference reads the source's own values (no float32 copy, no normalisation:
the model's replica does that on its device) through a cache of decoded,
block-aligned pieces of the scene. GDAL decodes a block once when it is read
whole and aligned, but a window that cuts blocks (every tile's halo does) is
decoded afresh on every read, bypassing GDAL's block cache: with 512-px blocks
a 1536-px core plus its 96-px halo touches 5 x 5 blocks against 3 x 3 for the
core, 2.8 times the decoding. Here each block is decoded once per process
while it stays in the cache, whichever thread needs it, and windows are
assembled from the decoded pieces. Validity follows
:func:`~fcnrs.pipeline.reading.read_bands`' rule (see
:class:`~fcnrs.pipeline.batches.PixelBatch`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from os import PathLike
from typing import Literal

import numpy as np
from rasterio.errors import RasterioError

from .batches import PixelBatch
from .errors import SceneError
from .planning import Tile, Window
from .reading import ThreadHandles, core_box

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


#: A decoded piece: its stored values and, where the validity rule reads masks, its masks.
_Piece = tuple[np.ndarray, np.ndarray | None]


class _DecodedPieces:
    """Decoded block-aligned pieces of scenes, shared by every thread of a process:
    least recently used first out, within :data:`READ_CACHE_BYTES`. A piece two
    threads ask for at once is decoded by one of them."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.pieces: OrderedDict[tuple[int, int, int], _Piece] = OrderedDict()
        self.pending: dict[tuple[int, int, int], threading.Event] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int, int], decode: Callable[[], _Piece]) -> _Piece:
        """The piece under ``key``, decoded by ``decode()`` when it is not here."""
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
        self._handles = ThreadHandles(self.path)
        src = self._handles.get()
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
        r, c, h, w = (int(v) for v in core_box(tiles[0]))
        return PixelBatch(image, valid, self.nodata, (r, c, h, w))

    def read_into(self, window: Window, image: np.ndarray, valid: np.ndarray | None) -> None:
        """Fill ``image`` ``(h, w, bands)`` (and ``valid``, when the rule reads
        masks) with a window's stored values."""
        if self.piece is None:
            self._decode(window, image, valid)
            return
        for piece, part in self._pieces(window):
            data, mask = _PIECES.get((id(self), piece.row, piece.col), partial(self._load, piece))
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
        src, where = self._handles.get(), window.to_rasterio()
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
        self._handles.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
