"""Tile planning: pure functions of (scene shape, settings), no I/O.

A tile is a *core* (the pixels it owns in the output, and the output chunk it
writes) plus a *halo* of context on every side, clipped to the scene. Cores
partition the scene exactly. Every core and every read window starts on a
multiple of the network's stride from the scene origin, so a tile sees its pixels
at the same phase of the stride-32 pooling grid as a whole-scene pass would (off
the stride, tiles agreed with a whole-scene pass on only 31-46% of pixels when
this was measured; a test shows the difference).

The halo is the context a core's labels depend on. FCN-8s's receptive field is
about 400 px across, but how far a network actually looks depends on its
weights (a freshly initialised FCN-8s needs about 192 px for 99.9% agreement
with a whole-scene pass, trained ones 32-64 px), so a run takes its halo from
the checkpoint (:mod:`fcnrs.pipeline.context`). :data:`DEFAULT_OVERLAP` is only
this module's default for planning without a model in view (benchmarks of the
I/O path): 96 px, which with 1536-px cores costs 1.2-1.27 pixels computed per
pixel written (:meth:`TileGrid.computed_per_written`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rasterio.windows import Window as RasterioWindow

from fcnrs.fcn_model.meta import STRIDE

log = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 1536
#: The halo when no model is in view; runs use the checkpoint's (see above).
DEFAULT_OVERLAP = 96


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: rows ``[row, row + height)``, cols ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.row < 0 or self.col < 0:
            raise ValueError(f"Expected a non-empty window at row, col >= 0. Got {self}.")

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row_end), slice(self.col, self.col_end)

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """Slices of this window inside an array covering ``outer``."""
        r, c = self.row - outer.row, self.col - outer.col
        return slice(r, r + self.height), slice(c, c + self.width)

    def to_rasterio(self) -> RasterioWindow:
        """rasterio's window for the same pixels (its order: col, row, width, height)."""
        return RasterioWindow(self.col, self.row, self.width, self.height)

    def __str__(self) -> str:
        return f"rows {self.row}-{self.row_end}, cols {self.col}-{self.col_end}"


@dataclass(frozen=True)
class Tile:
    """One unit of work: the core it owns and the (larger) window it reads."""

    index: tuple[int, int]
    core: Window
    read: Window


@dataclass(frozen=True)
class TileGrid:
    """All tiles of a scene; ``tile_size`` and ``overlap`` are the values in force
    after rounding, ``requested`` what the user asked for."""

    height: int
    width: int
    tile_size: int
    overlap: int
    stride: int
    requested: tuple[int, int]
    notes: tuple[str, ...] = field(default=())

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def max_read_shape(self) -> tuple[int, int]:
        """The largest window any tile reads: one core plus its halo on both sides."""
        edge = self.tile_size + 2 * self.overlap
        return (min(edge, self.height), min(edge, self.width))

    def tile(self, i: int, j: int) -> Tile:
        if not (0 <= i < self.rows and 0 <= j < self.cols):
            raise IndexError(f"Tile ({i}, {j}) is outside a {self.rows} x {self.cols} grid.")
        t, h = self.tile_size, self.overlap
        r0, c0 = i * t, j * t
        r1, c1 = min(r0 + t, self.height), min(c0 + t, self.width)
        rr0, cc0 = max(r0 - h, 0), max(c0 - h, 0)
        rr1, cc1 = min(r1 + h, self.height), min(c1 + h, self.width)
        return Tile(
            index=(i, j),
            core=Window(r0, c0, r1 - r0, c1 - c0),
            read=Window(rr0, cc0, rr1 - rr0, cc1 - cc0),
        )

    def __iter__(self) -> Iterator[Tile]:
        for i in range(self.rows):
            for j in range(self.cols):
                yield self.tile(i, j)

    def computed_per_written(self) -> float:
        """The halo's cost: pixels the model computes (each window, as the model
        pads it to multiples of the stride) per pixel written (the scene)."""
        computed = 0
        for tile in self:
            h, w = tile.read.shape
            computed += (-(-h // self.stride) * self.stride) * (-(-w // self.stride) * self.stride)
        return computed / (self.height * self.width)

    def as_dict(self) -> dict[str, object]:
        return {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "stride": self.stride,
            "requested_tile_size": self.requested[0],
            "requested_overlap": self.requested[1],
            "rows": self.rows,
            "cols": self.cols,
            "notes": list(self.notes),
        }


def round_to_stride(tile_size: int, overlap: int, stride: int) -> tuple[int, int, list[str]]:
    """Round a requested core size and halo to multiples of ``stride``.

    The core goes to the nearest multiple (at least one stride), the halo up to the
    next one (more context never costs accuracy). Returns the values in force and a
    note per change.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be at least 1 pixel. Got {tile_size} instead.")
    if overlap < 0:
        raise ValueError(f"overlap must be 0 or more pixels. Got {overlap} instead.")
    core = max(stride, stride * round(tile_size / stride))
    halo = -(-overlap // stride) * stride
    notes = []
    if core != tile_size:
        notes.append(
            f"tile size {tile_size} rounded to {core}, the nearest multiple of the "
            f"network stride {stride}"
        )
    if halo != overlap:
        notes.append(
            f"overlap {overlap} rounded up to {halo}, a multiple of the network stride {stride}"
        )
    return core, halo, notes


def plan_tiles(
    height: int,
    width: int,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    stride: int = STRIDE,
) -> TileGrid:
    """Cut a ``height x width`` scene into stride-aligned cores with halos.

    Parameters
    ----------
    height, width
        Scene size in pixels.
    tile_size
        Edge of a tile's core: the pixels it owns and the output chunk size.
        Rounded to the nearest multiple of ``stride``.
    overlap
        Halo of context read on every side of the core (clipped at the scene
        edges). Rounded up to a multiple of ``stride``. The model sees windows of
        up to ``tile_size + 2 * overlap`` pixels.
    stride
        The network's coarsest stride (:data:`fcnrs.fcn_model.STRIDE`, 32).
    """
    if height < 1 or width < 1:
        raise ValueError(f"Expected a scene of at least 1x1 pixels. Got {height}x{width}.")
    core, halo, notes = round_to_stride(tile_size, overlap, stride)
    for note in notes:
        log.info("tiling: %s", note)
    return TileGrid(
        height=height,
        width=width,
        tile_size=core,
        overlap=halo,
        stride=stride,
        requested=(tile_size, overlap),
        notes=tuple(notes),
    )


def geometry_key(tile: Tile) -> tuple[int, ...]:
    """Tiles with equal keys have equal window shapes and core boxes: they stack
    into one batch and crop alike."""
    core, read = tile.core, tile.read
    return (read.height, read.width, core.row - read.row, core.col - read.col, *core.shape)


def plan_batches(tiles: Iterable[Tile], batch_size: int) -> list[tuple[Tile, ...]]:
    """Cut tiles into fixed batches of equal geometry.

    Batches follow the tiles' window shapes, smallest first (edge and corner
    tiles, whose windows the scene's edges clip, usually before interior ones),
    row-major within a shape. The batches are a pure function of the grid and the batch size, so a
    resumed or distributed run feeds the model exactly the same batches as an
    uninterrupted one, and holding one batch bounds the memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Got {batch_size} instead.")
    ordered = sorted(tiles, key=lambda t: (geometry_key(t), t.index))
    batches: list[tuple[Tile, ...]] = []
    for tile in ordered:
        last = batches[-1] if batches else ()
        if last and len(last) < batch_size and geometry_key(last[0]) == geometry_key(tile):
            batches[-1] = (*last, tile)
        else:
            batches.append((tile,))
    return batches
