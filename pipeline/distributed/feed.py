"""Feeding an engine: the batches of a run on their way through it, and what each
one that lands means for its scene (written, retried, or the scene's failure)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TextIO

from ..batches import WriteSummary
from ..manifest import ReplicaWork
from .crashes import tile_key
from .engines import Engine
from .progress import Progress
from .retries import Failure, WorkItem, after_failure, give_up
from .run import RunState, check_stop
from .scene_jobs import SceneJob, absorb, batch_request, finish, source_version

log = logging.getLogger(__name__)


def drive(
    run: RunState,
    jobs: Sequence[SceneJob],
    engine: Engine,
    progress: TextIO | None,
    retries: int,
    work: dict[str, ReplicaWork],
) -> None:
    """Feed the engine, account for what lands, retry or fail what fails, and
    publish each scene with its last batch."""
    feed = Feed(run, jobs, engine, retries, work, progress)
    while any(not job.closed for job in jobs):
        check_stop()
        feed.send()
        if engine.broken:
            for job in jobs:
                if not job.closed:
                    job.failed = f"{job.scene}: {engine.broken}"
                    finish(run, job)
            return
        for item, result in engine.poll(timeout=0.5):
            feed.land(item, result)


class Feed:
    """The batches of a run on their way through an engine: the queue, what is
    in flight (written down in the run's crash record first), and what each
    landing batch means for its scene."""

    def __init__(
        self,
        run: RunState,
        jobs: Sequence[SceneJob],
        engine: Engine,
        retries: int,
        work: dict[str, ReplicaWork],
        progress: TextIO | None,
    ) -> None:
        self.run, self.jobs, self.engine, self.retries, self.work = run, jobs, engine, retries, work
        open_jobs = [job for job in jobs if not job.closed]
        self.bar = Progress(sum(len(j.pending) for j in open_jobs), progress) if progress else None
        items = [
            WorkItem(sid, batch)
            for sid, job in enumerate(jobs)
            if not job.closed
            for batch in job.batches
        ]
        # Batches in flight when an earlier run died go first, and alone.
        items.sort(key=lambda item: not self.suspect(item))
        self.queue = deque(items)
        self.flight: dict[int, int] = {}  # id(item) -> its number in the crash record
        self.alone: set[int] = set()  # id(item) of a suspect in flight
        self.seq = 0

    def keys(self, item: WorkItem) -> list[str]:
        job = self.jobs[item.scene_id]
        return [tile_key(str(job.plan.output), source_version(job), t) for t in item.tiles]

    def suspect(self, item: WorkItem) -> bool:
        return self.run.crashes.deaths_of(self.keys(item)) > 0

    def send(self) -> None:
        """Send what the engine has room for; a suspect only with nothing else in
        flight, and nothing beside it."""
        while self.queue and self.engine.room() > 0 and not self.engine.broken:
            item = self.queue[0]
            if self.jobs[item.scene_id].closed:  # a failed scene's batches are dropped
                self.queue.popleft()
                continue
            alone = self.suspect(item)
            if self.alone or (alone and self.flight):
                return
            self.queue.popleft()
            self.seq += 1
            self.flight[id(item)] = self.seq
            if alone:
                self.alone.add(id(item))
            self.run.crashes.sent(self.seq, self.keys(item))  # before it can run
            self.engine.submit(item, batch_request(self.run, self.jobs[item.scene_id], item))

    def land(self, item: WorkItem, result: WriteSummary | Failure) -> None:
        """Account for an item that came back."""
        seq = self.flight.pop(id(item), 0)
        self.alone.discard(id(item))
        self.run.crashes.back(seq, cleared=not isinstance(result, Failure))
        job = self.jobs[item.scene_id]
        if job.closed:
            return
        if isinstance(result, Failure):
            self._failed(job, item, result)
            return
        pixels = sum(t.core.height * t.core.width for t in item.tiles)
        self.work[result.replica] = self.work.get(result.replica, ReplicaWork()).plus(
            tiles=len(item.tiles), pixels=pixels, seconds=result.replica_seconds
        )
        absorb(job, item, result)
        if self.bar:
            self.bar.update(len(item.tiles), pixels)
        if not job.pending:
            finish(self.run, job)

    def _failed(self, job: SceneJob, item: WorkItem, failure: Failure) -> None:
        again = after_failure(item, failure, self.retries)
        if again:
            log.warning(
                "%s: tile(s) %s failed (%s); retrying%s",
                job.scene,
                item.windows(),
                failure.reason,
                " in smaller batches" if len(again) > 1 else "",
            )
            self.queue.extendleft(reversed(again))  # retried first: a bad scene fails fast
            return
        job.failed = give_up(job.scene, item, failure)
        self.engine.forget(item.scene_id)
        if self.bar:
            self.bar.drop(len(job.pending))
        finish(self.run, job)
