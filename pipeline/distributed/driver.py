"""The driver of a run: plan every scene, stream its batches, publish, record.

Batches of all scenes stream through the three stages of
:mod:`~fcnrs.pipeline.distributed.stages`, on Ray or, with the local engine
(:mod:`~fcnrs.pipeline.distributed.local`), in this process. Ray Data's streaming executor
overlaps the stages and bounds the blocks in flight (backpressure), so replicas
are fed while memory stays bounded; batches of one huge scene and of many scenes
spread over every replica alike. The driver consumes the written batches as they
stream back, shows progress, and publishes a scene (metadata and completion
marker last) as soon as its last batch lands.

Faults: a killed actor is restarted by Ray and its batch retried (Ray Data's
actor pools default to unlimited restarts and task retries); a re-run after the
driver itself was killed resumes each scene's staging group and recomputes only
the batches not yet on disk. Planned batches are a pure function of the scene
and settings, so the model sees the same batches either way and the output
bytes are the same.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TextIO

from fcnrs.fcn_model import ModelMeta, checkpoint_digest, read_meta

from ..errors import OutputError, SceneError
from ..inference import default_device
from ..manifest import (
    ManifestRow,
    ManifestWriter,
    RunIdentity,
    done_row,
    failed_row,
    now,
    skipped_row,
)
from ..planning import Tile, plan_batches
from ..scenes import ScenePlan, SegmentSettings, plan_scene
from ..writing import StagingGroup, staging_group
from .local import available_cpus, stream_local
from .progress import Progress
from .replicas import IO_TASK_CPUS, ReplicaPlan, plan_replicas
from .stages import PredictStage, encode_tiles, read_stage, write_stage

#: Where a run's batches execute: a Ray cluster, or this process.
Engine = Literal["ray", "local"]

log = logging.getLogger(__name__)


@dataclass
class SceneJob:
    """One scene being segmented: its plan, staging group and batches still due."""

    scene: str
    plan: ScenePlan
    group: StagingGroup
    batches: list[tuple[Tile, ...]]
    pending: set[int]
    valid_pixels: int = 0  # of the tiles written so far, resumed ones included
    predicted: int = 0
    failed: str = ""
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=now)

    @property
    def pending_tiles(self) -> int:
        return sum(len(self.batches[b]) for b in self.pending)


@dataclass(frozen=True)
class RunReport:
    run_id: str
    rows: tuple[ManifestRow, ...]
    replica_batches: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.status == "failed"]

    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _Run:
    """What the phases of one run share."""

    identity: RunIdentity
    model: str
    meta: ModelMeta
    settings: SegmentSettings
    out_dir: Path
    manifest: ManifestWriter


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
) -> RunReport:
    """Segment scenes, skipping scenes already done with the same model and
    settings, resuming interrupted ones, and recording every scene in the manifest.

    ``engine="ray"`` runs the batches on the Ray cluster this process is connected
    to, or one that ``start_ray`` starts or joins (by default ``ray.init()``);
    ``engine="local"`` runs the same stages in this process on every core
    (:mod:`~fcnrs.pipeline.distributed.local`), with the same output bytes.

    Returns the run's manifest rows; one bad scene is recorded as failed and never
    stops the others.
    """
    settings = settings or SegmentSettings()
    if engine == "ray":
        (start_ray or _start_ray)()
        device = "cuda" if _cluster_resources().get("GPU", 0) else "cpu"
    else:
        device = default_device()
    run = _start_run(model, out_dir, settings.resolved(device), run_id)
    jobs = _prepare_scenes(run, scenes)
    for job in jobs:
        if not job.pending:
            _finish(run, job)
    rows = _batch_rows(run, jobs)
    if not rows:
        return RunReport(run.identity.run_id, tuple(run.manifest.rows))
    if engine == "ray":
        plan = plan_replicas(_cluster_resources(), replicas=replicas, threads=threads)
        written = _dataset(rows, _predict_args(run, plan), plan).iter_rows()
    else:
        cpus = available_cpus()
        plan = ReplicaPlan(1, num_gpus=0, num_cpus=cpus, threads=threads or cpus, device=device)
        written = stream_local(rows, PredictStage(**_predict_args(run, plan)))
    log.info(
        "%d batches of %d scenes on %d replica(s) (%s, %s, %d thread(s) each; %s engine)",
        len(rows),
        len(jobs),
        plan.replicas,
        plan.device,
        run.settings.precision,
        plan.threads,
        engine,
    )
    replica_batches = _consume(run, jobs, written, progress)
    return RunReport(run.identity.run_id, tuple(run.manifest.rows), dict(replica_batches))


def _start_run(
    model: str | PathLike[str],
    out_dir: str | PathLike[str],
    settings: SegmentSettings,
    run_id: str | None,
) -> _Run:
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: --out must be a folder, and this is a file.")
    model = str(model)
    meta = read_meta(model)  # a bad checkpoint raises CheckpointError naming it
    identity = RunIdentity(run_id, checkpoint_digest(model), settings.digest())
    return _Run(identity, model, meta, settings, out_dir, ManifestWriter(out_dir, run_id))


def _prepare_scenes(run: _Run, scenes: Iterable[str | PathLike[str]]) -> list[SceneJob]:
    """Plan each scene; record the skipped and the failed; resume or create the rest."""
    jobs: list[SceneJob] = []
    seen: dict[Path, str] = {}
    for scene in scenes:
        t0, started_at = time.perf_counter(), now()
        try:
            job = _prepare_scene(run, str(scene), seen, t0, started_at)
        except Exception as exc:
            log.error("FAILED %s (recorded, other scenes go on)", exc)
            row = failed_row(
                run.identity,
                str(scene),
                str(exc),
                plan=None,
                started_at=started_at,
                seconds=time.perf_counter() - t0,
            )
            run.manifest.add(row)
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def _prepare_scene(
    run: _Run, scene: str, seen: dict[Path, str], t0: float, started_at: str
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
        run.manifest.add(row)
        return None
    done = group.resume_or_create()
    batches = plan_batches(plan.grid, run.settings.batch_size)
    pending = {b for b, batch in enumerate(batches) if not all(t.index in done for t in batch)}
    job = SceneJob(scene, plan, group, batches, pending, started=t0, started_at=started_at)
    if done:
        resumed = [t for t in plan.grid if t.index in done]
        job.valid_pixels = group.chunks().count_valid(t.core for t in resumed)
        log.info(
            "%s: resuming, %d of %d batches already on disk",
            scene,
            len(batches) - len(pending),
            len(batches),
        )
    return job


def _batch_rows(run: _Run, jobs: Sequence[SceneJob]) -> list[dict[str, Any]]:
    """One row per pending batch: what the read stage needs, as plain values."""
    return [
        {
            "scene_id": sid,
            "batch_id": b,
            "scene": job.scene,
            "output": str(job.plan.output),
            "bands": list(job.plan.bands),
            "mean": list(run.meta.mean),
            "std": list(run.meta.std),
            "tiles": encode_tiles(job.batches[b]),
            "probabilities": run.settings.probabilities,
        }
        for sid, job in enumerate(jobs)
        for b in sorted(job.pending)
    ]


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)


def _cluster_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def _predict_args(run: _Run, plan: ReplicaPlan) -> dict[str, Any]:
    """What every replica is built from, on either engine."""
    return {
        "model": run.model,
        "device": plan.device,
        "precision": run.settings.precision,
        "probabilities": run.settings.probabilities,
        "threads": plan.threads,
    }


def _consume(
    run: _Run,
    jobs: Sequence[SceneJob],
    written: Iterable[Mapping[str, Any]],
    progress: TextIO | None,
) -> Counter[str]:
    """Account for written batches as they land; publish each scene with its last."""
    bar = Progress(sum(job.pending_tiles for job in jobs), progress) if progress else None
    replica_batches: Counter[str] = Counter()
    for row in written:
        replica_batches[str(row["replica"])] += 1
        job = jobs[int(row["scene_id"])]
        _absorb(job, row)
        if bar:
            batch = job.batches[int(row["batch_id"])]
            bar.update(len(batch), sum(t.core.height * t.core.width for t in batch))
        if not job.pending:
            _finish(run, job)
    return replica_batches


def _absorb(job: SceneJob, row: Mapping[str, Any]) -> None:
    """Account for one written batch of a scene."""
    job.pending.discard(int(row["batch_id"]))
    job.predicted += int(row["predicted"])
    job.valid_pixels += int(row["valid_pixels"])
    if row["error"] and not job.failed:
        job.failed = str(row["error"])
        log.error("FAILED %s (recorded, other scenes go on)", job.failed)


def _finish(run: _Run, job: SceneJob) -> None:
    """Publish a scene whose batches are all written, and record it."""
    if not job.failed:
        try:
            job.group.publish(job.valid_pixels)
        except Exception as exc:
            job.failed = f"{job.scene}: could not publish {job.plan.output} ({exc})"
    seconds = time.perf_counter() - job.started
    if job.failed:
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
        row = done_row(
            run.identity,
            job.scene,
            plan=job.plan,
            tiles_predicted=job.predicted,
            valid_pixels=job.valid_pixels,
            started_at=job.started_at,
            seconds=seconds,
        )
    run.manifest.add(row)


def _dataset(rows: list[dict[str, Any]], predict_args: dict[str, Any], plan: ReplicaPlan):
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    io_cpus = IO_TASK_CPUS
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(read_stage, num_cpus=io_cpus)
    ds = ds.map(
        PredictStage,
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        fn_constructor_kwargs=predict_args,
        num_gpus=plan.num_gpus or None,
        num_cpus=plan.num_cpus,
        # Ray Data's actor pools restart a replica that dies (killed, out of
        # memory, node lost) and retry its batch: max_restarts=-1 and
        # max_task_retries=-1 are its defaults, and a test kills one to prove it.
    )
    return ds.map(write_stage, num_cpus=io_cpus)
