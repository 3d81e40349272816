"""The engines a run's batches execute on, what both promise the driver, and how
the run picks and builds one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..batches import BatchRequest, WriteSummary
from .local import LocalEngine, available_cpus
from .ray_engine import RayEngine
from .replicas import ReplicaPlan, plan_replicas
from .retries import Failure, WorkItem
from .run import RunState

log = logging.getLogger(__name__)

#: Where a run's batches execute: a Ray cluster, or this machine's worker process.
EngineName = Literal["ray", "local"]


class Engine(Protocol):
    """What the driver needs of an engine (:class:`~.local.LocalEngine`,
    :class:`~.ray_engine.RayEngine`): room for more work, submitting it, what
    landed (a write summary, or the failure of an attempt), and whether it can
    go on at all."""

    name: str
    #: Why the engine cannot run anything (its replicas cannot start), or None.
    broken: str | None

    def room(self) -> int:
        """How many more items it takes now (0: wait for some to land)."""
        ...

    def submit(self, item: WorkItem, request: BatchRequest) -> None:
        """Start an item: read, predict and write one batch, as ``request`` says."""
        ...

    def poll(self, timeout: float) -> list[tuple[WorkItem, WriteSummary | Failure]]:
        """What landed within ``timeout`` seconds: each item with its write
        summary, or the failure of that attempt."""
        ...

    def batch_size(self, window: tuple[int, int]) -> int | None:
        """Tiles per batch the replicas' device holds for windows of this shape
        (None: no replica is up yet to say)."""
        ...

    def forget(self, scene_id: int) -> None:
        """A scene closed: drop what the engine keeps for it (open readers, suspects)."""
        ...

    def close(self) -> None:
        """Stop every process and thread the engine started."""
        ...


def start_ray() -> None:
    """Join the cluster ``RAY_ADDRESS`` names, else start a Ray of this run's own."""

    import ray

    if not ray.is_initialized():
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", log_to_driver=True)


def cluster_resources() -> dict[str, float]:
    """Ray's resources over the whole cluster (``CPU``, ``GPU``, ...)."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return resources


def node_resources() -> list[dict[str, float]]:
    """Each live node's resources, for planning replicas per node."""
    import ray

    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return [node["Resources"] for node in nodes if node.get("Alive")]


@dataclass(frozen=True)
class EngineOptions:
    """How a run's engine is built: which, on what device, and its replicas."""

    name: EngineName
    device: str
    replicas: int | None = None
    threads: int | None = None
    #: A picklable function the local engine's worker runs first (tests' faults).
    worker_setup: Callable[[], None] | None = None


def make_engine(run: RunState, options: EngineOptions) -> Engine:
    """The run's engine, its replicas starting (logged with their size)."""
    if options.name == "ray":
        plan = plan_replicas(node_resources(), replicas=options.replicas, threads=options.threads)
        engine: Engine = RayEngine(plan, predict_args(run, plan))
    else:
        cpus = available_cpus()
        threads = options.threads or cpus
        plan = ReplicaPlan(1, num_gpus=0, num_cpus=cpus, threads=threads, device=options.device)
        engine = LocalEngine(predict_args(run, plan), setup=options.worker_setup)
    run.device, run.threads = plan.device, plan.threads
    log.info(
        "%d replica(s) (%s, %s, %d thread(s) each; %s engine)",
        plan.replicas,
        plan.device,
        run.settings.precision,
        plan.threads,
        options.name,
    )
    return engine


def predict_args(run: RunState, plan: ReplicaPlan) -> dict[str, Any]:
    """What every replica is built from, on either engine."""
    return {
        "model": run.model,
        "device": plan.device,
        "precision": run.settings.precision,
        "probabilities": run.settings.probabilities,
        "tta": run.settings.tta,
        "threads": plan.threads,
    }
