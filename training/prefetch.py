"""Batches made ahead of the training step, by threads, in the sampler's order."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .windows import Recipe, WindowSampler, stack

#: A batch being made: one future per window (image, target).
Jobs = list[Future[tuple[np.ndarray, np.ndarray]]]


class Prefetcher:
    """Batches from a sampler, made ahead of the training step by ``producers``
    threads, ``depth`` batches ahead.

    One thread plans the batches in order (:meth:`~fcnrs.training.windows.WindowSampler.plan`: which
    windows, which flips, turns and gains; the random streams are only ever used
    there, in the sampler's order), and ``producers`` threads make them
    (:meth:`~fcnrs.training.windows.WindowSampler.make`: reading from files, brightening, normalising,
    augmenting, which release the GIL for most of their time), so the batches
    are exactly the sampler's own, in order, however many threads make them.

    Iterating yields exactly ``steps`` batches; :meth:`close` (or leaving the
    ``with`` block) stops the threads early. :attr:`made_seconds` is the time the
    producers spent making batches, so windows per producer-second can be
    compared with the rate the network consumes them.
    """

    def __init__(
        self, sampler: WindowSampler, steps: int, *, depth: int = 2, producers: int = 1
    ) -> None:
        self._queue: queue.Queue[Jobs | BaseException] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._steps = steps
        self._pool = ThreadPoolExecutor(max(producers, 1), thread_name_prefix="window-make")
        self.producers = max(producers, 1)
        self.made_seconds = 0.0
        self.waited_seconds = 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._plan, args=(sampler,), name="window-plan", daemon=True
        )
        self._thread.start()

    def _plan(self, sampler: WindowSampler) -> None:
        try:
            for _ in range(self._steps):
                recipes = sampler.plan(sampler.s.batch_size)
                jobs = [self._pool.submit(self._make, sampler, r) for r in recipes]
                if not self._put(jobs):
                    return
        except BaseException as exc:  # handed to the training thread
            self._put(exc)

    def _make(self, sampler: WindowSampler, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        made = sampler.make(recipe)
        with self._lock:
            self.made_seconds += time.perf_counter() - start
        return made

    def _put(self, item: Jobs | BaseException) -> bool:
        """Queue ``item`` unless stopped first; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self._steps):
            start = time.perf_counter()
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            windows = [job.result() for job in item]
            self.waited_seconds += time.perf_counter() - start
            yield stack(windows)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
