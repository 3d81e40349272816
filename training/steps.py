"""One epoch of optimizer steps, paced by the run's wall-clock budget and the
learning-rate schedule, and what every rank reports about it."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fcnrs.pipeline.inference import resolve_precision

from .settings import TrainSettings
from .state import base_lr
from .windows import IGNORE_INDEX

#: Seconds a time-limited run keeps at its end for the last report, the export and
#: the shutdown of the worker group and of Ray (7-15 s measured here; see the README).
SHUTDOWN_S = 20.0

#: The ``wsd`` schedule's decay: the last share of the run, linearly to zero.
DECAY_SHARE = 0.3


@dataclass(frozen=True)
class Budget:
    """The job's wall-clock budget: ``start`` is when the job began (``time.time()``,
    process start-up included), ``deadline`` when it must have ended (None: no limit)."""

    start: float
    deadline: float | None = None

    @classmethod
    def minutes(cls, minutes: float | None, *, start: float | None = None) -> Budget:
        """A budget of ``minutes`` (None or 0: no limit) from ``start`` (default: now)."""
        start = time.time() if start is None else start
        return cls(start, start + 60 * minutes if minutes else None)

    def stop_at(self, reserve: float) -> float | None:
        """When training must stop to leave ``reserve`` seconds before the deadline."""
        return None if self.deadline is None else self.deadline - reserve


def lr_factor(settings: TrainSettings, step: int, fraction: float) -> float:
    """The learning rate's multiplier at ``step``, after a linear warm-up over
    ``settings.warmup_steps``.

    ``constant`` holds it; ``cosine`` decays it to zero as ``fraction`` (of the
    run: 0 to 1, the larger of the step and time fractions) runs out; ``wsd``
    (warm-up, stable, decay) holds it and decays it linearly to zero over the
    last :data:`DECAY_SHARE` of the run.
    """
    warm = min(1.0, (step + 1) / max(settings.warmup_steps, 1))
    fraction = min(max(fraction, 0.0), 1.0)
    if settings.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * fraction))
    if settings.schedule == "wsd":
        return warm * min(1.0, (1 - fraction) / DECAY_SHARE)
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

    def agree(self, settings: TrainSettings, device: torch.device) -> tuple[bool, float]:
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
            [
                float(stop_at is not None and now > stop_at),
                lr_factor(settings, self.step, fraction),
            ],
            dtype=torch.float64,
            device=device,
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(mine, op=dist.ReduceOp.MAX)  # rank 0 holds the largest reserve
        return bool(mine[0]), float(mine[1])


def run_epoch(
    network: torch.nn.Module,
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
    network
        What the batches go through (DDP-wrapped under Ray Train); set to training mode.
    optimizer
        Steps the network's parameters (fp32 master weights); its learning rate is
        set each step from the schedule (:func:`lr_factor`).
    batches
        Images and targets (a :class:`~fcnrs.training.prefetch.Prefetcher`).
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
    network.train()
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
            logits = network(x.to(device, non_blocking=True))
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
        # what the network took: a GPU starved of windows shows as a wait share.
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
