"""Rank 0's end of an epoch: validation when due, the epoch's record, the best
export and the checkpoint.

Validation scores the val scenes through the segmentation job's tiled path, at
the validation tiling (:mod:`fcnrs.training.validation`); a better val mean IoU
exports the network to ``<out>/best`` with
:func:`fcnrs.fcn_model.save_checkpoint`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fcnrs.fcn_model import FCN, save_checkpoint
from fcnrs.pipeline.storage import Location

from .settings import TrainSettings
from .state import TrainingState, Worker, save_state
from .steps import Budget
from .validation import val_metrics, validate

#: ``report(metrics, checkpoint_dir)``: rank 0 passes a folder holding the state,
#: other ranks None. Under Ray Train it is ``ray.train.report``, the folder its checkpoint.
Report = Callable[[dict[str, Any], Path | None], None]


def end_epoch(
    worker: Worker,
    state: TrainingState,
    *,
    metrics: dict[str, Any],
    report: Report,
    validate_now: bool,
    last: bool,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rank 0's end of an epoch: validate (when asked), record, export, checkpoint.

    Parameters
    ----------
    worker
        Rank 0's network (validated, saved and exported) and optimizer.
    state
        Updated in place: the epoch becomes the last finished one, its record is
        appended to the history, ``best`` rises when the val mean IoU beats it
        (strictly), and ``overhead_s`` grows by this end's seconds.
    metrics
        The epoch's metrics (:func:`~fcnrs.training.steps.epoch_metrics`).
    report
        Called with the metrics (and scores), and a folder holding the training
        state (:func:`~fcnrs.training.state.save_state`), which is deleted when
        ``report`` returns.
    validate_now, last
        Score the val scenes (a better mean IoU exports the network); the run's
        last epoch (without val scenes, the network is exported now).
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
        val = score_and_export(worker, state, epoch=metrics["epoch"])
        metrics = {**metrics, **val_metrics(val)}
        extra["confusion"] = val["confusion"]
    elif last and not worker.settings.val_scenes:
        export_best(worker.network, worker.settings, epoch=metrics["epoch"], val=None)
    metrics["validated"] = validate_now
    metrics["val_seconds"] = time.perf_counter() - started
    state.epoch = metrics["epoch"]
    state.steps += metrics["steps"]
    state.history.append({**metrics, **(record or {}), **extra})
    with tempfile.TemporaryDirectory() as d:
        saving = time.perf_counter()
        save_state(d, network=worker.network, optimizer=worker.optimizer, state=state)
        report(metrics, Path(d))  # Ray Train copies the folder before this returns
        # Known once saved: the saved state's last record lacks it.
        metrics["checkpoint_seconds"] = time.perf_counter() - saving
    state.history[-1]["checkpoint_seconds"] = metrics["checkpoint_seconds"]
    state.overhead_s += time.perf_counter() - started
    return metrics


def score_and_export(worker: Worker, state: TrainingState, *, epoch: int) -> dict[str, Any]:
    """Validate ``worker.network``; when its val mean IoU beats ``state.best``
    (strictly), raise the best and export the network. Returns the scores
    (:func:`~fcnrs.training.validation.validate`'s)."""
    val = validate(worker.network, worker.settings, device=worker.device)
    if val["mean_iou"] > state.best:
        state.best = val["mean_iou"]
        export_best(worker.network, worker.settings, epoch=epoch, val=val)
    return val


def export_best(
    network: FCN,
    settings: TrainSettings,
    *,
    epoch: int,
    val: dict[str, Any] | None,
) -> None:
    """Write ``<out>/best`` (a checkpoint the segmentation job takes as it is), then
    its report, each whole (``<out>`` local or ``s3://``).

    Parameters
    ----------
    network
        The bare network (not DDP-wrapped).
    settings
        The run: ``out``, the classes, bands and normalisation saved with it.
    epoch
        The epoch it finished, recorded in its provenance and report.
    val
        Its :func:`~fcnrs.training.validation.validate` result; None: the run has
        no val scenes and this is its last network.

    """
    s = settings
    out = Location(s.out)
    with (out / "best").staged() as staged:
        save_checkpoint(
            staged,
            network,
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


def due_for_validation(
    settings: TrainSettings, state: TrainingState, budget: Budget, *, last: bool
) -> bool:
    """Validate at the last epoch, and before it only while validation and checkpoints
    stay within ``settings.val_share`` of the time so far (the first time, to
    measure them)."""
    if not settings.val_scenes:
        return False
    if last:
        return True
    cost = last_val_seconds(state)
    return state.overhead_s + cost <= settings.val_share * (time.time() - budget.start)


def last_val_seconds(state: TrainingState) -> float:
    """The latest validation's seconds, checkpoint included (0 before the first)."""
    timed = [
        h["val_seconds"] + h.get("checkpoint_seconds", 0.0)
        for h in state.history
        if h.get("validated")
    ]
    return timed[-1] if timed else 0.0
