"""Many scenes on a Ray cluster: a streaming Ray Data pipeline over planned batches.

The unit of work is one planned batch of one scene (:func:`~pipeline.planning.plan_batches`).
Batches of all scenes stream through three stages:

1. ``read_stage`` (Ray tasks, CPU): windowed reads of the batch's tiles;
2. ``PredictStage`` (an actor pool): one model replica per actor, pinned to one
   GPU (``num_gpus=1``) or to CPU threads where there is no GPU;
3. ``write_stage`` (Ray tasks, CPU): each tile core into its own Zarr chunk.

Ray Data's streaming executor overlaps the stages and bounds the blocks in
flight (backpressure), so replicas are fed while memory stays bounded; batches
of one huge scene and of many scenes spread over every replica alike. The driver
consumes the written batches as they stream back, shows progress, and publishes
a scene (metadata and completion marker last) as soon as its last batch lands.

Faults: a killed actor is restarted by Ray and its batch retried (Ray Data's
actor pools default to unlimited restarts and task retries); a re-run after the driver itself was
killed resumes each scene's staging group and recomputes only the batches not
yet on disk. Planned batches are a pure function of the scene and settings, so
the model sees the same batches either way and the output bytes are the same.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fcn_model import checkpoint_digest, read_meta

from .errors import OutputError, SceneError
from .inference import Predictor
from .manifest import ManifestRow, ManifestWriter
from .planning import Tile, Window, plan_batches
from .reading import TileReader
from .segment import ScenePlan, SegmentSettings, label_writer, plan_scene, read_batch
from .writing import NODATA, ChunkWriter, LabelWriter, read_attrs, staging_path

log = logging.getLogger(__name__)

# -- replicas ------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaPlan:
    """How many model replicas run, and what each reserves."""

    replicas: int
    num_gpus: float
    num_cpus: float
    threads: int
    device: str


def plan_replicas(
    resources: dict[str, float], *, replicas: int | None = None, threads: int | None = None
) -> ReplicaPlan:
    """One replica per GPU; without GPUs, replicas of up to 8 CPU threads that
    leave a quarter of the CPUs (at least one) to the read and write tasks.

    GPU replicas reserve at most one CPU each and never more than half of them,
    so the read and write tasks that feed them always find room.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        n = replicas or gpus
        per = min(1.0, cpus / (2 * n))
        return ReplicaPlan(n, num_gpus=1, num_cpus=per, threads=threads or 2, device="cuda")
    io = max(1, cpus // 4)
    n = replicas or max(1, (cpus - io) // 8)
    per = max(1, (cpus - io) // n)
    return ReplicaPlan(n, num_gpus=0, num_cpus=per, threads=threads or per, device="cpu")


# -- stages (module level, so Ray ships them by reference) -----------------------

_READERS: dict[str, TileReader] = {}
_WRITERS: dict[str, ChunkWriter] = {}


def _tiles_of(row: dict[str, Any]) -> list[Tile]:
    return [
        Tile((int(t[0]), int(t[1])), Window(*map(int, t[6:10])), Window(*map(int, t[2:6])))
        for t in np.asarray(row["tiles"])
    ]


def _encode_tiles(tiles: Sequence[Tile]) -> np.ndarray:
    return np.array(
        [
            (
                *t.index,
                t.read.row,
                t.read.col,
                t.read.height,
                t.read.width,
                t.core.row,
                t.core.col,
                t.core.height,
                t.core.width,
            )
            for t in tiles
        ],
        dtype=np.int64,
    )


def read_stage(row: dict[str, Any]) -> dict[str, Any]:
    """Read a planned batch with :func:`~pipeline.segment.read_batch`; ``keep``
    lists the tiles that go to the model (the others have no valid pixel)."""
    scene = str(row["scene"])
    key = f"{scene}|{list(row['bands'])}|{list(row['mean'])}|{list(row['std'])}"
    out = {k: row[k] for k in ("scene_id", "batch_id", "output", "tiles", "probabilities")}
    out["error"] = ""
    arrays = None
    keep: list[int] = []
    try:
        reader = _READERS.get(key)
        if reader is None:
            reader = _READERS[key] = TileReader(scene, row["bands"], row["mean"], row["std"])
        tiles = _tiles_of(row)
        _, kept, arrays = read_batch(reader, tiles)
        position = {tile.index: k for k, tile in enumerate(tiles)}
        keep = [position[tile.index] for tile in kept]
    except SceneError as exc:
        out["error"] = str(exc)
        arrays, keep = None, []
    out["keep"] = np.array(keep, dtype=np.int64)
    if arrays is None:
        arrays = {
            "image": np.zeros((0, 1, 1, 1), np.float32),
            "valid": np.zeros((0, 1, 1), bool),
            "core": np.zeros((0, 4), np.int64),
        }
    return out | arrays


class PredictStage:
    """One model replica per actor: :class:`~pipeline.inference.Predictor` in Ray's
    callable-class form, on the GPU Ray assigned to this actor, or on CPU threads."""

    def __init__(
        self, model: str, *, device: str, precision: str, probabilities: bool, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = False  # same kernels every run: same bytes
            torch.backends.cudnn.deterministic = True
        import ray

        gpu_ids = ray.get_gpu_ids()
        if device == "cuda" and not torch.cuda.is_available():
            log.warning(
                "Ray assigned GPU %s but torch sees no CUDA device: running on CPU", gpu_ids
            )
            device = "cpu"
        # Which replica did the work: the run summary shows how batches spread.
        self.replica = f"{ray.util.get_node_ip_address()}:{os.getpid()} gpu={gpu_ids}"
        self.predictor = Predictor(
            model, device=device, precision=precision, probabilities=probabilities
        )

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in ("scene_id", "batch_id", "output", "tiles", "keep", "error")}
        out["replica"] = self.replica
        out["probabilities"] = row["probabilities"]
        n = len(row["keep"])
        if n and not row["error"]:
            result = self.predictor(
                {"image": row["image"], "valid": row["valid"], "core": row["core"]}
            )
            out["labels"] = result["labels"]
            out["probs"] = result.get("probabilities", np.zeros((n, 0, 1, 1), np.uint8))
        else:
            out["labels"] = np.zeros((0, 1, 1), np.uint8)
            out["probs"] = np.zeros((0, 0, 1, 1), np.uint8)
        return out


def write_stage(row: dict[str, Any]) -> dict[str, Any]:
    """Write every tile of a batch, each into its own chunk (one writer per chunk)."""
    summary = {
        "scene_id": row["scene_id"],
        "batch_id": row["batch_id"],
        "error": row["error"],
        "replica": row["replica"],
        "tiles": len(row["tiles"]),
        "predicted": len(row["keep"]),
        "valid_pixels": 0,
    }
    if row["error"]:
        return summary
    stage = str(staging_path(Path(str(row["output"]))))
    writer = _WRITERS.get(stage)
    if writer is None:
        writer = _WRITERS[stage] = ChunkWriter(stage, probabilities=bool(row["probabilities"]))
    tiles = _tiles_of(row)
    predicted = {int(k): i for i, k in enumerate(np.asarray(row["keep"]))}
    probs = np.asarray(row["probs"])
    for k, tile in enumerate(tiles):
        if k in predicted:
            i = predicted[k]
            labels = np.asarray(row["labels"][i])
            writer.write(tile.core, labels, probs[i] if probs.shape[1] else None)
            summary["valid_pixels"] += int((labels != NODATA).sum())
        else:
            writer.write_nodata(tile.core)
    return summary


# -- driver ----------------------------------------------------------------------


@dataclass
class _SceneState:
    scene: str
    plan: ScenePlan
    writer: LabelWriter
    batches: list[tuple[Tile, ...]]
    pending: set[int]
    tiles_total: int
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    predicted: int = 0
    failed: str = ""


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Progress:
    """A live line: tiles done of total, megapixels per second, time left."""

    def __init__(self, total_tiles: int, stream: TextIO = sys.stderr) -> None:
        self.total = total_tiles
        self.done = self.done_pixels = 0
        self.start = self.last = time.perf_counter()
        self.stream = stream
        self.live = stream.isatty()

    def update(self, tiles: int, pixels: int) -> None:
        self.done += tiles
        self.done_pixels += pixels
        now = time.perf_counter()
        if now - self.last >= (0.5 if self.live else 10) or self.done == self.total:
            self.last = now
            self.stream.write(
                self.line() + ("\r" if self.live and self.done < self.total else "\n")
            )
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done_pixels / elapsed / 1e6
        left = (self.total - self.done) * elapsed / self.done if self.done else math.inf
        eta = f"{left:.0f} s" if math.isfinite(left) else "?"
        share = self.done / self.total if self.total else 1.0
        return f"tiles {self.done}/{self.total} ({share:.0%})  {rate:.2f} MP/s  {eta} left"


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
) -> RunReport:
    """Segment scenes on the Ray cluster this process is connected to (or a local
    one), skipping scenes already done with the same model and settings, resuming
    interrupted ones, and recording every scene in the manifest.

    Returns the run's manifest rows; one bad scene is recorded as failed and never
    stops the others.
    """
    import ray

    settings = settings or SegmentSettings()
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: --out must be a folder, and this is a file.")
    manifest = ManifestWriter(out_dir, run_id)
    model = str(model)
    meta = read_meta(model)
    digest = checkpoint_digest(model)

    def record(state_or_scene, status, *, error=None, plan=None, seconds=0.0, started=None):
        st = state_or_scene if isinstance(state_or_scene, _SceneState) else None
        plan = st.plan if st else plan
        manifest.add(
            ManifestRow(
                run_id=run_id,
                scene=str(st.scene if st else state_or_scene),
                output=str(plan.output) if plan else "",
                status=status,
                error=error,
                tiles=len(plan.grid) if plan else 0,
                tiles_predicted=st.predicted if st else 0,
                valid_pixels=int((read_attrs(plan.output) or {}).get("valid_pixels", 0))
                if plan and status != "failed"
                else 0,
                seconds=seconds,
                model_digest=digest,
                settings_digest=settings.digest(),
                source_size=plan.info.size_bytes if plan else -1,
                source_mtime_ns=plan.info.mtime_ns if plan else -1,
                started_at=st.started_at if st else (started or _now()),
                finished_at=_now(),
            )
        )

    states: list[_SceneState] = []
    seen_outputs: dict[Path, str] = {}
    for scene in scenes:
        t0, started = time.perf_counter(), _now()
        try:
            plan = plan_scene(scene, meta=meta, out_dir=out_dir, settings=settings)
            if plan.output in seen_outputs:
                raise SceneError(
                    scene,
                    f"writes to {plan.output.name} like {seen_outputs[plan.output]}; "
                    "rename one or run them into different --out folders",
                )
            seen_outputs[plan.output] = str(scene)
            writer = label_writer(plan, meta=meta, model_digest=digest, settings=settings)
            if writer.is_published():
                record(
                    scene,
                    "skipped",
                    plan=plan,
                    seconds=time.perf_counter() - t0,
                    error="already done with the same model, settings and source",
                    started=started,
                )
                continue
            done = writer.resume_or_create()
        except Exception as exc:
            log.error("FAILED %s (recorded, other scenes go on)", exc)
            record(
                scene, "failed", error=str(exc), seconds=time.perf_counter() - t0, started=started
            )
            continue
        batches = plan_batches(plan.grid, settings.batch_size)
        pending = {b for b, batch in enumerate(batches) if not all(t.index in done for t in batch)}
        if done:
            log.info(
                "%s: resuming, %d of %d batches already on disk",
                scene,
                len(batches) - len(pending),
                len(batches),
            )
        states.append(
            _SceneState(
                str(scene),
                plan,
                writer,
                batches,
                pending,
                tiles_total=sum(len(batches[b]) for b in pending),
            )
        )

    def finish(state: _SceneState) -> None:
        if state.failed:
            record(state, "failed", error=state.failed, seconds=time.perf_counter() - state.started)
            return
        try:
            state.writer.publish()
        except Exception as exc:
            state.failed = f"{state.scene}: could not publish {state.plan.output} ({exc})"
            record(state, "failed", error=state.failed, seconds=time.perf_counter() - state.started)
            return
        record(state, "done", seconds=time.perf_counter() - state.started)

    items = [
        {
            "scene_id": sid,
            "batch_id": b,
            "scene": state.scene,
            "output": str(state.plan.output),
            "bands": list(state.plan.bands),
            "mean": list(meta.mean),
            "std": list(meta.std),
            "tiles": _encode_tiles(state.batches[b]),
            "probabilities": settings.probabilities,
        }
        for sid, state in enumerate(states)
        for b in sorted(state.pending)
    ]
    for state in states:
        if not state.pending:
            finish(state)
    replica_batches: Counter[str] = Counter()
    if items:
        if not ray.is_initialized():
            ray.init(log_to_driver=True)
        plan = plan_replicas(ray.cluster_resources(), replicas=replicas, threads=threads)
        log.info(
            "%d batches of %d scenes on %d replica(s) (%s, %d thread(s) each)",
            len(items),
            len(states),
            plan.replicas,
            plan.device,
            plan.threads,
        )
        total = sum(state.tiles_total for state in states)
        bar = Progress(total, progress) if progress else None
        for row in _pipeline(ray, items, model, settings, plan).iter_rows():
            replica_batches[str(row["replica"])] += 1
            state = states[int(row["scene_id"])]
            state.pending.discard(int(row["batch_id"]))
            state.predicted += int(row["predicted"])
            if row["error"] and not state.failed:
                state.failed = str(row["error"])
                log.error("FAILED %s (recorded, other scenes go on)", state.failed)
            if bar:
                batch = state.batches[int(row["batch_id"])]
                bar.update(len(batch), sum(t.core.height * t.core.width for t in batch))
            if not state.pending:
                finish(state)
    return RunReport(run_id, tuple(manifest.rows), dict(replica_batches))


def _pipeline(
    ray, items: list[dict[str, Any]], model: str, settings: SegmentSettings, plan: ReplicaPlan
):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    io_cpus = 0.5
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(read_stage, num_cpus=io_cpus)
    ds = ds.map(
        PredictStage,
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        fn_constructor_kwargs={
            "model": model,
            "device": plan.device,
            "precision": settings.precision,
            "probabilities": settings.probabilities,
            "threads": plan.threads,
        },
        num_gpus=plan.num_gpus or None,
        num_cpus=plan.num_cpus,
        # Ray Data's actor pools restart a replica that dies (killed, out of
        # memory, node lost) and retry its batch: max_restarts=-1 and
        # max_task_retries=-1 are its defaults, and a test kills one to prove it.
    )
    return ds.map(write_stage, num_cpus=io_cpus)
