"""How many model replicas a Ray run starts, and what each one reserves."""

from __future__ import annotations

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
    resources: dict[str, float], *, replicas: int | None = None, threads: int | None = None
) -> ReplicaPlan:
    """One replica per GPU; without GPUs, replicas of up to 8 CPU threads that use
    every core for compute.

    CPU replicas run as many threads as the cores they share, but reserve a
    little less (room for two read or write tasks of :data:`IO_TASK_CPUS` each
    per replica): reads and writes need a fraction of a core, and keeping a whole
    core back for them left half of a 2-core laptop idle. GPU replicas reserve at
    most one CPU each and never more than half of them, so the read and write
    tasks that feed them always find room.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        n = replicas or gpus
        per = min(1.0, cpus / (2 * n))
        return ReplicaPlan(n, num_gpus=1, num_cpus=per, threads=threads or 2, device="cuda")
    n = replicas or max(1, cpus // 8)
    share = cpus / n
    per = max(share - 2 * IO_TASK_CPUS, IO_TASK_CPUS)
    return ReplicaPlan(
        n, num_gpus=0, num_cpus=per, threads=threads or max(1, int(share)), device="cpu"
    )
