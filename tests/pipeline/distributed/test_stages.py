"""The three stages and the tile codec, called directly with no cluster."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnrs.fcn_model import read_meta
from fcnrs.pipeline.distributed import (
    PredictStage,
    decode_tiles,
    encode_tiles,
    read_stage,
    write_stage,
)
from fcnrs.pipeline.distributed.retries import Failure, StageError, guarded
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import plan_batches, plan_tiles
from fcnrs.pipeline.scenes import SegmentSettings, plan_scene
from fcnrs.pipeline.writing import staging_group


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    tile=st.integers(1, 300),
    overlap=st.integers(0, 100),
)
def test_tile_codec_round_trips_every_tile(height, width, tile, overlap):
    tiles = list(plan_tiles(height, width, tile_size=tile, overlap=overlap))
    encoded = encode_tiles(tiles)
    assert encoded.dtype == np.int64 and encoded.shape == (len(tiles), 10)
    assert decode_tiles(encoded) == tiles


def test_codec_of_no_tiles_is_empty():
    assert encode_tiles([]).shape == (0, 10) and decode_tiles(encode_tiles([])) == []


@pytest.fixture
def planned(make_scene, make_checkpoint, tmp_path):
    """A 300x400 scene whose interior tile (1, 2) is all nodata, and its staging group."""
    invalid = np.zeros((300, 400), bool)
    invalid[64:128, 128:192] = True
    scene = make_scene(height=300, width=400, invalid=invalid)
    ckpt = make_checkpoint()
    meta = read_meta(ckpt)
    settings = SegmentSettings(tile_size=64, overlap=32, batch_size=4)
    plan = plan_scene(scene, meta=meta, out_dir=tmp_path / "out", settings=settings)
    group = staging_group(plan, meta=meta, model_digest="d" * 64, settings=settings)
    group.create()
    return scene, ckpt, meta, plan, group


def _row(scene, meta, plan, batch):
    return {
        "scene": str(scene),
        "version": "1",
        "output": str(plan.output),
        "bands": list(plan.bands),
        "mean": list(meta.mean),
        "std": list(meta.std),
        "tiles": encode_tiles(batch),
        "probabilities": False,
    }


def test_stages_chained_by_hand_write_the_batch_and_count_its_pixels(planned):
    scene, ckpt, meta, plan, group = planned
    batch = next(b for b in plan_batches(plan.grid, 4) if (1, 2) in [t.index for t in b])
    assert len(batch) == 4
    read = read_stage(_row(scene, meta, plan, batch))
    # The all-nodata tile (1, 2) never goes to the model.
    assert [batch[k].index for k in read["keep"]] == [t.index for t in batch if t.index != (1, 2)]
    assert read["image"].shape[0] == len(batch) - 1
    predicted = PredictStage(ckpt, device="cpu", precision="fp32", probabilities=False, threads=1)(
        read
    )
    assert predicted["labels"].shape == (len(batch) - 1, 64, 64)
    summary = write_stage(predicted)
    assert summary["tiles"] == len(batch) and summary["predicted"] == len(batch) - 1
    labels = zarr.open_group(str(group.stage), mode="r")["labels"]
    written = sum(int((labels[t.core.slices()] != NODATA).sum()) for t in batch)
    assert summary["valid_pixels"] == written > 0
    assert (labels[64:128, 128:192] == NODATA).all()
    assert group.done_tiles() == {t.index for t in batch}


def test_a_stage_error_names_the_stage_and_the_file_and_writes_nothing(planned, tmp_path):
    scene, _, meta, plan, group = planned
    batch = plan_batches(plan.grid, 4)[0]
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene.read_bytes()[:3000])
    with pytest.raises(StageError) as caught:
        read_stage(_row(truncated, meta, plan, batch))
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
