"""Tile planning invariants over drawn scene sizes, tile sizes and overlaps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnrs.pipeline.planning import Window, geometry_key, plan_batches, plan_tiles, round_to_stride


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    tile_size=st.integers(1, 1100),
    overlap=st.integers(0, 300),
)
def test_cores_partition_the_scene_and_reads_are_bounded(height, width, tile_size, overlap):
    grid = plan_tiles(height, width, tile_size=tile_size, overlap=overlap)
    owners = np.zeros((height, width), dtype=np.int32)
    max_h, max_w = grid.max_read_shape
    for tile in grid:
        owners[tile.core.slices()] += 1
        core, read = tile.core, tile.read
        # Stride alignment of both the core and the window the model sees.
        assert core.row % 32 == 0 and core.col % 32 == 0
        assert read.row % 32 == 0 and read.col % 32 == 0
        # The read window holds the core and at most one halo on each side.
        assert read.row <= core.row and read.col <= core.col
        assert read.row_end >= core.row_end and read.col_end >= core.col_end
        assert read.height <= max_h and read.width <= max_w
        assert read.row_end <= height and read.col_end <= width
        # Full halo wherever the scene allows it.
        assert core.row - read.row == min(grid.overlap, core.row)
        assert read.col_end - core.col_end == min(grid.overlap, width - core.col_end)
    assert owners.min() == 1 and owners.max() == 1
    assert len(list(grid)) == len(grid)


@given(tile_size=st.integers(1, 5000), overlap=st.integers(0, 1000))
def test_rounding_is_to_the_stride_and_reported(tile_size, overlap):
    core, halo, notes = round_to_stride(tile_size, overlap, 32)
    assert core % 32 == 0 and core >= 32 and abs(core - tile_size) <= max(16, 32 - tile_size)
    assert halo % 32 == 0 and overlap <= halo < overlap + 32
    assert (len(notes) > 0) == (core != tile_size or halo != overlap)


def test_rounding_example_and_metadata():
    grid = plan_tiles(777, 1000, tile_size=300, overlap=50)
    assert (grid.tile_size, grid.overlap) == (288, 64)
    assert (grid.rows, grid.cols) == (3, 4)
    d = grid.as_dict()
    assert d["requested_tile_size"] == 300 and d["requested_overlap"] == 50
    assert "300 rounded to 288" in d["notes"][0] and "50 rounded up to 64" in d["notes"][1]
    last = grid.tile(2, 3)
    assert last.core == Window(576, 864, 201, 136)
    assert last.read == Window(512, 800, 265, 200)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="tile_size"):
        plan_tiles(10, 10, tile_size=0)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(10, 10, overlap=-1)
    with pytest.raises(ValueError, match="1x1"):
        plan_tiles(0, 10)


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 4000),
    width=st.integers(1, 4000),
    tile_size=st.integers(32, 1100),
    batch_size=st.integers(1, 9),
)
def test_batches_cover_every_tile_once_with_one_geometry_each(height, width, tile_size, batch_size):
    grid = plan_tiles(height, width, tile_size=tile_size, overlap=64)
    batches = plan_batches(grid, batch_size)
    seen = [t.index for batch in batches for t in batch]
    assert sorted(seen) == sorted(t.index for t in grid)
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({geometry_key(t) for t in batch}) == 1
    # Only the last batch of each geometry may be short, and with a core at least
    # as large as the halo there are at most 4 kinds of tile per axis (first,
    # interior, next-to-last with a clipped halo, last): memory is a few batches.
    geometries = {geometry_key(t) for t in grid}
    assert sum(len(b) < batch_size for b in batches) <= len(geometries)
    if grid.tile_size >= grid.overlap:
        assert len(geometries) <= 16
    assert plan_batches(grid, batch_size) == batches
