"""The two runners of fine-tuning, sharing every epoch (:func:`train_epochs`):

- :func:`train_loop_per_worker` is the module-level loop a Ray Train
  ``TorchTrainer`` runs on each worker: the network is wrapped for DDP by
  ``prepare_model`` (gloo on CPU, NCCL on GPUs), every rank reads its own random
  windows and calls ``ray.train.report`` each epoch, rank 0 validates and
  attaches the checkpoint, and a restarted worker group resumes from
  ``ray.train.get_checkpoint()``;
- :func:`train_in_process` runs the same epochs in the calling process, with no
  Ray Train start-up (the demo).

Rank 0 validates on whole val scenes through the segmentation job's tiled path
at the validation tiling (:mod:`fcnrs.training.validation`) and exports the best
network by mean IoU to ``<out>/best`` (:mod:`fcnrs.training.epoch_end`). After
the last epoch the halo the best network needs is measured and recorded in it
(:mod:`fcnrs.training.context`): here by :func:`train_in_process`, by the job's
driver (:func:`fcnrs.training.trainer.finetune`) under Ray Train.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from fcnrs.fcn_model import FCN

from .context import measure_reserve, record_best_halo
from .epoch_end import Report, due_for_validation, end_epoch, last_val_seconds
from .prefetch import Prefetcher
from .settings import TrainSettings
from .state import TrainingState, Worker, initial_state
from .steps import SHUTDOWN_S, Budget, EpochResult, Pace, epoch_metrics, gather_ranks, run_epoch
from .windows import WindowSampler

log = logging.getLogger(__name__)


def train_epochs(
    worker: Worker,
    state: TrainingState,
    *,
    report: Report,
    budget: Budget,
    resumed_from: int = -1,
    shutdown_s: float = SHUTDOWN_S,
) -> TrainingState:
    """Epochs ``state.epoch + 1 ..`` up to the settings' count or the budget.

    Every rank reports each epoch; rank 0 validates when due
    (:func:`~fcnrs.training.epoch_end.due_for_validation`) and attaches the
    checkpoint (:func:`~fcnrs.training.epoch_end.end_epoch`).

    Parameters
    ----------
    worker, state
        This worker's network, optimizer, device and rank; where the run stands
        (updated in place and returned).
    report, budget
        Receives every epoch's metrics (and, on rank 0, its checkpoint folder);
        the job's wall-clock budget.
    resumed_from
        The checkpoint's epoch when the run restarted from one (-1 otherwise),
        reported on the first epoch.
    shutdown_s
        Kept free at the end of a time-limited run (Ray Train's and Ray's
        shutdown; 1 s in process).
    """
    s = worker.settings
    first = state.epoch + 1
    pace = Pace(budget, total_steps=s.epochs * s.steps_per_epoch, step=state.steps)
    with WindowSampler(s, rank=worker.rank, epoch=first) as sampler:
        for epoch in range(first, s.epochs):
            sampler.set_epoch(epoch)
            pace.reserve = reserve_s(worker, state, shutdown_s)
            result = prefetched_epoch(worker, sampler, pace)
            ranks = gather_ranks(result, worker.device)
            # The checkpoint's epoch on the first epoch after a restart, else -1.
            resumed = resumed_from if epoch == first else -1
            metrics = epoch_metrics(epoch, result, ranks, resumed_from=resumed)
            last = result.stopped or epoch == s.epochs - 1
            if worker.rank == 0:
                end_epoch(
                    worker,
                    state,
                    metrics=metrics,
                    report=report,
                    validate_now=due_for_validation(s, state, budget, last=last),
                    last=last,
                    record={"ranks": ranks, "lr": worker.optimizer.param_groups[0]["lr"]},
                )
            else:
                state.steps += metrics["steps"]
                report(metrics, None)
            if result.stopped:
                break
    return state


def reserve_s(worker: Worker, state: TrainingState, shutdown_s: float) -> float:
    """Seconds a time-limited run keeps at its end: the shutdown's, and on rank 0
    time for the last validation and the halo's measurement too."""
    val_s = last_val_seconds(state)
    keep = 1.5 * val_s + measure_reserve(worker.settings, val_s)
    return shutdown_s + keep * (worker.rank == 0)


def prefetched_epoch(worker: Worker, sampler: WindowSampler, pace: Pace) -> EpochResult:
    """One epoch's steps on batches made ahead by one producer per CPU of the
    worker, with the producers' pace in the result."""
    s = worker.settings
    producers = max(1, torch.get_num_threads())  # the worker's CPUs
    with Prefetcher(sampler, s.steps_per_epoch, producers=producers) as batches:
        result = run_epoch(
            worker.wrapped,
            worker.optimizer,
            batches,
            settings=s,
            pace=pace,
            device=worker.device,
        )
    return replace(
        result,
        producers=batches.producers,
        made_seconds=batches.made_seconds,
        waited_seconds=batches.waited_seconds,
    )


def _ray_report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    import ray.train
    from ray.train import Checkpoint

    checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (see the module docstring).

    ``config`` holds ``settings`` (a :class:`~fcnrs.training.settings.TrainSettings`)
    and ``budget`` (a :class:`~fcnrs.training.steps.Budget`), the same for every
    worker.
    """
    import ray.train
    from ray.train.torch import get_device, prepare_model

    s: TrainSettings = config["settings"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            network, optimizer, state = initial_state(s, d)
    else:
        network, optimizer, state = initial_state(s)
    wrapped = prepare_model(network)
    worker = Worker(
        settings=s,
        network=cast(FCN, wrapped.module if hasattr(wrapped, "module") else wrapped),
        wrapped=wrapped,
        optimizer=optimizer,
        device=get_device(),
        rank=ray.train.get_context().get_world_rank(),
    )
    resumed_from = state.epoch if checkpoint else -1
    train_epochs(
        worker, state, report=_ray_report, budget=config["budget"], resumed_from=resumed_from
    )


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
) -> TrainingState:
    """Train in this process, as rank 0 of one, without Ray Train.

    The sampler, epochs, validation and best export are
    :func:`train_loop_per_worker`'s; only the start-up differs (no worker group,
    no DDP, no resume).

    Parameters
    ----------
    settings
        The run; its time limit counts from this call.
    device
        Where the network trains.
    report
        Receives each epoch's metrics and the folder of its training state (a
        temporary folder: copy what should be kept); by default a line is logged.

    Returns
    -------
    TrainingState
        Every epoch's record and the best val mean IoU; the best network is at
        ``<out>/best`` with the halo it needs recorded
        (:func:`~fcnrs.training.context.record_best_halo`), its scores at
        ``<out>/best_report.json``.
    """
    device = torch.device(device)
    budget = Budget.minutes(settings.time_limit_minutes)
    network, optimizer, state = initial_state(settings)
    network.to(device)
    worker = Worker(
        settings=settings, network=network, wrapped=network, optimizer=optimizer, device=device
    )
    state = train_epochs(worker, state, report=report or _log_report, budget=budget, shutdown_s=1.0)
    record_best_halo(settings)
    return state
