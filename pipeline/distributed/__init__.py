"""Many scenes on a Ray cluster: replica planning, the three stages, the driver,
progress. The library call is :func:`run_scenes`."""

from .driver import RunReport, SceneJob, request_stop, run_scenes
from .progress import Progress, print_summary
from .replicas import ReplicaPlan, plan_replicas
from .stages import PredictStage, read_stage, write_stage

__all__ = [
    "PredictStage",
    "Progress",
    "ReplicaPlan",
    "RunReport",
    "SceneJob",
    "plan_replicas",
    "print_summary",
    "read_stage",
    "request_stop",
    "run_scenes",
    "write_stage",
]
