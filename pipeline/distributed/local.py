"""The run's local engine: the same three stages in this process, no Ray.

On one machine Ray's fixed costs (starting the cluster, an actor, shipping every
batch through the object store) are paid in full on every run, and its CPU
accounting keeps a core back for reads and writes that need a fraction of one.
Here the stages run as a small thread pipeline instead: a read-ahead thread
(GDAL releases the GIL while it decodes), the model on every core in the calling
thread, and a write thread (zstd and file writes release it too). The stage
functions are the Ray engine's own, so the output bytes are the same.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .stages import PredictStage, read_stage, write_stage

#: Batches read ahead of the model: enough that it never waits for a read, few
#: enough that memory holds a handful of batches whatever the scene size.
READ_AHEAD = 2


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stream_local(
    rows: Iterable[dict[str, Any]], predict: PredictStage, *, read_ahead: int = READ_AHEAD
) -> Iterator[dict[str, Any]]:
    """Read, predict and write every row; yield each write summary as it lands."""
    rows = iter(rows)
    with (
        ThreadPoolExecutor(1, "fcnrs-read") as reader,
        ThreadPoolExecutor(1, "fcnrs-write") as writer,
    ):
        reads: deque[Future] = deque(reader.submit(read_stage, r) for r in _take(rows, read_ahead))
        writes: deque[Future] = deque()
        while reads:
            batch = reads.popleft().result()
            for row in _take(rows, 1):
                reads.append(reader.submit(read_stage, row))
            writes.append(writer.submit(write_stage, predict(batch)))
            while writes and writes[0].done():
                yield writes.popleft().result()
            if len(writes) > read_ahead:  # the writer fell behind: wait, bounding memory
                yield writes.popleft().result()
        while writes:
            yield writes.popleft().result()


def _take(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        row = next(rows, None)
        if row is None:
            break
        out.append(row)
    return out
