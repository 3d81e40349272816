"""Test-only fault injection: a poison tile that fails a stage, or kills its process.

A poison tile is the interior tile whose core starts at row 64, column 64
(64-pixel cores, batched with others of its shape). The read and write stages
see which scene and tiles a batch is (a :class:`BatchRequest`): there the
poison tile is that tile of a scene whose file name holds the poison word. The
model only sees pixels: there a tile is poison when its core holds
:data:`POISON_VALUE`, which :func:`plant` writes into a scene (a block whose
pixels crash the model, as a real one can). Faults wrap the stage functions
themselves (inside their error handling, as a real fault would be):

- ``raise``: the stage raises an ``OSError`` (a disk-full write, a failed read,
  a model error);
- ``die``: the stage's process is killed with SIGKILL (a segfaulting GDAL driver,
  a CUDA fault, the kernel's OOM killer);
- ``memory``: the stage raises ``MemoryError`` while the poison tile shares its
  batch with others (a batch too big for the replica), and works alone;
- ``flaky``: the stage raises an ``OSError`` the first time this process meets
  the poison tile, and works after (a transient fault);
- ``hang``: the stage sleeps for a minute on the poison tile (a run killed while
  the batch is in flight);
- ``slow``: every call of the stage takes 20 ms longer (reads slower than the
  model).

In this process, call :func:`install`. In Ray workers, pass
``runtime_env={"worker_process_setup_hook": "tests.faults.install_from_env",
"env_vars": {FAULTS_ENV: "stage:how:word,..."}}`` to ``ray.init``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from fcnrs.pipeline.batches import BatchRequest, PixelBatch
from fcnrs.pipeline.distributed import stages
from fcnrs.pipeline.distributed.retries import guarded

FAULTS_ENV = "FCNRS_TEST_FAULTS"
#: A stored value the factory's uint16 scenes never hold (theirs are 1..10001).
POISON_VALUE = 60000
#: Inside the core of the tile at row 64, column 64 (64-px cores).
POISON_PIXEL = (96, 96)


def plant(scene: Path) -> Path:
    """Write :data:`POISON_VALUE` into every band at :data:`POISON_PIXEL`."""
    with rasterio.open(scene, "r+") as dst:
        r, c = POISON_PIXEL
        window = ((r, r + 1), (c, c + 1))
        dst.write(np.full((dst.count, 1, 1), POISON_VALUE, dst.dtypes[0]), window=window)
    return scene


def poisoned(value: Any, word: str) -> bool:
    if isinstance(value, PixelBatch):
        r, c, h, w = value.core
        return bool((value.image[:, r : r + h, c : c + w, 0] == POISON_VALUE).any())
    assert isinstance(value, BatchRequest)
    name = Path(value.scene).name
    return word in name and any((t.core.row, t.core.col) == (64, 64) for t in value.tiles)


_MET: set[tuple[str, str]] = set()  # (stage, poison word) met once, for "flaky"


def _faulty(fn, stage: str, how: str, word: str):
    def call(*args):
        # The read stage is called with the request, the model with the pixels,
        # the write stage with the request and the labels.
        value = args[-1] if stage != "write" else args[-2]
        if how == "slow":
            time.sleep(0.02)
        elif poisoned(value, word):
            if how == "flaky" and (stage, word) not in _MET:
                _MET.add((stage, word))
                raise OSError(5, f"injected transient {stage} fault", "poison")
            if how == "hang":
                time.sleep(60)
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "raise":
                raise OSError(28, f"injected {stage} fault", "poison")
            if how == "memory" and len(getattr(value, "image", getattr(value, "tiles", ()))) > 1:
                raise MemoryError("injected: a batch with the poison tile is too big")
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
        # The replica's first step with the pixels, on either engine.
        inner = stages.PredictStage.prepare.__wrapped__
        patch(stages.PredictStage, "prepare", guarded("predict")(_faulty(inner, stage, how, word)))
    else:
        name = f"{stage}_stage"
        inner = getattr(stages, name).__wrapped__
        patch(stages, name, guarded(stage)(_faulty(inner, stage, how, word)))


def install_from_env() -> None:
    for spec in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        install(*spec.split(":"))
