"""The driver of a run: plan every scene, stream its batches, publish, record.

Batches of all scenes flow through the three stages of
:mod:`~fcnrs.pipeline.distributed.stages` on an engine: Ray
(:mod:`~fcnrs.pipeline.distributed.ray_engine`: replicas as actors, reads and
writes as tasks) or this process (:mod:`~fcnrs.pipeline.distributed.local`).
The driver keeps each engine fed with a bounded number of batches (backpressure:
memory stays bounded, replicas stay busy), consumes what lands, shows progress,
and publishes a scene (metadata and completion marker last) as soon as its last
batch lands.

A night always finishes. Every failure of a batch, an exception or the death of
a process, comes back as a :class:`~.retries.Failure`; the batch is retried a
bounded number of times (split in two where the failure looks like memory),
then its scene fails, naming its tile windows, its remaining batches are
dropped, and every other scene goes on. A stopped driver (SIGTERM, as ``ray job
stop`` sends, or Ctrl-C) records every unfinished scene as ``interrupted``; its
staging groups stay, and a re-run recomputes only the batches not on disk.
Planned batches are a pure function of the scene and settings, so the output
bytes are the same whichever way a scene got done.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from os import PathLike
from typing import Any, Literal, TextIO

from fcnrs.fcn_model import ModelMeta, checkpoint_digest, read_meta

from ..batches import BatchRequest, WriteSummary
from ..errors import Interrupted, OutputError, SceneError
from ..manifest import (
    ManifestRow,
    ManifestWriter,
    ReplicaWork,
    RunIdentity,
    RunRecord,
    Status,
    check_run_id,
    done_row,
    failed_row,
    now,
    skipped_row,
    write_run_record,
)
from ..planning import Tile, plan_batches
from ..precision import default_device
from ..scenes import ScenePlan, SegmentSettings, plan_scene
from ..storage import Location, local_copy
from ..writing import StagingGroup, staging_group
from .crashes import CrashRecord, tile_key
from .local import LocalEngine, available_cpus
from .progress import Progress
from .ray_engine import RayEngine
from .replicas import ReplicaPlan, plan_replicas
from .retries import DEFAULT_RETRIES, Failure, WorkItem, after_failure, give_up

#: Where a run's batches execute: a Ray cluster, or this process.
Engine = Literal["ray", "local"]

log = logging.getLogger(__name__)

#: Stop requests (signal names) for the run in progress: see :func:`request_stop`.
_STOP: list[str] = []


def request_stop(signal_name: str = "SIGTERM") -> None:
    """Ask the run in progress to stop within a second: it records its unfinished
    scenes as ``interrupted`` and returns. Safe to call from a signal handler,
    which is how the job turns SIGTERM (``ray job stop``) into a clean stop;
    raising from the handler instead can be lost inside Ray's blocking calls."""
    _STOP.append(signal_name)


def _check_stop() -> None:
    if _STOP:
        raise Interrupted(_STOP[-1])


@dataclass
class SceneJob:
    """One scene being segmented: its plan, staging group and tiles still due."""

    scene: str
    plan: ScenePlan
    group: StagingGroup
    done: set[tuple[int, int]]  # tiles an interrupted run left on disk
    pending: set[tuple[int, int]]  # tiles not yet written by this run
    batches: list[tuple[Tile, ...]] = field(default_factory=list)  # still to run, in order
    valid_pixels: int = 0  # of the tiles written so far, resumed ones included
    predicted: int = 0
    failed: str = ""
    closed: bool = False  # recorded in the manifest: nothing more happens to it
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=now)


@dataclass(frozen=True)
class RunReport:
    run_id: str
    rows: tuple[ManifestRow, ...]
    #: What each model replica did (also kept in the run's record).
    replicas: dict[str, ReplicaWork] = field(default_factory=dict)
    interrupted: str | None = None  # the signal that stopped the run

    @property
    def replica_batches(self) -> dict[str, int]:
        return {name: work.batches for name, work in self.replicas.items()}

    @property
    def failed(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.status == "failed"]

    def exit_code(self) -> int:
        """0: every scene done or skipped; 1: a scene failed; 130 or 143: stopped
        by SIGINT or SIGTERM (128 + the signal, as a shell reports it)."""
        if self.interrupted:
            return 128 + int(getattr(signal, self.interrupted, signal.SIGINT))
        return 1 if self.failed else 0


@dataclass
class _Run:
    """What the phases of one run share."""

    identity: RunIdentity
    model: str
    meta: ModelMeta
    settings: SegmentSettings
    out_dir: Location
    manifest: ManifestWriter
    crashes: CrashRecord
    recorded: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=now)
    engine: str = ""
    device: str = ""
    threads: int = 0

    def record(self, row: ManifestRow) -> None:
        self.recorded.add(row.scene)
        self.manifest.add(row)


def run_scenes(
    scenes: Sequence[str | PathLike[str]],
    *,
    model: str | PathLike[str],
    out_dir: str | PathLike[str],
    settings: SegmentSettings | None = None,
    replicas: int | None = None,
    threads: int | None = None,
    run_id: str | None = None,
    progress: TextIO | None = sys.stderr,
    start_ray: Callable[[], None] | None = None,
    engine: Engine = "ray",
    retries: int = DEFAULT_RETRIES,
    worker_setup: Callable[[], None] | None = None,
) -> RunReport:
    """Segment scenes, skipping scenes already done with the same model and
    settings, resuming interrupted ones, and recording every scene in the manifest.

    ``engine="ray"`` runs the batches on the Ray cluster this process is connected
    to, or one that ``start_ray`` starts or joins (by default ``ray.init()``);
    ``engine="local"`` runs the same stages on this machine's cores, in a worker
    process this one replaces when it dies
    (:mod:`~fcnrs.pipeline.distributed.local`), with the same output bytes;
    ``worker_setup``, a picklable function, runs first in that worker. A failed
    batch is retried ``retries`` times before its scene fails; a batch in flight
    in ``retries + 1`` runs that died is not tried again
    (:mod:`~fcnrs.pipeline.distributed.crashes`).

    Returns the run's manifest rows: one per scene, whatever happened. One bad
    scene is recorded as failed and never stops the others; a stopped run
    (:class:`~fcnrs.pipeline.errors.Interrupted`, KeyboardInterrupt) records the
    unfinished scenes as ``interrupted`` and returns.
    """
    settings = settings or SegmentSettings()
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    scenes = [str(s) for s in scenes]
    if engine == "ray":
        (start_ray or _start_ray)()
        device = "cuda" if _cluster_resources().get("GPU", 0) else "cpu"
    else:
        device = default_device()
    run = _start_run(model, out_dir, settings.resolved(device), run_id)
    run.engine, run.device = engine, device
    jobs: list[SceneJob] = []
    work: dict[str, ReplicaWork] = {}
    try:
        jobs = _prepare_scenes(run, scenes)
        for job in jobs:
            if not job.pending:
                _finish(run, job)
        if any(not job.closed for job in jobs):
            runner = _engine(run, engine, device, replicas, threads, worker_setup)
            try:
                _schedule(run, [job for job in jobs if not job.closed], runner, retries)
                _drive(run, jobs, runner, progress, retries, work)
            finally:
                runner.close()
    except KeyboardInterrupt as exc:
        name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        log.error("stopped by %s: unfinished scenes are recorded as interrupted", name)
        _close_out(run, scenes, jobs, "interrupted", f"stopped by {name}; a re-run resumes it")
        _STOP.clear()
        return _record(run, RunReport(run.identity.run_id, tuple(run.manifest.rows), work, name))
    except BaseException as exc:
        _close_out(run, scenes, jobs, "failed", f"the run stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        run.crashes.close()  # the run ended: in flight no more
    return _record(run, RunReport(run.identity.run_id, tuple(run.manifest.rows), work))


def _record(run: _Run, report: RunReport) -> RunReport:
    """Keep the run's own record beside its manifest rows (a failure to write it
    is logged: the labels and rows are what matter)."""
    record = RunRecord(
        run_id=report.run_id,
        started_at=run.started_at,
        finished_at=now(),
        seconds=time.perf_counter() - run.started,
        engine=run.engine,
        device=run.device,
        model=run.model,
        model_digest=run.identity.model_digest,
        model_variant=run.meta.variant,
        classes=tuple(run.meta.classes),
        bands=tuple(run.settings.bands or run.meta.bands),
        settings=asdict(run.settings),
        settings_digest=run.identity.settings_digest,
        threads_per_replica=run.threads,
        replicas=dict(report.replicas),
        interrupted=report.interrupted,
    )
    try:
        write_run_record(run.out_dir, record)
    except OSError as exc:
        log.warning("%s: the run's record was not written: %s", run.out_dir, exc)
    return report


def _start_run(
    model: str | PathLike[str],
    out_dir: str | PathLike[str],
    settings: SegmentSettings,
    run_id: str | None,
) -> _Run:
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    check_run_id(run_id)
    try:
        out_dir = Location(out_dir)
        if out_dir.is_file():
            raise OutputError(f"{out_dir}: --out must be a folder, and this is a file.")
        if out_dir.remote:  # a wrong secret or bucket fails here, before anything is written
            next(out_dir.list(), None)
        model = str(model)
        local = local_copy(model)  # an s3:// checkpoint is fetched once, by ETag
    except (ValueError, OSError) as exc:
        raise OutputError(str(exc)) from None
    meta = read_meta(local)  # a bad checkpoint raises CheckpointError naming it
    identity = RunIdentity(run_id, checkpoint_digest(local), settings.digest())
    try:
        crashes = CrashRecord(out_dir, run_id)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot keep the run's crash record ({exc})") from None
    return _Run(identity, model, meta, settings, out_dir, ManifestWriter(out_dir, run_id), crashes)


def _prepare_scenes(run: _Run, scenes: Iterable[str]) -> list[SceneJob]:
    """Plan each scene; record the skipped and the failed; resume or create the rest."""
    jobs: list[SceneJob] = []
    seen: dict[Location, str] = {}
    for scene in scenes:
        _check_stop()
        t0, started_at = time.perf_counter(), now()
        try:
            job = _prepare_scene(run, scene, seen, t0, started_at)
        except Exception as exc:
            log.error("FAILED %s (recorded, other scenes go on)", exc)
            row = failed_row(
                run.identity,
                scene,
                str(exc),
                plan=None,
                started_at=started_at,
                seconds=time.perf_counter() - t0,
            )
            run.record(row)
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def _prepare_scene(
    run: _Run, scene: str, seen: dict[Location, str], t0: float, started_at: str
) -> SceneJob | None:
    plan = plan_scene(scene, meta=run.meta, out_dir=run.out_dir, settings=run.settings)
    if plan.output in seen:
        raise SceneError(
            scene,
            f"writes to {plan.output.name} like {seen[plan.output]}; "
            "rename one or run them into different --out folders",
        )
    seen[plan.output] = scene
    group = staging_group(
        plan, meta=run.meta, model_digest=run.identity.model_digest, settings=run.settings
    )
    group.check_ours()  # a folder we did not write fails the scene now, untouched
    published = group.published()
    if published is not None:
        row = skipped_row(
            run.identity,
            scene,
            plan=plan,
            valid_pixels=int(published.get("valid_pixels", 0)),
            started_at=started_at,
            seconds=time.perf_counter() - t0,
        )
        run.record(row)
        return None
    done = group.resume_or_create()
    pending = {t.index for t in plan.grid} - done
    return SceneJob(scene, plan, group, done, pending, started=t0, started_at=started_at)


def _schedule(
    run: _Run, jobs: Sequence[SceneJob], engine: LocalEngine | RayEngine, retries: int
) -> None:
    """Cut each open scene into the batches still due, at the batch size the
    settings give or, by default, the one the replicas' device holds. A scene
    with a batch that was in flight in ``retries + 1`` runs that died fails now."""
    size = run.settings.batch_size
    if size is None:
        window = max((job.plan.grid.max_read_shape for job in jobs), key=lambda s: s[0] * s[1])
        while size is None:  # on Ray, once a replica runs
            _check_stop()
            size = engine.batch_size(window)
        log.info("batch size %d (windows of %d x %d)", size, *window)
        run.settings = replace(run.settings, batch_size=size)  # what the record shows
    for job in jobs:
        batches = plan_batches(job.plan.grid, size)
        job.batches = [b for b in batches if not all(t.index in job.done for t in b)]
        job.pending = {t.index for batch in job.batches for t in batch}
        if job.done:
            resumed = [t for t in job.plan.grid if t.index not in job.pending]
            job.valid_pixels = job.group.chunks().count_valid(t.core for t in resumed)
            log.info(
                "%s: resuming, %d of %d batches already on disk",
                job.scene,
                len(batches) - len(job.batches),
                len(batches),
            )
        _convict(run, job, retries)


def _convict(run: _Run, job: SceneJob, retries: int) -> None:
    """Fail a scene now if one of its batches was in flight in ``retries + 1``
    runs that died: trying it again would kill this one too."""
    for batch in job.batches:
        keys = [tile_key(str(job.plan.output), _version(job), t) for t in batch]
        deaths = run.crashes.deaths_of(keys)
        if deaths > retries:
            windows = "; ".join(str(t.core) for t in batch)
            job.failed = (
                f"{job.scene}: tile(s) {windows} were being processed when {deaths} "
                "runs died (the kernel's OOM killer, a power loss or kill -9 took the "
                "whole run); not tried again until the scene changes"
            )
            _finish(run, job)
            return


def _start_ray() -> None:
    """Join the cluster ``RAY_ADDRESS`` names, else start a Ray of this run's own."""
    import os

    import ray

    if not ray.is_initialized():
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", log_to_driver=True)


def _cluster_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _engine(
    run: _Run,
    engine: Engine,
    device: str,
    replicas: int | None,
    threads: int | None,
    worker_setup: Callable[[], None] | None = None,
) -> LocalEngine | RayEngine:
    if engine == "ray":
        plan = plan_replicas(_node_resources(), replicas=replicas, threads=threads)
        runner: LocalEngine | RayEngine = RayEngine(plan, _predict_args(run, plan))
    else:
        cpus = available_cpus()
        plan = ReplicaPlan(1, num_gpus=0, num_cpus=cpus, threads=threads or cpus, device=device)
        runner = LocalEngine(_predict_args(run, plan), setup=worker_setup)
    run.device, run.threads = plan.device, plan.threads
    log.info(
        "%d replica(s) (%s, %s, %d thread(s) each; %s engine)",
        plan.replicas,
        plan.device,
        run.settings.precision,
        plan.threads,
        engine,
    )
    return runner


def _predict_args(run: _Run, plan: ReplicaPlan) -> dict[str, Any]:
    """What every replica is built from, on either engine."""
    return {
        "model": run.model,
        "device": plan.device,
        "precision": run.settings.precision,
        "probabilities": run.settings.probabilities,
        "threads": plan.threads,
    }


def _version(job: SceneJob) -> str:
    """The source's identity: size, mtime and ETag."""
    info = job.plan.info
    return f"{info.size_bytes}:{info.mtime_ns}:{info.etag}"


def _request(run: _Run, job: SceneJob, item: WorkItem) -> BatchRequest:
    """The stages' order for an item."""
    return BatchRequest(
        scene=job.scene,
        version=_version(job),
        output=str(job.plan.output),
        bands=tuple(job.plan.bands),
        tiles=item.tiles,
        probabilities=run.settings.probabilities,
    )


def _drive(
    run: _Run,
    jobs: Sequence[SceneJob],
    engine: LocalEngine | RayEngine,
    progress: TextIO | None,
    retries: int,
    work: dict[str, ReplicaWork],
) -> None:
    """Feed the engine, account for what lands, retry or fail what fails, and
    publish each scene with its last batch."""
    feed = _Feed(run, jobs, engine, retries, work, progress)
    while any(not job.closed for job in jobs):
        _check_stop()
        feed.send()
        if engine.broken:
            for job in jobs:
                if not job.closed:
                    job.failed = f"{job.scene}: {engine.broken}"
                    _finish(run, job)
            return
        for item, result in engine.poll(timeout=0.5):
            feed.land(item, result)


class _Feed:
    """The batches of a run on their way through an engine: the queue, what is
    in flight (written down in the run's crash record first), and what each
    landing batch means for its scene."""

    def __init__(
        self,
        run: _Run,
        jobs: Sequence[SceneJob],
        engine: LocalEngine | RayEngine,
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
        return [tile_key(str(job.plan.output), _version(job), t) for t in item.tiles]

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
            self.engine.submit(item, _request(self.run, self.jobs[item.scene_id], item))

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
        _absorb(job, item, result)
        if self.bar:
            self.bar.update(len(item.tiles), pixels)
        if not job.pending:
            _finish(self.run, job)

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
        _finish(self.run, job)


def _absorb(job: SceneJob, item: WorkItem, summary: WriteSummary) -> None:
    """Account for one written item of a scene."""
    job.pending.difference_update(t.index for t in item.tiles)
    job.predicted += summary.predicted
    job.valid_pixels += summary.valid_pixels


def _finish(run: _Run, job: SceneJob) -> None:
    """Publish a scene whose tiles are all written, or record why it failed."""
    if not job.failed:
        try:
            job.group.publish(job.valid_pixels)
        except Exception as exc:
            job.failed = f"{job.scene}: could not publish {job.plan.output} ({exc})"
    seconds = time.perf_counter() - job.started
    if job.failed:
        log.error("FAILED %s (recorded, other scenes go on)", job.failed)
        row = failed_row(
            run.identity,
            job.scene,
            job.failed,
            plan=job.plan,
            started_at=job.started_at,
            seconds=seconds,
            tiles_predicted=job.predicted,
        )
    else:
        run.crashes.forget(str(job.plan.output))  # every tile written: no suspects left
        row = done_row(
            run.identity,
            job.scene,
            plan=job.plan,
            tiles_predicted=job.predicted,
            valid_pixels=job.valid_pixels,
            started_at=job.started_at,
            seconds=seconds,
        )
    job.closed = True
    run.record(row)


def _close_out(
    run: _Run, scenes: Sequence[str], jobs: Sequence[SceneJob], status: Status, reason: str
) -> None:
    """Give every scene without a row one: the manifest is complete whatever happens."""
    plans = {job.scene: job for job in jobs}
    for scene in scenes:
        if scene in run.recorded:
            continue
        job = plans.get(scene)
        row = failed_row(
            run.identity,
            scene,
            reason,
            plan=job.plan if job else None,
            started_at=job.started_at if job else now(),
            seconds=time.perf_counter() - job.started if job else 0.0,
            tiles_predicted=job.predicted if job else 0,
            status=status,
        )
        run.record(row)
