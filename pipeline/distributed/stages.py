"""The three stages of a run, and the worker-side state they keep.

Each batch goes through them as typed values (:mod:`fcnrs.pipeline.batches`):

1. :func:`read_stage` (CPU): a :class:`~fcnrs.pipeline.batches.BatchRequest` in,
   the windows as stored (:class:`~fcnrs.pipeline.batches.PixelBatch`) out;
2. :class:`PredictStage`: one model replica, pinned to one GPU (``num_gpus=1``)
   or to CPU threads where there is none: pixels in, a
   :class:`~fcnrs.pipeline.batches.LabelBatch` out;
3. :func:`write_stage` (CPU): each tile core into its own Zarr chunk, and a
   :class:`~fcnrs.pipeline.batches.WriteSummary` for the driver.

The stages are module-level (Ray ships them by reference) and plain callables,
so the local engine and tests call them directly, with no cluster. Each raises
a :class:`~fcnrs.pipeline.distributed.retries.StageError` naming itself when
anything goes wrong; the driver decides what happens next. Any number of
threads of a process may run them at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..batch_reading import SceneReader
from ..batches import BatchRequest, LabelBatch, PixelBatch, WriteSummary
from ..memory import keep_freed_memory
from ..storage import Location
from ..writing import ChunkWriter, staging_path
from .retries import guarded

if TYPE_CHECKING:  # torch is imported by the replicas only, never by read and write tasks
    from ..inference import Prepared
    from ..precision import Precision
    from ..tta import TTA

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Recent(Generic[T]):
    """The few objects of a kind a worker used last, keyed, shared by its threads;
    one that drops out is closed once no thread uses it any more. Batches come
    scene by scene, so a few readers serve a whole run while open file
    descriptors stay bounded however many scenes it has."""

    def __init__(self, size: int, close: Callable[[T], None] = lambda _: None) -> None:
        self.size, self.close = size, close
        self.items: OrderedDict[str, T] = OrderedDict()
        self.users: dict[int, int] = {}  # id(item) -> threads using it
        self.retired: dict[int, T] = {}  # dropped while in use: closed by the last user
        self.lock = threading.Lock()

    @contextmanager
    def use(self, key: str, make: Callable[[], T]) -> Iterator[T]:
        with self.lock:
            item = self.items.get(key)
            if item is None:
                item = self.items[key] = make()
            self.items.move_to_end(key)
            self.users[id(item)] = self.users.get(id(item), 0) + 1
            dropped = []
            while len(self.items) > self.size:
                _, old = self.items.popitem(last=False)
                if self.users.get(id(old)):
                    self.retired[id(old)] = old
                else:
                    dropped.append(old)
        for old in dropped:
            self.close(old)
        try:
            yield item
        finally:
            with self.lock:
                self.users[id(item)] -= 1
                last = not self.users[id(item)]
                if last:
                    del self.users[id(item)]
                retired = self.retired.pop(id(item), None) if last else None
            if retired is not None:
                self.close(retired)


# Per process: its threads share the reader of each scene they read (its decoded
# pieces too) and the writer of each staging group they write.
_READERS: _Recent[SceneReader] = _Recent(4, SceneReader.close)
_WRITERS: _Recent[ChunkWriter] = _Recent(8)


def warm_up() -> None:
    """Nothing but what a read or write task's process needs loaded (this module
    and the libraries it imports) and its allocator settings."""
    keep_freed_memory()
    import zarr  # noqa: F401  the writer's, imported on its first chunk otherwise


@guarded("read")
def read_stage(request: BatchRequest) -> PixelBatch:
    """Read a batch's windows as stored (:meth:`~fcnrs.pipeline.batch_reading.SceneReader.read_batch`).
    Any exception becomes a :class:`~fcnrs.pipeline.distributed.retries.StageError`."""
    # The source's version is part of the key: a scene replaced between runs of a
    # long-lived worker is opened anew.
    keep_freed_memory()
    key = f"{request.scene}|{request.version}|{list(request.bands)}"
    with _READERS.use(key, lambda: SceneReader(request.scene, request.bands)) as reader:
        return reader.read_batch(request.tiles)


class PredictStage:
    """One model replica: :class:`~fcnrs.pipeline.inference.Predictor` on the GPU
    Ray assigned to this actor, or on CPU threads (in a Ray actor, or in the local
    engine's process)."""

    def __init__(
        self,
        model: str,
        *,
        device: str,
        precision: Precision,
        probabilities: bool,
        threads: int,
        tta: TTA = "none",
    ) -> None:
        import torch

        from ..inference import Predictor

        keep_freed_memory()
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = False  # same kernels every run: same bytes
            torch.backends.cudnn.deterministic = True
        # Inside a Ray worker ray is imported already; the local engine never needs it.
        ray = sys.modules.get("ray")
        on_ray = ray is not None and ray.is_initialized()
        gpu_ids = ray.get_gpu_ids() if ray is not None and on_ray else []
        if device == "cuda" and not torch.cuda.is_available():
            log.warning("GPU %s assigned but torch sees no CUDA device: running on CPU", gpu_ids)
            device = "cpu"
        # Which replica did the work: the run summary shows how batches spread.
        node = ray.util.get_node_ip_address() if ray is not None and on_ray else "local"
        self.replica = f"{node}:{os.getpid()} gpu={gpu_ids}"
        self.predictor = Predictor(
            model, device=device, precision=precision, probabilities=probabilities, tta=tta
        )
        # One batch in the model at a time; another may be prepared meanwhile
        # (a Ray replica takes two calls at once, see ray_engine.CONCURRENCY).
        self._model = threading.Lock()

    def ready(self) -> str:
        """The replica's name, once its model is loaded."""
        return self.replica

    def batch_size(self, window: tuple[int, int]) -> int:
        """Tiles per batch for this window shape on this replica's device."""
        return self.predictor.batch_size(window)

    @guarded("predict")
    def prepare(self, pixels: PixelBatch) -> Prepared:
        """Normalise and mask on the replica's device (see :meth:`Predictor.prepare`):
        the local engine runs this ahead, on its read threads."""
        return self.predictor.prepare(pixels)

    @guarded("predict")
    def infer(self, prepared: Prepared) -> LabelBatch:
        with self._model:
            return replace(self.predictor.infer(prepared), replica=self.replica)

    def __call__(self, pixels: PixelBatch) -> LabelBatch:
        return self.infer(self.prepare(pixels))

    predict = __call__  # the name a Ray actor method is called by


@guarded("write")
def write_stage(request: BatchRequest, labels: LabelBatch) -> WriteSummary:
    """Write every tile of a batch, each into its own chunk (one writer per chunk),
    and report how many tiles were predicted and how many pixels are valid."""
    staging = str(staging_path(Location(request.output)))
    probabilities = labels.probabilities
    valid = 0
    with _WRITERS.use(
        staging, lambda: ChunkWriter(staging, with_probabilities=request.write_probabilities)
    ) as writer:
        for k, tile in enumerate(request.tiles):
            probs: Any = probabilities[k] if probabilities is not None else None
            valid += writer.write(tile.core, labels.labels[k], probs)
    return WriteSummary(labels.replica, len(request.tiles), labels.predicted, valid, labels.seconds)
