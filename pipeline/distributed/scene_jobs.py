"""A scene's life in a run: planned (or skipped), resumed, cut into the batches
still due, fed, and finished (published, or recorded as failed), every scene
with its manifest row whatever happens."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..batches import BatchRequest, WriteSummary
from ..errors import SceneError
from ..manifest import Status, done_row, failed_row, now, skipped_row
from ..planning import Tile, plan_batches
from ..scenes import ScenePlan, plan_scene
from ..storage import Location
from ..writing import StagingGroup, staging_group
from .crashes import tile_key
from .retries import WorkItem
from .run import RunState, check_stop

if TYPE_CHECKING:
    from .engines import Engine

log = logging.getLogger(__name__)


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


def prepare_scenes(run: RunState, scenes: Iterable[str]) -> list[SceneJob]:
    """Plan each scene; record the skipped and the failed; resume or create the rest."""
    jobs: list[SceneJob] = []
    seen: dict[Location, str] = {}
    for scene in scenes:
        check_stop()
        t0, started_at = time.perf_counter(), now()
        try:
            job = prepare_scene(run, scene, seen, t0, started_at)
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


def prepare_scene(
    run: RunState, scene: str, seen: dict[Location, str], t0: float, started_at: str
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


def schedule(run: RunState, jobs: Sequence[SceneJob], engine: Engine, retries: int) -> None:
    """Cut each open scene into the batches still due, at the batch size the
    settings give or, by default, the one the replicas' device holds. A scene
    with a batch that was in flight in ``retries + 1`` runs that died fails now."""
    size = run.settings.batch_size
    if size is None:
        window = max((job.plan.grid.max_read_shape for job in jobs), key=lambda s: s[0] * s[1])
        while size is None:  # on Ray, once a replica runs
            check_stop()
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
        convict(run, job, retries)


def convict(run: RunState, job: SceneJob, retries: int) -> None:
    """Fail a scene now if one of its batches was in flight in ``retries + 1``
    runs that died: trying it again would kill this one too."""
    for batch in job.batches:
        keys = [tile_key(str(job.plan.output), source_version(job), t) for t in batch]
        deaths = run.crashes.deaths_of(keys)
        if deaths > retries:
            windows = "; ".join(str(t.core) for t in batch)
            job.failed = (
                f"{job.scene}: tile(s) {windows} were being processed when {deaths} "
                "runs died (the kernel's OOM killer, a power loss or kill -9 took the "
                "whole run); not tried again until the scene changes"
            )
            finish(run, job)
            return


def source_version(job: SceneJob) -> str:
    """The source's identity: size, mtime and ETag."""
    info = job.plan.info
    return f"{info.size_bytes}:{info.mtime_ns}:{info.etag}"


def batch_request(run: RunState, job: SceneJob, item: WorkItem) -> BatchRequest:
    """The stages' order for an item."""
    return BatchRequest(
        scene=job.scene,
        version=source_version(job),
        output=str(job.plan.output),
        bands=tuple(job.plan.bands),
        tiles=item.tiles,
        write_probabilities=run.settings.probabilities,
    )


def absorb(job: SceneJob, item: WorkItem, summary: WriteSummary) -> None:
    """Account for one written item of a scene."""
    job.pending.difference_update(t.index for t in item.tiles)
    job.predicted += summary.predicted
    job.valid_pixels += summary.valid_pixels


def finish(run: RunState, job: SceneJob) -> None:
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


def close_out(
    run: RunState, scenes: Sequence[str], jobs: Sequence[SceneJob], status: Status, reason: str
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
