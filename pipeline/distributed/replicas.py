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
