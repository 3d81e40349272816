"""The training loop: model and optimizer, epochs, validation, checkpoints.

Two runners share every step below (:class:`~fcnrs.training.sampling.WindowSampler`,
:func:`run_epoch`, :func:`validate_and_checkpoint`, :func:`export_best`):

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
``<out>/best`` with :func:`fcnrs.fcn_model.save_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fcnrs.fcn_model import build_model, load_checkpoint, load_vgg16_weights, save_checkpoint

from .sampling import IGNORE_INDEX, WindowSampler
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
    if s.init_vgg16:
        load_vgg16_weights(model, s.init_vgg16)
    if s.init:
        parent, meta = load_checkpoint(s.init)
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


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """Adam (lr 1e-3) by default; ``sgd`` is the paper's (momentum 0.99, lr 1e-4)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr or 1e-4, momentum=0.99, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=s.lr or 1e-3)


@dataclass
class Progress:
    """Where a run stands: the last finished epoch (-1: none), the best val mean
    IoU so far and every epoch's record (rank 0's)."""

    epoch: int = -1
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


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
        },
        path,
    )
    return path


def load_state(directory: str | Path) -> TrainState:
    """Read what :func:`save_state` wrote (tensors only, no pickled code)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    progress = Progress(state["epoch"], state["best"], json.loads(state["history"]))
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


# -- one epoch -----------------------------------------------------------------------


@dataclass(frozen=True)
class EpochResult:
    """Per-step losses of an epoch, and whether the deadline cut it short."""

    losses: tuple[float, ...]
    stopped: bool

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")


def run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: WindowSampler,
    *,
    steps: int,
    device: torch.device,
    deadline: float | None = None,
) -> EpochResult:
    """Up to ``steps`` optimizer steps on the sampler's batches.

    Parameters
    ----------
    model
        What the batches go through (DDP-wrapped under Ray Train); set to training mode.
    optimizer
        Steps the model's parameters.
    sampler
        Gives the batches (its epoch already set).
    steps
        Steps to take.
    device
        Where the batches are moved.
    deadline
        ``time.time()`` past which no further step starts (None: no limit).

    Returns
    -------
    EpochResult
        The losses of the steps taken, and ``stopped`` when the deadline cut the
        epoch short.
    """
    model.train()
    losses: list[float] = []
    for _step in range(steps):
        if deadline and time.time() > deadline:
            return EpochResult(tuple(losses), stopped=True)
        x, y = sampler.batch()
        loss = F.cross_entropy(model(x.to(device)), y.to(device), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return EpochResult(tuple(losses), stopped=False)


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
    """What every rank reports about its epoch (rank 0 adds the val scores)."""
    return {
        "epoch": epoch,
        "loss": result.loss,
        "steps": len(result.losses),
        "time_limit_reached": result.stopped,
        "resumed_from_epoch": resumed_from,
        "world_size": len(ranks),
    }


# -- the end of an epoch ---------------------------------------------------------------


def validate_and_checkpoint(
    worker: Worker,
    progress: Progress,
    metrics: dict[str, Any],
    report: Report,
    *,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rank 0's end of an epoch: validate, record, export if best, checkpoint.

    Parameters
    ----------
    worker
        Rank 0's model (``worker.net`` is validated, saved and exported) and optimizer.
    progress
        Updated in place: the epoch becomes the last finished one, its record is
        appended to the history, and ``best`` rises when the val mean IoU beats it
        (strictly), in which case the model is exported (:func:`export_best`).
    metrics
        The epoch's metrics (:func:`epoch_metrics`).
    report
        Called with the metrics and scores, and a folder holding the training state
        (:func:`save_state`), which is deleted when ``report`` returns.
    record
        More fields for the history record only (not reported).

    Returns
    -------
    dict
        The metrics with the val scores, as reported.
    """
    val = validate(worker.net, worker.settings, worker.device)
    metrics = {**metrics, **val_metrics(val)}
    progress.history.append({**metrics, **(record or {}), "confusion": val["confusion"]})
    progress.epoch = metrics["epoch"]
    if val["mean_iou"] > progress.best:
        progress.best = val["mean_iou"]
        export_best(worker.net, worker.settings, metrics["epoch"], val)
    with tempfile.TemporaryDirectory() as d:
        save_state(d, worker.net, worker.optimizer, progress)
        report(metrics, Path(d))  # Ray Train copies the folder before this returns
    return metrics


def export_best(model: torch.nn.Module, s: TrainSettings, epoch: int, val: dict) -> None:
    """Write ``<out>/best`` (a checkpoint the nightly job takes as it is) and its report."""
    out = Path(s.out)
    save_checkpoint(
        out / "best",
        model,
        classes=s.classes,
        bands=s.bands,
        mean=s.mean,
        std=s.std,
        colors=s.colors,
        provenance={
            "trained_by": s.trained_by,
            "epoch": epoch,
            "val_mean_iou": val["mean_iou"],
            "init": s.init or s.init_vgg16 or "scratch",
            "scenes": [asdict(sc) for sc in s.scenes],
        },
    )
    (out / "best_report.json").write_text(json.dumps({"epoch": epoch, **val}, indent=2))


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


def train_epochs(
    worker: Worker,
    progress: Progress,
    report: Report,
    *,
    deadline: float | None,
    resumed_from: int = -1,
) -> Progress:
    """Epochs ``progress.epoch + 1 ..`` up to the settings' count or the deadline.

    Every rank reports each epoch; rank 0 validates and attaches the checkpoint
    (:func:`validate_and_checkpoint`). ``resumed_from`` is the checkpoint's epoch
    when the run restarted from one (-1 otherwise), reported on the first epoch.
    """
    s = worker.settings
    first = progress.epoch + 1
    with WindowSampler(s, rank=worker.rank, epoch=first) as sampler:
        for epoch in range(first, s.epochs):
            sampler.set_epoch(epoch)
            result = run_epoch(
                worker.model,
                worker.optimizer,
                sampler,
                steps=s.steps_per_epoch,
                device=worker.device,
                deadline=deadline,
            )
            ranks = gather_ranks(result, worker.device)
            # The checkpoint's epoch on the first epoch after a restart, else -1.
            resumed = resumed_from if epoch == first else -1
            metrics = epoch_metrics(epoch, result, ranks, resumed_from=resumed)
            if worker.rank == 0:
                validate_and_checkpoint(worker, progress, metrics, report, record={"ranks": ranks})
            else:
                report(metrics, None)
            if result.stopped:
                break
    return progress


# -- the runners ---------------------------------------------------------------------


def _ray_report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    import ray.train
    from ray.train import Checkpoint

    checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (see the module docstring).

    ``config`` holds ``settings`` (a :class:`TrainSettings`) and ``deadline``
    (seconds since the epoch, or None), the same for every worker.
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
    train_epochs(
        worker, progress, _ray_report, deadline=config["deadline"], resumed_from=resumed_from
    )


def _log_report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    log.info(
        "epoch %d: %d steps, loss %.4f, val mean IoU %.4f",
        metrics["epoch"],
        metrics["steps"],
        metrics["loss"],
        metrics.get("val_mean_iou", float("nan")),
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
        ``<out>/best``, its scores at ``<out>/best_report.json``.
    """
    device = torch.device(device)
    deadline = job_deadline(settings.time_limit_minutes)
    model, optimizer, progress = initial_state(settings)
    model.to(device)
    worker = Worker(settings, model=model, net=model, optimizer=optimizer, device=device)
    return train_epochs(worker, progress, report or _log_report, deadline=deadline)


def job_deadline(minutes: float | None) -> float | None:
    """The wall-clock time (``time.time()``) at which ``minutes`` from now end."""
    return time.time() + minutes * 60 if minutes else None
