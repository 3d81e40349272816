"""How many model replicas a Ray run starts, and what each one reserves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaPlan:
    """How many model replicas run, and what each reserves."""

    replicas: int
    num_gpus: float
    num_cpus: float
    threads: int
    device: str


#: CPU that one read or write task reserves: GDAL decoding and zstd writes of a
#: batch take a fraction of a core next to the model's forward pass.
IO_TASK_CPUS = 0.25


def plan_replicas(
    resources: Mapping[str, float] | Sequence[Mapping[str, float]],
    *,
    replicas: int | None = None,
    threads: int | None = None,
) -> ReplicaPlan:
    """One replica per GPU; without GPUs, replicas of up to 8 CPU threads that use
    every core for compute.

    ``resources`` are the cluster's nodes (``ray.nodes()``' resources), or one
    node's. A replica never spans nodes, so replicas are sized to fit one: the
    largest node's share decides the size, and each node holds as many as fit.
    CPU replicas run as many threads as the cores they share, but reserve a
    little less (room for two read or write tasks of :data:`IO_TASK_CPUS` each
    per replica): reads and writes need a fraction of a core, and keeping a whole
    core back for them left half of a 2-core laptop idle. GPU replicas reserve at
    most one CPU each and never more than half of a node's, so the read and write
    tasks that feed them always find room.
    """
    nodes = [resources] if isinstance(resources, Mapping) else list(resources)
    # Nodes without a whole CPU (a head started with --num-cpus=0) host no replica.
    nodes = [n for n in nodes if n.get("CPU", 0) >= 1] or [{"CPU": 1}]
    cpus = [int(n["CPU"]) for n in nodes]
    gpus = [int(n.get("GPU", 0)) for n in nodes]
    if sum(gpus):
        n = replicas or sum(gpus)
        per = min(min(1.0, c / (2 * g)) for c, g in zip(cpus, gpus, strict=True) if g)
        return ReplicaPlan(n, num_gpus=1, num_cpus=per, threads=threads or 2, device="cuda")
    if replicas:
        share = min(sum(cpus) / replicas, max(cpus))
        n = replicas
    else:
        share = max(c / max(1, c // 8) for c in cpus)
        n = max(1, sum(int(c // share) for c in cpus))
    per = max(share - 2 * IO_TASK_CPUS, IO_TASK_CPUS)
    return ReplicaPlan(
        n, num_gpus=0, num_cpus=per, threads=threads or max(1, int(share)), device="cpu"
    )
