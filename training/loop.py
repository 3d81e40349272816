"""The training loop: model and optimizer, epochs, validation, checkpoints.

Two runners share every step below (:class:`~fcnrs.training.sampling.WindowSampler`,
:func:`run_epoch`, :func:`end_epoch`, :func:`export_best`):

- :func:`train_loop_per_worker` is the module-level loop a Ray Train
  ``TorchTrainer`` runs on each worker: the model is wrapped for DDP by
  ``prepare_model`` (gloo on CPU, NCCL on GPUs), every rank reads its own random
  windows and calls ``ray.train.report`` each epoch, rank 0 validates and
  attaches the checkpoint, and a restarted worker group resumes from
  ``ray.train.get_checkpoint()``;
- :func:`train_in_process` runs the same epochs in the calling process, with no
  Ray Train start-up (the demo).

Rank 0 validates on whole val scenes through the nightly job's tiled path
(:mod:`fcnrs.training.validation`) and exports the best model by mean IoU to
``<out>/best`` with :func:`fcnrs.fcn_model.save_checkpoint`. After the last
epoch the halo the best model needs is measured and recorded in it
(:mod:`fcnrs.training.context`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fcnrs.fcn_model import build_model, load_checkpoint, load_vgg16_weights, save_checkpoint
from fcnrs.pipeline.inference import resolve_precision
from fcnrs.pipeline.storage import Location, local_copy

from .context import measure_reserve, record_best_halo
from .sampling import IGNORE_INDEX, Prefetcher, WindowSampler
from .settings import TrainSettings
from .validation import val_metrics, validate

log = logging.getLogger(__name__)

#: The training state's file inside a checkpoint folder.
STATE_FILE = "state.pt"

#: ``report(metrics, checkpoint_dir)``: rank 0 passes a folder holding the state,
#: other ranks None. Ray Train's is :func:`_ray_report`.
Report = Callable[[dict[str, Any], Path | None], None]


# -- model, optimizer and the training state ----------------------------------------


def initial_model(s: TrainSettings) -> torch.nn.Module:
    """The network to train: from scratch, from ImageNet VGG16 (net surgery) or from
    a checkpoint (with another class list, the score and upsampling layers start
    afresh and the rest is kept)."""
    model = build_model(
        s.variant,
        num_classes=len(s.classes),
        in_channels=len(s.bands),
        width=s.width,  # type: ignore[arg-type]
        skip_scaling=s.optimizer == "sgd",
    )
    if s.weight_init == "pytorch":
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module.weight.requires_grad:
                module.reset_parameters()  # torch's default: Kaiming-uniform, a = sqrt(5)
    if s.init_vgg16:  # local or s3:// (fetched once per version, on each node)
        load_vgg16_weights(model, local_copy(s.init_vgg16))
    if s.init:
        parent, meta = load_checkpoint(local_copy(s.init))
        own = model.state_dict()
        same_classes = tuple(meta.classes) == tuple(s.classes)
        keep = {
            k: v
            for k, v in parent.state_dict().items()
            if k in own
            and own[k].shape == v.shape
            and (same_classes or not k.startswith(("score", "upscore")))
        }
        own.update(keep)
        model.load_state_dict(own)
    return model


#: Adam's peak learning rate by default (measured against 1e-3: see the README).
ADAM_LR = 2e-3


def base_lr(s: TrainSettings) -> float:
    """The peak learning rate: ``s.lr``, else :data:`ADAM_LR` or the paper's SGD 1e-4."""
    return s.lr or (1e-4 if s.optimizer == "sgd" else ADAM_LR)


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """Adam by default; ``sgd`` is the paper's (momentum 0.99, weight decay 5e-4)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=base_lr(s), momentum=0.99, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=base_lr(s))


@dataclass
class Progress:
    """Where a run stands: the last finished epoch (-1: none), the best val mean
    IoU so far and every epoch's record (rank 0's)."""

    epoch: int = -1
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Optimizer steps taken so far (the learning-rate schedule's position).
    steps: int = 0
    #: Seconds rank 0 has spent validating and checkpointing so far.
    overhead_s: float = 0.0


@dataclass
class TrainState:
    """A training state as loaded: weights, optimizer state and progress."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    progress: Progress


def save_state(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
) -> Path:
    """Write the training state to ``directory/state.pt`` (the checkpoint's content)."""
    path = Path(directory) / STATE_FILE
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": progress.epoch,
            "best": progress.best,
            # JSON text: weights_only loading takes tensors and plain containers only.
            "history": json.dumps(progress.history),
            "steps": progress.steps,
            "overhead_s": progress.overhead_s,
        },
        path,
    )
    return path


def load_state(directory: str | Path) -> TrainState:
    """Read what :func:`save_state` wrote (tensors only, no pickled code)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    progress = Progress(
        state["epoch"],
        state["best"],
        json.loads(state["history"]),
        int(state.get("steps", 0)),
        float(state.get("overhead_s", 0.0)),
    )
    return TrainState(state["model"], state["optimizer"], progress)


def initial_state(
    s: TrainSettings, checkpoint_dir: str | Path | None = None
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Progress]:
    """Model, optimizer and progress of a fresh run, or as saved in ``checkpoint_dir``."""
    torch.manual_seed(s.seed)
    model = initial_model(s)
    optimizer = make_optimizer(model, s)
    if checkpoint_dir is None:
        return model, optimizer, Progress()
    state = load_state(checkpoint_dir)
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    return model, optimizer, state.progress


# -- the budget, the schedule and one epoch --------------------------------------------

#: Seconds a time-limited run keeps at its end for the last report, the export and
#: the shutdown of the worker group and of Ray (7-15 s measured here; see the README).
SHUTDOWN_S = 20.0


@dataclass(frozen=True)
class Budget:
    """The job's wall-clock budget: ``start`` is when the job began (``time.time()``,
    process start-up included), ``deadline`` when it must have ended (None: no limit)."""

    start: float
    deadline: float | None = None

    @classmethod
    def minutes(cls, minutes: float | None, start: float | None = None) -> Budget:
        start = time.time() if start is None else start
        return cls(start, start + 60 * minutes if minutes else None)

    def stop_at(self, reserve: float) -> float | None:
        """When training must stop to leave ``reserve`` seconds before the deadline."""
        return None if self.deadline is None else self.deadline - reserve


#: The ``wsd`` schedule's decay: the last share of the run, linearly to zero.
DECAY_SHARE = 0.3


def lr_factor(s: TrainSettings, step: int, progress: float) -> float:
    """The learning rate's multiplier at ``step``, after a linear warm-up over
    ``s.warmup_steps``: ``constant``; ``cosine`` decays to zero as ``progress`` (0 to
    1, the larger of the step and time fractions) runs out; ``wsd`` (warm-up,
    stable, decay) holds the rate and decays it linearly to zero over the last
    :data:`DECAY_SHARE` of the run."""
    warm = min(1.0, (step + 1) / max(s.warmup_steps, 1))
    progress = min(max(progress, 0.0), 1.0)
    if s.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    if s.schedule == "wsd":
        return warm * min(1.0, (1 - progress) / DECAY_SHARE)
    return warm


@dataclass(frozen=True)
class EpochResult:
    """Per-step losses of an epoch, whether the deadline cut it short, the seconds
    its steps took and the windows they trained on."""

    losses: tuple[float, ...]
    stopped: bool
    seconds: float = 0.0
    windows: int = 0
    #: The window producers: how many threads, their busy seconds, and the
    #: seconds the steps waited for a batch.
    producers: int = 1
    made_seconds: float = 0.0
    waited_seconds: float = 0.0

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")


@dataclass
class Pace:
    """What a step needs to know of the run's clock: the budget, the step count so
    far, and the seconds rank 0 keeps for its last validation and the shutdown."""

    budget: Budget
    total_steps: int
    step: int = 0
    reserve: float = SHUTDOWN_S

    def agree(self, s: TrainSettings, device: torch.device) -> tuple[bool, float]:
        """Whether to stop now, and the learning-rate factor, the same on every rank
        (a collective under DDP: every rank calls it once per step)."""
        import torch.distributed as dist

        now = time.time()
        stop_at = self.budget.stop_at(self.reserve)
        fraction = self.step / max(self.total_steps, 1)
        if stop_at is not None:
            fraction = max(
                fraction, (now - self.budget.start) / max(stop_at - self.budget.start, 1)
            )
        mine = torch.tensor(
            [float(stop_at is not None and now > stop_at), lr_factor(s, self.step, fraction)],
            dtype=torch.float64,
            device=device,
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(mine, op=dist.ReduceOp.MAX)  # rank 0 holds the largest reserve
        return bool(mine[0]), float(mine[1])


def run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    settings: TrainSettings,
    pace: Pace,
    device: torch.device,
) -> EpochResult:
    """Optimizer steps on ``batches`` until they run out or the budget says stop.

    Parameters
    ----------
    model
        What the batches go through (DDP-wrapped under Ray Train); set to training mode.
    optimizer
        Steps the model's parameters (fp32 master weights); its learning rate is
        set each step from the schedule (:func:`lr_factor`).
    batches
        Images and targets (a :class:`~fcnrs.training.sampling.Prefetcher`).
    settings
        Precision, class weights and the schedule.
    pace
        The budget and the step count, advanced here.
    device
        Where the batches are moved.

    Returns
    -------
    EpochResult
        The losses of the steps taken, ``stopped`` when the budget cut the epoch
        short, and the seconds and windows of the steps.
    """
    model.train()
    base = base_lr(settings)
    weight = torch.tensor(settings.class_weights, device=device) if settings.class_weights else None
    bf16 = resolve_precision(settings.precision, device.type) == "bf16"
    losses: list[float] = []
    windows, started = 0, time.perf_counter()
    for x, y in batches:
        stop, factor = pace.agree(settings, device)
        if stop:
            return EpochResult(tuple(losses), True, time.perf_counter() - started, windows)
        for group in optimizer.param_groups:
            group["lr"] = base * factor
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x.to(device, non_blocking=True))
        loss = F.cross_entropy(
            logits.float(), y.to(device), weight=weight, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        windows += len(x)
        pace.step += 1
    return EpochResult(tuple(losses), False, time.perf_counter() - started, windows)


def gather_ranks(result: EpochResult, device: torch.device) -> list[dict[str, float]]:
    """Every rank's loss and step count of the epoch (a collective: every rank calls
    it), so rank 0's record shows what each worker did."""
    import torch.distributed as dist

    mine = torch.tensor([result.loss, len(result.losses)], dtype=torch.float64, device=device)
    if not (dist.is_available() and dist.is_initialized()):
        gathered = [mine]
    else:
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
    return [{"loss": float(t[0]), "steps": int(t[1])} for t in gathered]


def epoch_metrics(
    epoch: int, result: EpochResult, ranks: list[dict[str, float]], *, resumed_from: int
) -> dict[str, Any]:
    """What every rank reports about its epoch (rank 0 adds validation and overhead)."""
    return {
        "epoch": epoch,
        "loss": result.loss,
        "steps": len(result.losses),
        "windows": result.windows,
        "train_seconds": result.seconds,
        "steps_per_s": len(result.losses) / result.seconds if result.seconds else 0.0,
        "windows_per_s": result.windows / result.seconds if result.seconds else 0.0,
        # What the producers could make with all their threads busy, against
        # what the model took: a GPU starved of windows shows as a wait share.
        "producers": result.producers,
        "producer_windows_per_s": (
            result.windows * result.producers / result.made_seconds if result.made_seconds else 0.0
        ),
        "input_wait_share": result.waited_seconds / result.seconds if result.seconds else 0.0,
        "time_limit_reached": result.stopped,
        "threads": torch.get_num_threads(),
        "resumed_from_epoch": resumed_from,
        "world_size": len(ranks),
    }


# -- the end of an epoch ---------------------------------------------------------------


def end_epoch(
    worker: Worker,
    progress: Progress,
    metrics: dict[str, Any],
    report: Report,
    *,
    validate_now: bool,
    last: bool,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rank 0's end of an epoch: validate (when asked), record, export, checkpoint.

    Parameters
    ----------
    worker
        Rank 0's model (``worker.net`` is validated, saved and exported) and optimizer.
    progress
        Updated in place: the epoch becomes the last finished one, its record is
        appended to the history, ``best`` rises when the val mean IoU beats it
        (strictly), and ``overhead_s`` grows by this end's seconds.
    metrics
        The epoch's metrics (:func:`epoch_metrics`).
    report
        Called with the metrics (and scores), and a folder holding the training
        state (:func:`save_state`), which is deleted when ``report`` returns.
    validate_now
        Score the val scenes; a better mean IoU exports the model.
    last
        The run's last epoch: without val scenes, the model is exported now.
    record
        More fields for the history record only (not reported).

    Returns
    -------
    dict
        The metrics as reported.
    """
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if validate_now:
        val = validate(worker.net, worker.settings, worker.device)
        metrics = {**metrics, **val_metrics(val)}
        extra["confusion"] = val["confusion"]
        if val["mean_iou"] > progress.best:
            progress.best = val["mean_iou"]
            export_best(worker.net, worker.settings, metrics["epoch"], val)
    elif last and not worker.settings.val_scenes:
        export_best(worker.net, worker.settings, metrics["epoch"], None)
    metrics["validated"] = validate_now
    metrics["val_seconds"] = time.perf_counter() - started
    progress.epoch = metrics["epoch"]
    progress.steps += metrics["steps"]
    progress.history.append({**metrics, **(record or {}), **extra})
    with tempfile.TemporaryDirectory() as d:
        saving = time.perf_counter()
        save_state(d, worker.net, worker.optimizer, progress)
        report(metrics, Path(d))  # Ray Train copies the folder before this returns
        # Known once saved: the saved state's last record lacks it.
        metrics["checkpoint_seconds"] = time.perf_counter() - saving
    progress.history[-1]["checkpoint_seconds"] = metrics["checkpoint_seconds"]
    progress.overhead_s += time.perf_counter() - started
    return metrics


def export_best(
    model: torch.nn.Module, s: TrainSettings, epoch: int, val: dict[str, Any] | None
) -> None:
    """Write ``<out>/best`` (a checkpoint the nightly job takes as it is), then its
    report, each whole (``<out>`` local or ``s3://``); ``val`` None: the run has
    no val scenes and this is its last model."""
    out = Location(s.out)
    with (out / "best").staged() as staged:
        save_checkpoint(
            staged,
            model,
            classes=s.classes,
            bands=s.bands,
            mean=s.mean,
            std=s.std,
            colors=s.colors,
            provenance={
                "trained_by": s.trained_by,
                "epoch": epoch,
                "val_mean_iou": val["mean_iou"] if val else None,
                "init": s.init or s.init_vgg16 or "scratch",
                "scenes": [asdict(sc) for sc in s.scenes],
            },
        )
    report = {"epoch": epoch, **val} if val else {"epoch": epoch, "validated": False}
    (out / "best_report.json").write_bytes(json.dumps(report, indent=2).encode("utf-8"))


# -- the epochs, for either runner ------------------------------------------------------


@dataclass
class Worker:
    """One worker's share of a run: ``model`` is what steps go through (DDP-wrapped
    under Ray Train), ``net`` the bare model that is validated, saved and exported."""

    settings: TrainSettings
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    rank: int = 0


def due_for_validation(s: TrainSettings, progress: Progress, budget: Budget, last: bool) -> bool:
    """Validate at the last epoch, and before it only while validation and checkpoints
    stay within ``s.val_share`` of the time so far (the first time, to measure them)."""
    if not s.val_scenes:
        return False
    if last:
        return True
    cost = last_val_seconds(progress)
    return progress.overhead_s + cost <= s.val_share * (time.time() - budget.start)


def train_epochs(
    worker: Worker,
    progress: Progress,
    report: Report,
    *,
    budget: Budget,
    resumed_from: int = -1,
    shutdown_s: float = SHUTDOWN_S,
) -> Progress:
    """Epochs ``progress.epoch + 1 ..`` up to the settings' count or the budget.

    Every rank reports each epoch; rank 0 validates when due
    (:func:`due_for_validation`) and attaches the checkpoint (:func:`end_epoch`).
    ``resumed_from`` is the checkpoint's epoch when the run restarted from one (-1
    otherwise), reported on the first epoch. ``shutdown_s`` is kept free at the
    end of a time-limited run (Ray Train's and Ray's shutdown; 1 s in process).
    """
    s = worker.settings
    first = progress.epoch + 1
    pace = Pace(budget, total_steps=s.epochs * s.steps_per_epoch, step=progress.steps)
    with WindowSampler(s, rank=worker.rank, epoch=first) as sampler:
        for epoch in range(first, s.epochs):
            sampler.set_epoch(epoch)
            # Rank 0 keeps time for the last validation and the halo's measurement.
            val_s = last_val_seconds(progress)
            keep = 1.5 * val_s + measure_reserve(s, val_s)
            pace.reserve = shutdown_s + keep * (worker.rank == 0)
            producers = max(1, torch.get_num_threads())  # the worker's CPUs
            with Prefetcher(sampler, s.steps_per_epoch, producers=producers) as batches:
                result = run_epoch(
                    worker.model,
                    worker.optimizer,
                    batches,
                    settings=s,
                    pace=pace,
                    device=worker.device,
                )
            result = replace(
                result,
                producers=batches.producers,
                made_seconds=batches.made_seconds,
                waited_seconds=batches.waited_seconds,
            )
            ranks = gather_ranks(result, worker.device)
            # The checkpoint's epoch on the first epoch after a restart, else -1.
            resumed = resumed_from if epoch == first else -1
            metrics = epoch_metrics(epoch, result, ranks, resumed_from=resumed)
            last = result.stopped or epoch == s.epochs - 1
            if worker.rank == 0:
                end_epoch(
                    worker,
                    progress,
                    metrics,
                    report,
                    validate_now=due_for_validation(s, progress, budget, last),
                    last=last,
                    record={"ranks": ranks, "lr": worker.optimizer.param_groups[0]["lr"]},
                )
            else:
                progress.steps += metrics["steps"]
                report(metrics, None)
            if result.stopped:
                break
    return progress


def last_val_seconds(progress: Progress) -> float:
    """The latest validation's seconds, checkpoint included (0 before the first)."""
    timed = [
        h["val_seconds"] + h.get("checkpoint_seconds", 0.0)
        for h in progress.history
        if h.get("validated")
    ]
    return timed[-1] if timed else 0.0


# -- the runners ---------------------------------------------------------------------


def _ray_report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    import ray.train
    from ray.train import Checkpoint

    checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (see the module docstring).

    ``config`` holds ``settings`` (a :class:`TrainSettings`) and ``budget`` (a
    :class:`Budget`), the same for every worker.
    """
    import ray.train
    from ray.train.torch import get_device, prepare_model

    s: TrainSettings = config["settings"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            model, optimizer, progress = initial_state(s, d)
    else:
        model, optimizer, progress = initial_state(s)
    ddp = prepare_model(model)
    worker = Worker(
        settings=s,
        model=ddp,
        net=ddp.module if hasattr(ddp, "module") else ddp,
        optimizer=optimizer,
        device=get_device(),
        rank=ray.train.get_context().get_world_rank(),
    )
    resumed_from = progress.epoch if checkpoint else -1
    train_epochs(worker, progress, _ray_report, budget=config["budget"], resumed_from=resumed_from)


def _log_report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    log.info(
        "epoch %d: %d steps, loss %.4f, val mean IoU %.4f; windows/s: model %.1f, "
        "%d producers could make %.1f (waited %.0f%% of the time)",
        metrics["epoch"],
        metrics["steps"],
        metrics["loss"],
        metrics.get("val_mean_iou", float("nan")),
        metrics["windows_per_s"],
        metrics["producers"],
        metrics["producer_windows_per_s"],
        100 * metrics["input_wait_share"],
    )


def train_in_process(
    settings: TrainSettings,
    *,
    device: str | torch.device = "cpu",
    report: Report | None = None,
) -> Progress:
    """Train in this process, as rank 0 of one, without Ray Train.

    The sampler, epochs, validation and best export are
    :func:`train_loop_per_worker`'s; only the start-up differs (no worker group,
    no DDP, no resume).

    Parameters
    ----------
    settings
        The run; its time limit counts from this call.
    device
        Where the model trains.
    report
        Receives each epoch's metrics and the folder of its training state (a
        temporary folder: copy what should be kept); by default a line is logged.

    Returns
    -------
    Progress
        Every epoch's record and the best val mean IoU; the best model is at
        ``<out>/best`` with the halo it needs recorded
        (:func:`~fcnrs.training.context.record_best_halo`), its scores at
        ``<out>/best_report.json``.
    """
    device = torch.device(device)
    budget = Budget.minutes(settings.time_limit_minutes)
    model, optimizer, progress = initial_state(settings)
    model.to(device)
    worker = Worker(settings, model=model, net=model, optimizer=optimizer, device=device)
    progress = train_epochs(worker, progress, report or _log_report, budget=budget, shutdown_s=1.0)
    record_best_halo(settings)
    return progress
