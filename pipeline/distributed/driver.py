"""The driver of a run: plan every scene, stream its batches, publish, record.

Batches of all scenes flow through the three stages of
:mod:`~fcnrs.pipeline.distributed.stages` on an engine
(:mod:`~fcnrs.pipeline.distributed.engines`): Ray
(:mod:`~fcnrs.pipeline.distributed.ray_engine`: replicas as actors, reads and
writes as tasks) or this machine (:mod:`~fcnrs.pipeline.distributed.local`: a
worker process the driver watches). The driver keeps each engine fed with a
bounded number of batches (backpressure: memory stays bounded, replicas stay
busy; :mod:`~fcnrs.pipeline.distributed.feed`), consumes what lands, shows
progress, and publishes a scene (metadata and completion marker last) as soon
as its last batch lands (:mod:`~fcnrs.pipeline.distributed.scene_jobs`).

A night always finishes. Every failure of a batch, an exception or the death of
a process, comes back as a :class:`~.retries.Failure`; the batch is retried a
bounded number of times (split in two where the failure looks like memory),
then its scene fails, naming its tile windows, its remaining batches are
dropped, and every other scene goes on. A run that dies whole leaves its crash
record (:mod:`~fcnrs.pipeline.distributed.crashes`). A stopped driver
(SIGTERM, as ``ray job stop`` sends, or Ctrl-C) records every unfinished scene
as ``interrupted``; its staging groups stay, and a re-run recomputes only the
batches not on disk. Planned batches are a pure function of the scene and
settings, so the output bytes are the same whichever way a scene got done.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from os import PathLike
from typing import TextIO

from ..errors import Interrupted
from ..manifest import ReplicaWork
from ..precision import default_device
from ..scenes import SegmentSettings
from .engines import EngineName, EngineOptions, cluster_resources, make_engine
from .engines import start_ray as start_own_ray
from .feed import drive
from .retries import DEFAULT_RETRIES
from .run import STOPS, RunReport, RunState, record_run, request_stop, start_run
from .scene_jobs import SceneJob, close_out, finish, prepare_scenes, schedule

__all__ = ["EngineName", "RunReport", "SceneJob", "request_stop", "run_scenes"]

log = logging.getLogger(__name__)


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
    engine: EngineName = "ray",
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
    if engine == "ray":
        (start_ray or start_own_ray)()
        device = "cuda" if cluster_resources().get("GPU", 0) else "cpu"
    else:
        device = default_device()
    run = start_run(model, out_dir, settings.resolved(device), run_id)
    run.engine, run.device = engine, device
    options = EngineOptions(engine, device, replicas, threads, worker_setup)
    return _run(run, [str(s) for s in scenes], options, progress, retries)


def _run(
    run: RunState,
    scenes: list[str],
    options: EngineOptions,
    progress: TextIO | None,
    retries: int,
) -> RunReport:
    """The run's phases, and its ending whatever happens: every scene recorded."""
    jobs: list[SceneJob] = []
    work: dict[str, ReplicaWork] = {}
    try:
        jobs = prepare_scenes(run, scenes)
        for job in jobs:
            if not job.pending:
                finish(run, job)
        if any(not job.closed for job in jobs):
            engine = make_engine(run, options)
            try:
                schedule(run, [job for job in jobs if not job.closed], engine, retries)
                drive(run, jobs, engine, progress, retries, work)
            finally:
                engine.close()
    except KeyboardInterrupt as exc:
        name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        log.error("stopped by %s: unfinished scenes are recorded as interrupted", name)
        close_out(run, scenes, jobs, "interrupted", f"stopped by {name}; a re-run resumes it")
        STOPS.clear()
        return record_run(run, RunReport(run.identity.run_id, tuple(run.manifest.rows), work, name))
    except BaseException as exc:
        close_out(run, scenes, jobs, "failed", f"the run stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        run.crashes.close()  # the run ended: in flight no more
    return record_run(run, RunReport(run.identity.run_id, tuple(run.manifest.rows), work))
