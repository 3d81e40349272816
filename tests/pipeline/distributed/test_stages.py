"""The three stages, called directly with no cluster."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from fcnrs.pipeline.batches import BatchRequest
from fcnrs.pipeline.distributed import PredictStage, read_stage, write_stage
from fcnrs.pipeline.distributed.retries import Failure, StageError, guarded
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import plan_batches


def _request(scene, plan, batch):
    return BatchRequest(
        scene=str(scene),
        version="1",
        output=str(plan.output),
        bands=tuple(plan.bands),
        tiles=tuple(batch),
        write_probabilities=False,
    )


def test_stages_chained_by_hand_write_the_batch_and_count_its_pixels(planned):
    scene, ckpt, _, plan, group = planned
    batch = next(b for b in plan_batches(plan.grid, 4) if (1, 2) in [t.index for t in b])
    assert len(batch) == 4
    request = _request(scene, plan, batch)
    pixels = read_stage(request)
    # Stored values: the scene's uint16, nothing normalised, every tile read.
    assert pixels.image.dtype == np.uint16 and pixels.image.shape == (4, 128, 128, 3)
    assert pixels.valid is None and pixels.nodata == (0.0, 0.0, 0.0)
    predict = PredictStage(ckpt, device="cpu", precision="fp32", probabilities=False, threads=1)
    labels = predict(pixels)
    # The all-nodata tile (1, 2) never goes to the model; its labels are nodata.
    assert labels.labels.shape == (4, 64, 64) and labels.predicted == 3
    assert (labels.labels[[t.index for t in batch].index((1, 2))] == NODATA).all()
    summary = write_stage(request, labels)
    assert summary.tiles == len(batch) and summary.predicted == len(batch) - 1
    assert summary.replica == predict.replica
    stored = zarr.open_group(str(group.staging), mode="r")["labels"]
    written = sum(int((stored[t.core.slices()] != NODATA).sum()) for t in batch)
    assert summary.valid_pixels == written > 0
    assert (stored[64:128, 128:192] == NODATA).all()
    assert group.done_tiles() == {t.index for t in batch}


def test_a_stage_error_names_the_stage_and_the_file_and_writes_nothing(planned, tmp_path):
    scene, _, _, plan, group = planned
    batch = plan_batches(plan.grid, 4)[0]
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene.read_bytes()[:3000])
    with pytest.raises(StageError) as caught:
        read_stage(_request(truncated, plan, batch))
    assert caught.value.stage == "read" and str(truncated) in str(caught.value)
    assert str(caught.value).startswith("read stage: SceneError: ")
    assert not caught.value.memory
    assert group.done_tiles() == set()


def test_memory_errors_are_told_apart():
    @guarded("predict")
    def allocate(kind):
        if kind == "memory":
            raise MemoryError("cannot allocate 4 GiB")
        if kind == "cuda":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise ValueError("bad value")

    memory = [Failure.from_exception(_raised(allocate, k)) for k in ("memory", "cuda", "value")]
    assert [f.memory for f in memory] == [True, True, False]
    assert memory[2].reason == "predict stage: ValueError: bad value"


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")
