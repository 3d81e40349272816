"""Prediction: a callable class that turns batches of stored pixels into labels.

Ray's batch-inference idiom: ``__init__`` loads the model once per worker and
``__call__(batch: PixelBatch) -> LabelBatch`` runs under ``torch.inference_mode()``.
It is equally usable with no cluster at all.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch

from fcnrs.fcn_model import load_checkpoint

from .batches import LabelBatch, PixelBatch
from .labels import MAX_CLASSES, NODATA
from .precision import Precision, cpu_has_fast_bf16, default_device, resolve_precision
from .storage import local_copy
from .tta import TTA, averaged_probabilities, check_mode

__all__ = [
    "CPU_BATCH",
    "MAX_GPU_BATCH",
    "LabelBatch",
    "Normalizer",
    "PixelBatch",
    "Precision",
    "Predictor",
    "Prepared",
    "cpu_has_fast_bf16",
    "default_device",
    "resolve_precision",
]

#: Tiles per batch on a CPU: 4 windows of 1728² keep every core busy and memory small.
CPU_BATCH = 4
#: The most tiles per batch on a GPU, whatever its memory: the host holds a few
#: batches per replica in flight.
MAX_GPU_BATCH = 32
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a numpy array's memory; arrays from Ray's object store are
    read-only views, which are only ever read here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _unsigned(array: np.ndarray) -> np.ndarray:
    """Integer values as the unsigned integers of the same width (a view): LUT indexes."""
    return array.view(f"u{array.dtype.itemsize}") if array.dtype.kind == "i" else array


class Normalizer:
    """The model's input from stored pixels, on the replica's device.

    The same arithmetic as :func:`~fcnrs.pipeline.reading.normalize` (float32
    ``(value - mean) * (1 / std)``, invalid band values at 0, then the model's
    dtype), so labels are the same bytes as from pre-normalised float32 input;
    validity follows :class:`~fcnrs.pipeline.batches.PixelBatch`. On a CPU,
    integer data of up to 16 bits go through a lookup table per band (every
    stored value, normalised once), which costs a third of the arithmetic; a GPU
    computes it, as it does every other type.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = 1.0 / np.asarray(std, np.float32)
        self.dtype, self.device = dtype, device
        self._tables: dict[tuple[str, tuple[float | None, ...]], np.ndarray] = {}

    def __call__(self, batch: PixelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, valid)``: the model's input ``(n, bands, h, w)``, channels-last in
        memory (its dtype, on its device), and which core pixels are valid, bool
        ``(n, core h, core w)``."""
        image = batch.image
        nodata = _usable(image.dtype, batch.nodata)
        if self.device.type == "cpu" and image.dtype.kind in "iu" and image.dtype.itemsize <= 2:
            x = self._looked_up(image, nodata)
        else:  # a GPU computes it faster than it would gather it
            x = self._computed(image, nodata)
        masks = None
        if batch.valid is not None:
            masks = self._to_device(batch.valid)
            x.masked_fill_(~masks, 0)
        r, c, h, w = batch.core
        core = (slice(None), slice(None), slice(r, r + h), slice(c, c + w))
        planes = self._band_ok(
            self._to_device(image)[core], None if masks is None else masks[core], nodata
        )
        known = [p for p in planes if p is not None]
        if len(known) < len(planes):  # a band with nothing invalid: every pixel
            return x, torch.ones((len(batch), h, w), dtype=torch.bool, device=self.device)
        valid = known[0].clone()
        for plane in known[1:]:
            valid |= plane
        return x, valid

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """An ``(n, h, w, c)`` array as an ``(n, c, h, w)`` tensor on the device,
        channels-last in memory (a view: nothing is reordered)."""
        t = _tensor(array)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t.permute(0, 3, 1, 2)

    def _table(self, dtype: np.dtype, nodata: tuple[float | None, ...]) -> np.ndarray:
        """Every stored value of ``dtype``, normalised per band and in the model's
        dtype (bf16 as its 16 bits: numpy gathers them faster than torch)."""
        key = (dtype.str, nodata)
        table = self._tables.get(key)
        if table is None:
            codes = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}")
            values = codes.view(dtype).astype(np.float32)
            lut = (values[None, :] - self.mean[:, None]) * self.inv_std[:, None]
            for b, v in enumerate(nodata):
                if v is not None:
                    lut[b, np.array(v, dtype).view(codes.dtype)] = 0.0
            t = torch.from_numpy(lut).to(self.dtype)
            table = t.view(torch.int16).numpy() if self.dtype == torch.bfloat16 else t.numpy()
            self._tables[key] = table
        return table

    def _looked_up(self, image: np.ndarray, nodata: tuple[float | None, ...]) -> torch.Tensor:
        table = self._table(image.dtype, nodata)
        codes = _unsigned(image)
        out = np.empty(image.shape, table.dtype)
        plane = np.empty(image.shape[1:3], table.dtype)
        # Plane by plane into contiguous memory, without bounds checks (every code
        # is in the table), then interleaved: twice the speed of gathering
        # straight into the interleaved array, which numpy buffers.
        for k in range(image.shape[0]):
            for b in range(image.shape[3]):
                np.take(table[b], codes[k, :, :, b], out=plane, mode="wrap")
                out[k, :, :, b] = plane
        x = torch.from_numpy(out)
        x = x.view(torch.bfloat16) if self.dtype == torch.bfloat16 else x
        return x.permute(0, 3, 1, 2)

    def _computed(self, image: np.ndarray, nodata: tuple[float | None, ...]) -> torch.Tensor:
        raw = self._to_device(image)
        x = raw.to(torch.float32, copy=True)  # never the batch itself: it is only read
        shape = (1, -1, 1, 1)
        x.sub_(torch.from_numpy(self.mean).to(self.device).view(shape))
        x.mul_(torch.from_numpy(self.inv_std).to(self.device).view(shape))
        for b, ok in enumerate(self._band_ok(raw, None, nodata)):
            if ok is not None:
                x[:, b].masked_fill_(~ok, 0)
        return x.to(self.dtype)

    @staticmethod
    def _band_ok(
        raw: torch.Tensor, masks: torch.Tensor | None, nodata: tuple[float | None, ...]
    ) -> list[torch.Tensor | None]:
        """Each band's validity of stored values ``(n, h, w)``; None: all valid."""
        planes: list[torch.Tensor | None] = []
        for b, v in enumerate(nodata):
            ok = None if masks is None else masks[:, min(b, masks.shape[1] - 1)]
            if raw.is_floating_point():
                finite = torch.isfinite(raw[:, b])
                ok = finite if ok is None else ok & finite
            if v is not None:
                differs = raw[:, b] != (v if raw.is_floating_point() else int(v))
                ok = differs if ok is None else ok & differs
            planes.append(ok)
        return planes


@dataclass(frozen=True)
class Prepared:
    """A batch ready for the model (:meth:`Predictor.prepare`), in this process."""

    #: The kept tiles' input on the model's device, ``(kept, bands, h, w)``.
    x: torch.Tensor
    #: Their valid core pixels, bool ``(kept, core h, core w)``, on the device.
    valid: torch.Tensor
    #: Which of the batch's tiles are kept (have a valid core pixel).
    keep: np.ndarray
    core: tuple[int, int, int, int]


def _all_rows(kept: np.ndarray, rows: np.ndarray, fill: int) -> np.ndarray:
    """Per-tile results of the kept tiles placed among all of a batch's tiles
    (``fill`` for the others); the array itself when every tile was kept."""
    if rows.all():
        return kept
    out = np.full((len(rows), *kept.shape[1:]), fill, kept.dtype)
    out[rows] = kept
    return out


def _usable(dtype: np.dtype, nodata: tuple[float | None, ...]) -> tuple[float | None, ...]:
    """The nodata values that can occur in ``dtype`` (None for the others: GDAL's
    mask treats a value an integer band cannot hold, such as -1 for uint8, as
    no nodata at all)."""
    if dtype.kind == "f":
        return nodata
    info = np.iinfo(dtype)
    return tuple(
        v if v is not None and float(v).is_integer() and info.min <= v <= info.max else None
        for v in nodata
    )


class Predictor:
    """Labels (and optionally class probabilities) for batches of tiles.

    Takes a :class:`~fcnrs.pipeline.batches.PixelBatch` (stored pixels, read by
    :class:`~fcnrs.pipeline.batch_reading.SceneReader`) and returns a
    :class:`~fcnrs.pipeline.batches.LabelBatch`: labels uint8 ``(n, h, w)``
    cropped to the core, :data:`~fcnrs.pipeline.labels.NODATA` where the input is
    invalid, and with ``probabilities`` set, uint8 ``(n, classes, h, w)``
    (softmax x 255, 0 where invalid). Normalisation, masking, the argmax and the
    crop all run on the model's device; tiles whose core has no valid pixel do
    not go through the model. With ``tta`` other than ``none``, labels and
    probabilities come from class probabilities averaged over flipped (and
    turned) copies of each window, kept on the stride grid (:mod:`.tta`).
    """

    def __init__(
        self,
        model: str | PathLike[str],
        *,
        device: str | None = None,
        precision: Precision = "auto",
        probabilities: bool = False,
        tta: TTA = "none",
    ) -> None:
        self.tta = check_mode(tta)
        self.device = torch.device(device or default_device())
        self.precision = resolve_precision(precision, self.device.type)
        self.dtype = _DTYPES[self.precision]
        network, self.meta = load_checkpoint(local_copy(model))  # s3:// too
        # Channels-last: oneDNN's (and cuDNN's) fast convolution layout; 1.7x
        # (fp32) to 1.8x (bf16) the throughput of the default layout on CPU here.
        self.network = network.to(device=self.device, dtype=self.dtype)
        self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network.eval()
        self.probabilities = probabilities
        if self.num_classes > MAX_CLASSES:
            raise ValueError(
                f"At most {MAX_CLASSES} classes fit uint8 labels; got {self.num_classes}."
            )
        self.normalizer = Normalizer(
            self.meta.mean, self.meta.std, dtype=self.dtype, device=self.device
        )

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def __call__(self, batch: PixelBatch) -> LabelBatch:
        return self.infer(self.prepare(batch))

    def prepare(self, batch: PixelBatch) -> Prepared:
        """The model's input on its device, and which tiles and core pixels are
        valid (the part of a call that can run ahead of the model, on another
        thread)."""
        with torch.inference_mode():
            x, valid = self.normalizer(batch)
            keep = valid.flatten(1).any(1)
            kept = int(keep.sum())
            if 0 < kept < len(batch):
                x, valid = x[keep], valid[keep]
            return Prepared(x, valid, keep.cpu().numpy(), batch.core)

    def infer(self, prepared: Prepared) -> LabelBatch:
        """Labels (and probabilities) of a prepared batch."""
        start = time.perf_counter()
        r, c, h, w = prepared.core
        rows = prepared.keep
        n, classes = len(rows), self.num_classes
        if not rows.any():
            labels = np.full((n, h, w), NODATA, np.uint8)
            probs = np.zeros((n, classes, h, w), np.uint8) if self.probabilities else None
            return LabelBatch(labels, probs, 0)
        valid = prepared.valid
        with torch.inference_mode():
            # Channels-last already (a view of the interleaved pixels), unless
            # tiles without valid pixels were dropped from the batch.
            if self.tta == "none":
                scores = self.network(prepared.x.contiguous(memory_format=torch.channels_last))
                scores = scores[:, :, r : r + h, c : c + w]
            else:  # already probabilities, averaged over the passes
                scores = averaged_probabilities(
                    self.network, prepared.x, mode=self.tta, core=prepared.core
                )
            # argmax in the model's dtype (widening is exact: the same labels), into
            # one buffer per shape: a fresh int64 array per batch is page-faulted in
            # anew, a cost as large as the argmax itself on a CPU.
            index = self._buffer(scores.shape[:1] + scores.shape[2:], scores.device)
            torch.argmax(scores, dim=1, out=index)
            best = index.to(torch.uint8).masked_fill_(~valid, NODATA).cpu()
            labels = _all_rows(best.numpy(), rows, NODATA)
            probs = None
            if self.probabilities:
                p = scores if self.tta != "none" else torch.softmax(scores.float(), dim=1)
                p = p.mul_(255).round_().to(torch.uint8)
                probs = _all_rows(p.mul_(valid[:, None]).cpu().numpy(), rows, 0)
        return LabelBatch(labels, probs, int(rows.sum()), seconds=time.perf_counter() - start)

    def _buffer(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """An int64 array of this shape, the same one every call (the model runs
        one batch at a time)."""
        key = (tuple(shape), str(device))
        buffers: dict[tuple[tuple[int, ...], str], torch.Tensor]
        buffers = self.__dict__.setdefault("_buffers", {})
        if key not in buffers:
            buffers[key] = torch.empty(shape, dtype=torch.int64, device=device)
        return buffers[key]

    def batch_size(self, window: tuple[int, int]) -> int:
        """Tiles per batch for windows of this shape on this device: on a CPU
        :data:`CPU_BATCH`; on a GPU as many as half of its free memory holds, as
        measured by one forward pass (at most :data:`MAX_GPU_BATCH`)."""
        if self.device.type != "cuda":
            return CPU_BATCH
        bands = self.meta.in_channels
        x = torch.zeros((1, bands, *window), dtype=self.dtype, device=self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            self.network(x.contiguous(memory_format=torch.channels_last))
        torch.cuda.synchronize(self.device)
        per_window = torch.cuda.max_memory_allocated(self.device) - before
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(MAX_GPU_BATCH, int(free * 0.5 // max(per_window, 1))))
