"""Many scenes on a Ray cluster or in one process: replica planning, the three
stages, the engines, the driver, progress. The library call is :func:`run_scenes`.

Names load on first use (PEP 562), so a Ray task that imports
:mod:`.stages` to read or write loads neither the driver nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import RunReport, SceneJob, request_stop, run_scenes
    from .progress import Progress, print_summary
    from .replicas import ReplicaPlan, plan_replicas
    from .stages import PredictStage, read_stage, write_stage

_WHERE = {
    "PredictStage": "stages",
    "Progress": "progress",
    "ReplicaPlan": "replicas",
    "RunReport": "driver",
    "SceneJob": "driver",
    "plan_replicas": "replicas",
    "print_summary": "progress",
    "read_stage": "stages",
    "request_stop": "driver",
    "run_scenes": "driver",
    "write_stage": "stages",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
