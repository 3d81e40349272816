"""The run's local engine: the same three stages on this machine, no Ray.

On one machine Ray's fixed costs (starting the cluster, an actor, shipping every
batch through the object store) are paid in full on every run. Here the stages
run as a thread pipeline (:class:`ThreadPipeline`), each stage on its own pool:

- reads on one thread per CPU: GDAL decodes with the GIL released, each thread
  with its own dataset handle, and the decoded pieces of a scene are shared
  (:class:`~fcnrs.pipeline.batch_reading.SceneReader`); the same thread then
  prepares the batch for the model (normalises and masks it on the model's
  device, :meth:`~fcnrs.pipeline.inference.Predictor.prepare`), so that work
  scales with the read threads too;
- the model on one thread, which itself computes on every core (torch's
  threads) or drives the GPU;
- writes on a few threads: zstd and file writes release the GIL too.

The pipeline runs in a **worker process** of its own (:class:`LocalEngine`
starts it and watches it), so that whatever can crash a process (a GDAL or
codec fault on a malformed block, the model, the kernel's OOM killer) kills the
worker, not the run. Only small values cross between the two: the batches'
orders (:class:`~fcnrs.pipeline.batches.BatchRequest`) and their write
summaries; pixels and labels stay in the worker. When the worker dies, the
engine starts a fresh one and tells the driver what the death means:

- with one batch in flight, that batch killed it: it is charged a retry (split
  in two first, as a death looks like the OOM killer's work);
- with several, none is charged yet: they are retried for free, one at a time
  (the engine holds its depth at one until each has come back), so the next
  death names its batch exactly. A poison batch then uses its retries and its
  scene fails; the innocent ones finish.

Enough batches are in flight that the model always has one waiting while the
others are read and written; memory holds those batches whatever the scene
size. The stage functions are the Ray engine's own, so the output bytes are
the same, and so are the failures the driver sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from typing import Any

from ..batches import BatchRequest, WriteSummary
from ..memory import keep_freed_memory
from . import stages
from .retries import Failure, WorkItem

#: Write threads at most: a chunk takes about a millisecond to compress and
#: write, so a few keep up with any model.
WRITE_THREADS = 4
#: Worker start failures in a row (its process dying before its model loaded)
#: that end the run.
START_FAILURES = 3


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


class ThreadPipeline:
    """Work items through read, predict and write thread pools, in this process;
    finished items land in :attr:`done` as ``(key, WriteSummary | Failure)``."""

    def __init__(self, predict: stages.PredictStage, *, readers: int, writers: int) -> None:
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
        self.done: queue.SimpleQueue[tuple[Any, WriteSummary | Failure]] = queue.SimpleQueue()

    def submit(self, key: Any, request: BatchRequest) -> None:
        self._run(key, request, 0, None)

    def _run(self, key: Any, request: BatchRequest, step: int, value: Any) -> None:
        future = self.pools[step].submit(self.steps[step], request, value)
        future.add_done_callback(lambda f: self._then(key, request, step, f))

    def _then(self, key: Any, request: BatchRequest, step: int, future: Future[Any]) -> None:
        if future.cancelled():  # closing: nobody waits for it
            return
        exc = future.exception()
        if exc is not None:
            self.done.put((key, Failure.from_exception(exc)))
        elif step + 1 < len(self.steps):
            self._run(key, request, step + 1, future.result())
        else:
            self.done.put((key, future.result()))

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux), so a
    driver killed with SIGKILL never leaves a worker writing behind it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(*args: Any) -> None:
    """The worker process's body: :func:`_serve`, then an immediate exit. Its
    work is flushed by then; running the C++ libraries' exit handlers while their
    thread pools (torch's, GDAL's) still exist only printed ``terminate called
    without an active exception`` and aborted."""
    code = 0
    try:
        _serve(*args)
    except BaseException:
        code = 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(
    conn: Connection,
    predict_args: dict[str, Any],
    readers: int,
    writers: int,
    setup: Callable[[], None] | None,
) -> None:
    """The worker process: load the model, then run what the engine sends."""
    _die_with_parent()
    # The driver decides what a signal means (records, then stops this process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    keep_freed_memory()  # before any thread of this process exists
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    try:
        if setup is not None:
            setup()
        predict = stages.PredictStage(**predict_args)
    except Exception as exc:
        send(("broken", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", predict.replica))
    pipeline = ThreadPipeline(predict, readers=readers, writers=writers)

    def report() -> None:
        while True:
            key, result = pipeline.done.get()
            if key is None:
                return
            send(("done", key, result))

    reporter = threading.Thread(target=report, name="fcnrs-report", daemon=True)
    reporter.start()
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the engine is gone
                break
            if message[0] == "submit":
                pipeline.submit(message[1], message[2])
            elif message[0] == "batch_size":
                send(("batch_size", predict.batch_size(message[1])))
            else:  # "close"
                break
    finally:
        pipeline.done.put((None, None))  # type: ignore[arg-type]
        pipeline.close()


class LocalEngine:
    """Runs work items in a worker process of this machine (:class:`ThreadPipeline`
    there), replacing it when it dies; :meth:`poll` returns each item's write
    summary, or its :class:`Failure`.

    Parameters
    ----------
    predict_args
        What the worker builds its :class:`~.stages.PredictStage` from.
    readers, writers
        Read and write threads (default: one read thread per CPU, a few writers).
    depth
        Batches in flight (default :func:`default_depth`).
    setup
        A picklable function the worker process calls first (tests inject faults
        with it, as Ray's ``worker_process_setup_hook`` does for Ray's workers).
    """

    name = "local"

    def __init__(
        self,
        predict_args: dict[str, Any],
        *,
        readers: int | None = None,
        writers: int | None = None,
        depth: int | None = None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        cpus = available_cpus()
        self.readers = readers or cpus
        self.writers = writers or min(WRITE_THREADS, cpus)
        self.depth = depth or default_depth(self.readers)
        self.predict_args, self.setup = predict_args, setup
        self.context = multiprocessing.get_context("spawn")  # never fork threads
        self.flight: dict[int, WorkItem] = {}
        # (scene, tile) of the batches in flight at a death: run one at a time.
        self.suspects: set[tuple[int, tuple[int, int]]] = set()
        self.seq = 0
        self.start_failures = 0
        self.broken: str | None = None
        self.replica = ""
        self._start()

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        args = (child, self.predict_args, self.readers, self.writers, self.setup)
        self.process = self.context.Process(target=_worker, args=args, name="fcnrs-worker")
        self.process.start()
        child.close()
        self.conn = parent
        self.ready = False

    @property
    def in_flight(self) -> int:
        return len(self.flight)

    def room(self) -> int:
        """Free item slots: none until the worker runs (or while it is dead), one
        while suspects remain, else up to the depth."""
        if not self.ready or self.broken or not self.process.is_alive():
            return 0
        if self.suspects:  # one at a time, so that a death names its batch
            return 0 if self.flight else 1
        return self.depth - len(self.flight)

    def submit(self, item: WorkItem, request: BatchRequest) -> None:
        """Send an item to the worker; if it has just died (a closed pipe), the
        item stays in flight and :meth:`poll` accounts for it with the death."""
        self.seq += 1
        self.flight[self.seq] = item
        with contextlib.suppress(OSError):  # BrokenPipeError, ConnectionResetError
            self.conn.send(("submit", self.seq, request))

    def forget(self, scene_id: int) -> None:
        """A scene is closed (failed): its batches will not come again."""
        self.suspects = {s for s in self.suspects if s[0] != scene_id}

    @staticmethod
    def _tiles(item: WorkItem) -> set[tuple[int, tuple[int, int]]]:
        return {(item.scene_id, t.index) for t in item.tiles}

    def batch_size(self, window: tuple[int, int]) -> int | None:
        """Tiles per batch for windows of this shape, as the worker's device
        holds them; None until the worker runs."""
        self.poll(0.5)
        if self.broken:
            from ..inference import CPU_BATCH

            return CPU_BATCH  # the driver fails the scenes with the engine's reason
        if not self.ready:
            return None
        try:
            self.conn.send(("batch_size", window))
        except OSError:  # it died: poll() starts another
            return None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.ready:
            for message in self._receive(1.0):
                if message[0] == "batch_size":
                    return int(message[1])
        return None

    def poll(self, timeout: float) -> list[tuple[WorkItem, WriteSummary | Failure]]:
        """Finished items: waits up to ``timeout`` seconds for the first."""
        out: list[tuple[WorkItem, WriteSummary | Failure]] = []
        for message in self._receive(timeout):
            if message[0] == "done":
                item = self.flight.pop(message[1])
                self.suspects -= self._tiles(item)  # it came back: not a killer
                out.append((item, message[2]))
        if not self.process.is_alive() and not self.broken:
            out.extend(self._died())
        return out

    def _receive(self, timeout: float) -> list[tuple[Any, ...]]:
        """Messages from the worker (waiting up to ``timeout`` for one), handling
        its start; its death is left to :meth:`poll`."""
        messages: list[tuple[Any, ...]] = []
        wait([self.conn, self.process.sentinel], timeout)
        while self.conn.poll():
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the worker died: poll() sees to it
                break
            if message[0] == "ready":
                self.ready, self.replica, self.start_failures = True, message[1], 0
            elif message[0] == "broken":
                self.broken = f"model replicas cannot start ({message[1]})"
            else:
                messages.append(message)
        return messages

    def _died(self) -> list[tuple[WorkItem, Failure]]:
        """The worker's process died: start another, and say what it means for
        the batches it held (see the module's docstring)."""
        self.process.join(5)
        code = self.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        reason = f"the local worker process died ({how})"
        held = list(self.flight.values())
        self.flight.clear()
        self.conn.close()
        if not self.ready:
            self.start_failures += 1
            if self.start_failures >= START_FAILURES:
                self.broken = f"model replicas cannot start ({reason} while loading the model)"
                return [(item, Failure(reason, memory=True, charged=False)) for item in held]
        self._start()
        for item in held:  # its halves too, after a split: one at a time
            self.suspects |= self._tiles(item)
        if len(held) == 1:
            return [(held[0], Failure(reason, memory=True))]
        return [(item, Failure(reason, memory=True, charged=False)) for item in held]

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(("close",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
