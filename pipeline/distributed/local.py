"""The run's local engine: the same three stages in this process, no Ray.

On one machine Ray's fixed costs (starting the cluster, an actor, shipping every
batch through the object store) are paid in full on every run, and its CPU
accounting keeps a core back for reads and writes that need a fraction of one.
Here the stages run as a small thread pipeline instead: a read thread (GDAL
releases the GIL while it decodes), a model thread on every core, and a write
thread (zstd and file writes release it too), each stage's batches in order. The
stage functions are the Ray engine's own, so the output bytes are the same, and
so are the failures the driver sees.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import stages
from .retries import Failure, WorkItem

#: Batches in the pipeline at once: one being read, one in the model, one being
#: written, so the model never waits, and memory holds three batches whatever
#: the scene size.
DEPTH = 3


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalEngine:
    """Runs work items through read, predict and write threads; :meth:`poll`
    returns each item's write summary, or its :class:`Failure`."""

    name = "local"
    broken: str | None = None  # the replica is this process: it never goes missing

    def __init__(self, predict: stages.PredictStage, *, depth: int = DEPTH) -> None:
        self.depth = depth
        self.stages: list[tuple[ThreadPoolExecutor, Callable[[Any], Any]]] = [
            (ThreadPoolExecutor(1, f"fcnrs-{name}"), fn)
            for name, fn in (
                ("read", stages.read_stage),
                ("predict", predict),
                ("write", stages.write_stage),
            )
        ]
        self.done: queue.SimpleQueue[tuple[WorkItem, Any]] = queue.SimpleQueue()
        self.in_flight = 0

    def room(self) -> int:
        return self.depth - self.in_flight

    def submit(self, item: WorkItem, row: dict[str, Any]) -> None:
        self.in_flight += 1
        self._run(item, 0, row)

    def _run(self, item: WorkItem, stage: int, row: dict[str, Any]) -> None:
        pool, fn = self.stages[stage]
        pool.submit(fn, row).add_done_callback(lambda f: self._then(item, stage, f))

    def _then(self, item: WorkItem, stage: int, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            self.done.put((item, Failure.from_exception(exc)))
        elif stage + 1 < len(self.stages):
            self._run(item, stage + 1, future.result())
        else:
            self.done.put((item, future.result()))

    def poll(self, timeout: float) -> list[tuple[WorkItem, Any]]:
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
        for pool, _ in self.stages:
            pool.shutdown(wait=False, cancel_futures=True)
        if not self.in_flight:  # else a stage may still use a reader (an interrupted run)
            stages.close_cached()
