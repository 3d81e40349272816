"""Test-only fault injection: a poison tile that fails a stage, or kills its process.

A scene whose file name holds a poison word (see :func:`install`) has one poison
tile, the one whose core starts at row 64, column 64 (an interior tile
with 64-pixel cores, batched with others of its shape). Faults wrap the stage
functions themselves (inside their error handling, as a real fault would be):

- ``raise``: the stage raises an ``OSError`` (a disk-full write, a failed read,
  a model error);
- ``die``: the stage's process is killed with SIGKILL (a segfaulting GDAL driver,
  a CUDA fault, the kernel's OOM killer);
- ``memory``: the stage raises ``MemoryError`` while the poison tile shares its
  batch with others (a batch too big for the replica), and works alone.

In this process, call :func:`install`. In Ray workers, pass
``runtime_env={"worker_process_setup_hook": "tests.faults.install_from_env",
"env_vars": {FAULTS_ENV: "stage:how:word,..."}}`` to ``ray.init``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from fcnrs.pipeline.distributed import stages
from fcnrs.pipeline.distributed.retries import guarded

FAULTS_ENV = "FCNRS_TEST_FAULTS"


def poisoned(row: dict[str, Any], word: str) -> bool:
    name = Path(str(row.get("scene") or row["output"])).name
    tiles = stages.decode_tiles(row["tiles"])
    return word in name and any((t.core.row, t.core.col) == (64, 64) for t in tiles)


def _faulty(fn, stage: str, how: str, word: str):
    def call(*args):
        row = args[-1]
        if poisoned(row, word):
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "raise":
                raise OSError(28, f"injected {stage} fault", "poison")
            if how == "memory" and len(row["tiles"]) > 1:
                raise MemoryError(f"injected: a batch of {len(row['tiles'])} tiles is too big")
        return fn(*args)

    return call


def install(stage: str, how: str, word: str = "poison", patch=setattr) -> None:
    """Make ``stage`` (read, predict or write) fail as ``how`` on poison tiles;
    ``patch`` is ``setattr`` or pytest's ``monkeypatch.setattr`` (undone after).
    ``install("replica", "raise")`` makes every model replica fail to start."""
    if stage == "replica":

        def broken(self, *args, **kwargs):
            raise RuntimeError("injected: the model cannot be loaded on this node")

        patch(stages.PredictStage, "__init__", broken)
    elif stage == "predict":
        inner = stages.PredictStage.__call__.__wrapped__
        wrapped = guarded("predict")(_faulty(inner, stage, how, word))
        patch(stages.PredictStage, "__call__", wrapped)
        patch(stages.PredictStage, "predict", wrapped)
    else:
        name = f"{stage}_stage"
        inner = getattr(stages, name).__wrapped__
        patch(stages, name, guarded(stage)(_faulty(inner, stage, how, word)))


def install_from_env() -> None:
    for spec in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        install(*spec.split(":"))
