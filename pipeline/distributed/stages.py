"""The three stages of the Ray pipeline, and the rows that flow between them.

A row is one planned batch of one scene (:func:`~fcnrs.pipeline.planning.plan_batches`),
as a dict of plain values and numpy arrays (what Ray ships between stages):

1. :func:`read_stage` (Ray tasks, CPU): windowed reads of the batch's tiles;
2. :class:`PredictStage` (Ray actors): one model replica per actor, pinned to
   one GPU (``num_gpus=1``) or to CPU threads where there is no GPU;
3. :func:`write_stage` (Ray tasks, CPU): each tile core into its own Zarr chunk.

The stages are module-level (Ray ships them by reference) and plain callables,
so the local engine and tests call them directly, with no cluster. Each raises
a :class:`~fcnrs.pipeline.distributed.retries.StageError` naming itself when
anything goes wrong; the driver decides what happens next.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..inference import Predictor
from ..planning import Tile, Window
from ..reading import TileReader, read_batch
from ..storage import Location
from ..writing import ChunkWriter, staging_path
from .retries import guarded

log = logging.getLogger(__name__)


class _Recent:
    """The few objects of a kind a worker used last, keyed; the one it drops is
    closed. Batches come scene by scene, so two readers serve a whole run while
    open file descriptors stay bounded however many scenes it has."""

    def __init__(self, size: int, close: Callable[[Any], None] = lambda _: None) -> None:
        self.size, self.close = size, close
        self.items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        while len(self.items) > self.size:
            self.close(self.items.popitem(last=False)[1])
        return value

    def clear(self) -> None:
        while self.items:
            self.close(self.items.popitem(last=False)[1])


# Per-process: a worker reuses the reader of the scene it reads and the writer
# of the staging group it writes across that scene's batches.
_READERS = _Recent(2, TileReader.close)
_WRITERS = _Recent(4)

_EMPTY_IMAGES = {
    "image": np.zeros((0, 1, 1, 1), np.float32),
    "valid": np.zeros((0, 1, 1), bool),
    "core": np.zeros((0, 4), np.int64),
}


def close_cached() -> None:
    """Close every reader this process holds (the local engine, at the end of a run)."""
    _READERS.clear()
    _WRITERS.clear()


def encode_tiles(tiles: Sequence[Tile]) -> np.ndarray:
    """Tiles as an int64 ``(n, 10)`` array: index (i, j), read window, core window."""

    def fields(w: Window) -> tuple[int, int, int, int]:
        return (w.row, w.col, w.height, w.width)

    rows = [(*t.index, *fields(t.read), *fields(t.core)) for t in tiles]
    return np.array(rows, dtype=np.int64).reshape(-1, 10)


def decode_tiles(array: np.ndarray) -> list[Tile]:
    """The inverse of :func:`encode_tiles`."""
    return [
        Tile((int(t[0]), int(t[1])), Window(*map(int, t[6:10])), Window(*map(int, t[2:6])))
        for t in np.asarray(array)
    ]


def _reader(row: dict[str, Any]) -> TileReader:
    # The source's version is part of the key: a scene replaced between runs of a
    # long-lived worker is opened anew.
    key = f"{row['scene']}|{row['version']}|{list(row['bands'])}|{list(row['mean'])}|{list(row['std'])}"
    return _READERS.get(
        key, lambda: TileReader(row["scene"], row["bands"], row["mean"], row["std"])
    )


@guarded("read")
def read_stage(row: dict[str, Any]) -> dict[str, Any]:
    """Read a planned batch with :func:`~fcnrs.pipeline.reading.read_batch`.

    ``keep`` lists the positions of the tiles that go to the model (the others
    have no valid pixel). Any exception becomes a
    :class:`~fcnrs.pipeline.distributed.retries.StageError`.
    """
    out = {k: row[k] for k in ("output", "tiles", "probabilities")}
    tiles = decode_tiles(row["tiles"])
    _, kept, arrays = read_batch(_reader(row), tiles)
    position = {tile.index: k for k, tile in enumerate(tiles)}
    out["keep"] = np.array([position[tile.index] for tile in kept], dtype=np.int64)
    return out | (arrays if arrays is not None else _EMPTY_IMAGES)


class PredictStage:
    """One model replica: :class:`~fcnrs.pipeline.inference.Predictor` on the GPU
    Ray assigned to this actor, or on CPU threads (in a Ray actor, or in the local
    engine's process)."""

    def __init__(
        self, model: str, *, device: str, precision: str, probabilities: bool, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = False  # same kernels every run: same bytes
            torch.backends.cudnn.deterministic = True
        # Inside a Ray worker ray is imported already; the local engine never needs it.
        ray = sys.modules.get("ray")
        on_ray = ray is not None and ray.is_initialized()
        gpu_ids = ray.get_gpu_ids() if on_ray else []
        if device == "cuda" and not torch.cuda.is_available():
            log.warning("GPU %s assigned but torch sees no CUDA device: running on CPU", gpu_ids)
            device = "cpu"
        # Which replica did the work: the run summary shows how batches spread.
        node = ray.util.get_node_ip_address() if on_ray else "local"
        self.replica = f"{node}:{os.getpid()} gpu={gpu_ids}"
        self.predictor = Predictor(
            model, device=device, precision=precision, probabilities=probabilities
        )

    def ready(self) -> str:
        """The replica's name, once its model is loaded."""
        return self.replica

    @guarded("predict")
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in ("output", "tiles", "keep", "probabilities")}
        out["replica"] = self.replica
        n = len(row["keep"])
        started = time.perf_counter()
        if n:
            result = self.predictor(
                {"image": row["image"], "valid": row["valid"], "core": row["core"]}
            )
            out["labels"] = result["labels"]
            out["probs"] = result.get("probabilities", np.zeros((n, 0, 1, 1), np.uint8))
        else:
            out["labels"] = np.zeros((0, 1, 1), np.uint8)
            out["probs"] = np.zeros((0, 0, 1, 1), np.uint8)
        out["seconds"] = time.perf_counter() - started  # the replica's busy time
        return out

    predict = __call__  # the name a Ray actor method is called by


def _writer(row: dict[str, Any]) -> ChunkWriter:
    stage = str(staging_path(Location(str(row["output"]))))
    return _WRITERS.get(stage, lambda: ChunkWriter(stage, probabilities=bool(row["probabilities"])))


@guarded("write")
def write_stage(row: dict[str, Any]) -> dict[str, Any]:
    """Write every tile of a batch, each into its own chunk (one writer per chunk),
    and report how many tiles were predicted and how many pixels are valid."""
    summary = {
        "replica": row["replica"],
        "seconds": float(row.get("seconds", 0.0)),
        "tiles": len(row["tiles"]),
        "predicted": len(row["keep"]),
        "valid_pixels": 0,
    }
    writer = _writer(row)
    predicted = {int(k): i for i, k in enumerate(np.asarray(row["keep"]))}
    probs = np.asarray(row["probs"])
    for k, tile in enumerate(decode_tiles(row["tiles"])):
        if k in predicted:
            i = predicted[k]
            summary["valid_pixels"] += writer.write(
                tile.core, np.asarray(row["labels"][i]), probs[i] if probs.shape[1] else None
            )
        else:
            summary["valid_pixels"] += writer.write_nodata(tile.core)
    return summary
