"""The run's Ray engine: model replicas as Ray actors, reads and writes as Ray tasks.

Each work item goes to the cluster as a chain of three: a read task, a call of
one replica (``PredictStage.predict``), a write task. Ray starts a call once its
read is done and a write once its call is, so reads, the model and writes
overlap. Each replica has a bounded number of items in flight, which keeps it
fed while memory stays bounded (the driver holds back the rest): it starts at
:data:`DEPTH` and grows, up to :data:`MAX_DEPTH`, while the replica is found
idle for more than a tenth of its time with all its items in flight, so a
replica stays busy whatever the latency of the reads and writes around it
(remote storage, a busy node, a fast GPU).

Faults come back to the driver as :class:`~.retries.Failure` values, never as
exceptions:

- an exception in a stage is that stage's
  :class:`~.retries.StageError`, charged to its item;
- a replica whose process dies (a segfaulting driver, a CUDA fault, the OOM
  killer, its node lost) is replaced at once by a fresh actor. The items it held
  fail together. A replica works on two at once (one in the model, the next
  being prepared), so which one killed it is not known: when it held one, that
  one is charged; when it held several, none is, and they become *suspects*,
  run one at a time on the cluster until each has come back done or died alone
  (and so been charged), as the local engine does. A death on a live node looks
  like the OOM killer's work, so a charged item's retry is split;
- a replica that cannot start (its constructor raises) :data:`START_FAILURES`
  times in a row with none running, or no replica running for
  ``start_timeout`` seconds (a cluster with no room left), marks the engine
  ``broken``: the driver fails the remaining scenes with that reason. The run
  always ends.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..batches import BatchRequest
from ..inference import CPU_BATCH
from ..memory import ALLOCATOR_ENV
from .replicas import IO_TASK_CPUS, ReplicaPlan
from .retries import Failure, WorkItem
from .stages import PredictStage, read_stage, warm_up, write_stage

#: Items in flight per replica at first: one being read, one in the model, one
#: being written.
DEPTH = 3
#: Read and write workers started per replica before the first batch.
WARM_WORKERS = 2
#: Calls a replica runs at once: one in the model, the next being prepared
#: (normalised and masked on the device) beside it.
CONCURRENCY = 2
#: The most items in flight per replica, whatever the latency: its memory bound.
MAX_DEPTH = 12
#: A replica busy less than this share of its recent time, with all its items in
#: flight, gets one more.
BUSY_TARGET = 0.9
log = logging.getLogger(__name__)

#: Consecutive replica start failures, with none running, that end the run.
START_FAILURES = 3
#: Seconds with no replica running (all lost, replacements not placed) that end the run.
START_TIMEOUT_S = 600.0


@dataclass
class _Replica:
    actor: Any
    items: dict[int, WorkItem] = field(default_factory=dict)  # in flight, by submission
    dead: bool = False
    lost: list[tuple[int, WorkItem, Failure]] = field(default_factory=list)
    depth: int = DEPTH
    starved: bool = False  # had fewer items in flight than its depth since the last check
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=8))

    def finished(self, seconds: float) -> None:
        """An item came back after ``seconds`` of model time: if the replica was
        idle for more than a tenth of its recent time although the driver kept
        all its slots full, the reads and writes around it are too slow to
        cover with this many items; give it one more."""
        self.recent.append((time.monotonic(), seconds))
        if len(self.recent) < (self.recent.maxlen or 0):
            return
        span = self.recent[-1][0] - self.recent[0][0]
        busy = sum(s for _, s in list(self.recent)[1:])
        if span > 0 and busy < BUSY_TARGET * span and not self.starved:
            self.depth = min(self.depth + 1, MAX_DEPTH)
        self.recent.clear()
        self.starved = False


def classify(exc: BaseException) -> tuple[Failure, bool]:
    """A failure from what ``ray.get`` raised, and whether the replica was lost."""
    from ray import exceptions as rx

    while isinstance(exc, rx.RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause  # a stage fails the later stages of its chain with its error
    if isinstance(exc, rx.RayActorError):
        # Its own process died on a live node (the OOM killer, a segfault): that
        # looks like memory. Its node lost, or the actor killed: it does not.
        process_died = "worker process has died" in str(exc)
        cause = "its process died" if process_died else "it was lost"
        reason = f"the replica running it died ({cause}: {type(exc).__name__})"
        return Failure(reason, memory=process_died), True
    if isinstance(exc, rx.OutOfMemoryError):
        return Failure(f"Ray's memory monitor killed the task ({exc})", memory=True), False
    if isinstance(exc, rx.WorkerCrashedError):
        return Failure("the read or write task's process died", memory=True), False
    return Failure.from_exception(exc), False


def _tiles(item: WorkItem) -> set[tuple[int, tuple[int, int]]]:
    return {(item.scene_id, t.index) for t in item.tiles}


class RayEngine:
    """Runs work items on replicas of the model on the Ray cluster this process is
    connected to; :meth:`poll` returns each item's write summary, or its failure."""

    name = "ray"

    def __init__(
        self,
        plan: ReplicaPlan,
        predict_args: dict[str, Any],
        *,
        depth: int = DEPTH,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        import ray

        self.ray = ray
        self.depth, self.start_timeout = depth, start_timeout
        self.predict_args = predict_args
        # Workers whose allocator keeps freed batch buffers (pipeline/memory.py).
        env = {"env_vars": dict(ALLOCATOR_ENV)}
        self.actor_class = ray.remote(PredictStage).options(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus or None,
            max_restarts=0,  # replaced by this engine, which knows which item killed it
            max_task_retries=0,
            max_concurrency=CONCURRENCY,
            runtime_env=env,
        )
        io = {"num_cpus": IO_TASK_CPUS, "max_retries": 0, "runtime_env": env}
        self.read = ray.remote(read_stage).options(**io)
        self.write = ray.remote(write_stage).options(**io)
        self.starting: dict[Any, Any] = {}  # ready() ref -> actor
        self.replicas: list[_Replica] = []
        self.flight: dict[Any, tuple[int, WorkItem, _Replica]] = {}
        self.seq = 0
        #: (scene id, tile index) of items a replica held when it died with
        #: others: they run one at a time until each is cleared or charged.
        self.suspects: set[tuple[int, tuple[int, int]]] = set()
        self.start_failures = 0
        self.broken: str | None = None
        self.idle_since = time.monotonic()  # when the last running replica was lost
        for _ in range(plan.replicas):
            self._start()
        # Start the read and write workers while the replicas load their models:
        # a worker's first task otherwise pays its process start and imports.
        warm = ray.remote(warm_up).options(**io)
        self.warming = [warm.remote() for _ in range(WARM_WORKERS * plan.replicas)]

    def _start(self) -> None:
        actor = self.actor_class.remote(**self.predict_args)
        self.starting[actor.ready.remote()] = actor  # type: ignore[attr-defined]

    def _live(self) -> list[_Replica]:
        return [r for r in self.replicas if not r.dead]

    def room(self) -> int:
        """Free item slots over the live replicas; one at a time while suspects remain."""
        if self.suspects:
            return 0 if self.flight or not self._live() else 1
        return sum(r.depth - len(r.items) for r in self._live())

    def forget(self, scene_id: int) -> None:
        """A scene is closed (failed): its batches will not come again."""
        self.suspects = {s for s in self.suspects if s[0] != scene_id}

    def batch_size(self, window: tuple[int, int]) -> int | None:
        """Tiles per batch for windows of this shape, as the first replica to
        start measures on its device; None while no replica runs yet."""
        self.poll(0.5)
        live = self._live()
        if self.broken:
            return CPU_BATCH  # the driver fails the scenes with the engine's reason
        if not live:
            return None
        try:
            return int(self.ray.get(live[0].actor.batch_size.remote(window)))
        except Exception as exc:  # it died meanwhile: the next one will answer
            failure, _ = classify(exc)
            self._lose(live[0])
            self.replicas.remove(live[0])
            log.warning("a replica died while sizing batches (%s)", failure.reason)
            return None

    def submit(self, item: WorkItem, request: BatchRequest) -> None:
        replica = min(self._live(), key=lambda r: len(r.items) - r.depth)
        self.seq += 1
        labels = replica.actor.predict.remote(self.read.remote(request))
        ref = self.write.remote(request, labels)
        replica.items[self.seq] = item
        self.flight[ref] = (self.seq, item, replica)

    def poll(self, timeout: float) -> list[tuple[WorkItem, Any]]:
        """Finished items: waits up to ``timeout`` seconds for the first."""
        ray = self.ray
        refs = [*self.flight, *self.starting]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out: list[tuple[WorkItem, Any]] = []
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
                continue
            seq, item, replica = self.flight.pop(ref)
            del replica.items[seq]
            try:
                summary = ray.get(ref)
                replica.finished(summary.replica_seconds)
                self.suspects -= _tiles(item)  # it came back: not a killer
                out.append((item, summary))
            except Exception as exc:
                failure, lost = classify(exc)
                if lost:
                    self._lose(replica)
                    replica.lost.append((seq, item, failure))
                else:
                    out.append((item, failure))
        for replica in [r for r in self.replicas if r.dead and not r.items]:
            out.extend(self._judge(replica))
        for replica in self._live():
            replica.starved |= len(replica.items) < replica.depth - 1
        if not self._live() and time.monotonic() - self.idle_since > self.start_timeout:
            self.broken = f"no model replica was running for {self.start_timeout:.0f} s"
        return out

    def _started(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            name = self.ray.get(ref)  # raises what the constructor raised
        except Exception as exc:
            # The constructor's own exception is the last line of Ray's message.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(exc).__name__
            self.ray.kill(actor)
            self.start_failures += 1
            if self.start_failures >= START_FAILURES and not self._live():
                self.broken = f"model replicas cannot start ({reason})"
            elif self.start_failures < START_FAILURES:
                self._start()
            return
        self.start_failures = 0
        self.replicas.append(_Replica(actor))
        log.info("replica %s is ready", name)  # node:pid, as the summary names it

    def _lose(self, replica: _Replica) -> None:
        """A replica's process died: replace it with a fresh one."""
        if replica.dead:
            return
        replica.dead = True
        self.ray.kill(replica.actor)
        if not self._live():
            self.idle_since = time.monotonic()
        self._start()

    def _judge(self, replica: _Replica) -> list[tuple[WorkItem, Failure]]:
        """The items a dead replica held: one alone killed it; of several, none
        is charged and each becomes a suspect (see the module's docstring)."""
        self.replicas.remove(replica)
        lost = sorted(replica.lost, key=lambda x: x[0])
        if len(lost) == 1:
            return [(lost[0][1], lost[0][2])]
        for _, item, _ in lost:
            self.suspects |= _tiles(item)
        return [(item, Failure(f.reason, f.memory, charged=False)) for _, item, f in lost]

    def close(self) -> None:
        for actor in [*(r.actor for r in self.replicas), *self.starting.values()]:
            self.ray.kill(actor)
        self.replicas.clear()
        self.starting.clear()
