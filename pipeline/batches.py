"""What flows between the stages of a run: one typed value per hand-over.

A *batch* is a planned group of tiles of one scene, all of the same geometry
(:func:`~fcnrs.pipeline.planning.plan_batches`). It goes through the stages as::

    driver --BatchRequest--> read --PixelBatch--> predict --LabelBatch--> write --WriteSummary--> driver

Each stage gets only what it needs and returns only what it makes; the write
stage gets the request again (it is small) for the tiles and the output. Pixels
travel in their cheapest form: the source's own dtype (1 byte per band for
uint8 imagery) into the model's replica, which normalises and masks them on its
device, and uint8 labels out of it. The same values run in one process (the
local engine, :func:`~fcnrs.pipeline.segment.segment_scene`) and through Ray's
object store, where the arrays arrive as read-only zero-copy views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .planning import Tile


@dataclass(frozen=True)
class BatchRequest:
    """The driver's order for one batch: which tiles of which scene, and where to."""

    scene: str
    #: The source's identity (size, mtime, ETag): a replaced file is opened anew.
    version: str
    #: The published label raster, ``OUT/<stem>.zarr``; chunks go to its staging group.
    output: str
    #: 1-based band indexes, in the model's order.
    bands: tuple[int, ...]
    tiles: tuple[Tile, ...]
    write_probabilities: bool


@dataclass(frozen=True)
class PixelBatch:
    """The read windows of a batch, as stored in the scene (read stage -> predict stage).

    Validity follows :func:`~fcnrs.pipeline.reading.read_bands`' rule; which part
    of it needs shipping depends on how the file declares validity:

    - ``valid is None``: a band value is valid unless it equals that band's
      ``nodata`` value (``None``: no such value) and, for floating-point data,
      unless it is not finite;
    - ``valid`` of shape ``(n, h, w, 1)``: one GDAL mask for every band (an
      internal or sidecar mask, an alpha band), and finite values;
    - ``valid`` of shape ``(n, h, w, bands)``: each band's own GDAL mask, and
      finite values.

    A pixel is valid where any of its bands is. Bands are the last axis (pixels
    interleaved): the layout of most stored imagery and of the model's
    channels-last input, so no window is transposed between file and model.
    """

    #: ``(n, h, w, bands)`` in the source's dtype, raw (not normalised).
    image: np.ndarray
    #: GDAL's masks where the file has them, else None (see above).
    valid: np.ndarray | None
    #: Per band: the value that marks it invalid where ``valid`` is None.
    nodata: tuple[float | None, ...]
    #: Row, column, height, width of the core inside each window (equal for all).
    core: tuple[int, int, int, int]

    def __len__(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class LabelBatch:
    """Labels of a batch's cores (predict stage -> write stage)."""

    #: uint8 ``(n, h, w)``; :data:`~fcnrs.pipeline.labels.NODATA` where the input is invalid.
    labels: np.ndarray
    #: uint8 ``(n, classes, h, w)`` (softmax x 255, 0 where invalid), when asked for.
    probabilities: np.ndarray | None
    #: Tiles that went to the model (the others have no valid pixel in their core).
    predicted: int
    #: The replica that computed them: the run summary shows how work spread.
    replica: str = ""
    #: Seconds the replica's model step took (its busy time).
    seconds: float = 0.0


@dataclass(frozen=True)
class WriteSummary:
    """What the write stage tells the driver about a batch it wrote."""

    replica: str
    tiles: int
    predicted: int
    valid_pixels: int
    #: Seconds the replica's model step took for this batch.
    replica_seconds: float = 0.0
