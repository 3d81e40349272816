"""The run's local engine: the same three stages in this process, no Ray.

On one machine Ray's fixed costs (starting the cluster, an actor, shipping every
batch through the object store) are paid in full on every run. Here the stages
run as a thread pipeline instead, each stage on its own pool:

- reads on one thread per CPU: GDAL decodes with the GIL released, each thread
  with its own dataset handle, and the decoded pieces of a scene are shared
  (:class:`~fcnrs.pipeline.reading.SceneReader`); the same thread then
  prepares the batch for the model (normalises and masks it on the model's
  device, :meth:`~fcnrs.pipeline.inference.Predictor.prepare`), so that work
  scales with the read threads too;
- the model on one thread, which itself computes on every core (torch's
  threads) or drives the GPU;
- writes on a few threads: zstd and file writes release the GIL too.

Enough batches are in flight that the model always has one waiting while the
others are read and written; memory holds those batches whatever the scene
size. The stage functions are the Ray engine's own, so the output bytes are
the same, and so are the failures the driver sees.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..batches import BatchRequest, WriteSummary
from ..memory import keep_freed_memory
from . import stages
from .retries import Failure, WorkItem

#: Write threads at most: a chunk takes about a millisecond to compress and
#: write, so a few keep up with any model.
WRITE_THREADS = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_depth(readers: int) -> int:
    """Batches in flight: one being read per read thread, two waiting for the
    model (so it never waits for a read to finish), one in the model, and one
    being written."""
    return readers + 4


class LocalEngine:
    """Runs work items through read, predict and write thread pools; :meth:`poll`
    returns each item's write summary, or its :class:`Failure`."""

    name = "local"
    broken: str | None = None  # the replica is this process: it never goes missing

    def __init__(
        self,
        predict: stages.PredictStage,
        *,
        readers: int | None = None,
        writers: int | None = None,
        depth: int | None = None,
    ) -> None:
        keep_freed_memory()  # before the pools start their threads
        cpus = available_cpus()
        readers = readers or cpus
        writers = writers or min(WRITE_THREADS, cpus)
        self.depth = depth or default_depth(readers)
        self.predict = predict
        self.pools = [
            ThreadPoolExecutor(readers, "fcnrs-read"),
            ThreadPoolExecutor(1, "fcnrs-predict"),
            ThreadPoolExecutor(writers, "fcnrs-write"),
        ]
        self.steps: list[Callable[[BatchRequest, Any], Any]] = [
            lambda request, _: predict.prepare(stages.read_stage(request)),
            lambda _, prepared: predict.infer(prepared),
            lambda request, labels: stages.write_stage(request, labels),
        ]
        self.done: queue.SimpleQueue[tuple[WorkItem, WriteSummary | Failure]] = queue.SimpleQueue()
        self.in_flight = 0

    def room(self) -> int:
        return self.depth - self.in_flight

    def batch_size(self, window: tuple[int, int]) -> int:
        """Tiles per batch for windows of this shape on this process's device."""
        return self.predict.batch_size(window)

    def submit(self, item: WorkItem, request: BatchRequest) -> None:
        self.in_flight += 1
        self._run(item, request, 0, None)

    def _run(self, item: WorkItem, request: BatchRequest, step: int, value: Any) -> None:
        future = self.pools[step].submit(self.steps[step], request, value)
        future.add_done_callback(lambda f: self._then(item, request, step, f))

    def _then(self, item: WorkItem, request: BatchRequest, step: int, future: Future) -> None:
        if future.cancelled():  # the engine is closing: nobody waits for it
            return
        exc = future.exception()
        if exc is not None:
            self.done.put((item, Failure.from_exception(exc)))
        elif step + 1 < len(self.steps):
            self._run(item, request, step + 1, future.result())
        else:
            self.done.put((item, future.result()))

    def poll(self, timeout: float) -> list[tuple[WorkItem, WriteSummary | Failure]]:
        """Finished items: waits up to ``timeout`` seconds for the first."""
        if not self.in_flight:
            return []
        try:
            out = [self.done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                break
        self.in_flight -= len(out)
        return out

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if not self.in_flight:  # else a stage may still use a reader (an interrupted run)
            stages.close_cached()
