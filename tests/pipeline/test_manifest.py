"""Manifest rows, one constructor per outcome, and the Parquet folder they land in."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from fcnrs.pipeline.manifest import (
    ManifestWriter,
    RunIdentity,
    done_row,
    failed_row,
    read_manifest,
    skipped_row,
)
from fcnrs.pipeline.planning import plan_tiles
from fcnrs.pipeline.reading import SceneInfo
from fcnrs.pipeline.scenes import ScenePlan

RUN = RunIdentity("r1", "m" * 64, "s" * 16)


def plan() -> ScenePlan:
    info = SceneInfo(
        "/d/a.tif", 100, 120, 3, ("uint8",) * 3, None, (1, 0, 0, 0, -1, 0), None, (), 42, 7
    )
    return ScenePlan(
        info, (1, 2, 3), plan_tiles(100, 120, tile_size=64, overlap=32), Path("/o/a.zarr")
    )


def test_each_outcome_fills_the_row_from_the_plan():
    p = plan()
    done = done_row(
        RUN, "/d/a.tif", plan=p, tiles_predicted=3, valid_pixels=99, started_at="t", seconds=1.5
    )
    assert (done.status, done.error, done.tiles, done.tiles_predicted, done.valid_pixels) == (
        "done",
        None,
        4,
        3,
        99,
    )
    assert (done.output, done.source_size, done.source_mtime_ns) == ("/o/a.zarr", 42, 7)
    skipped = skipped_row(RUN, "/d/a.tif", plan=p, valid_pixels=99, started_at="t", seconds=0.01)
    assert skipped.status == "skipped" and "already done" in skipped.error
    assert skipped.tiles_predicted == 0 and skipped.valid_pixels == 99
    early = failed_row(
        RUN, "/d/b.tif", "/d/b.tif: no such file", plan=None, started_at="t", seconds=0
    )
    assert (early.output, early.tiles, early.source_size) == ("", 0, -1)
    late = failed_row(RUN, "/d/a.tif", "boom", plan=p, started_at="t", seconds=2, tiles_predicted=2)
    assert late.tiles == 4 and late.valid_pixels == 0 and late.tiles_predicted == 2
    assert {r.model_digest for r in (done, skipped, early, late)} == {"m" * 64}


def test_every_add_rewrites_the_runs_file_whole(tmp_path):
    writer = ManifestWriter(tmp_path, "r1")
    p = plan()
    writer.add(
        done_row(
            RUN, "/d/a.tif", plan=p, tiles_predicted=4, valid_pixels=1, started_at="t", seconds=1
        )
    )
    assert pq.read_table(writer.path).num_rows == 1
    writer.add(failed_row(RUN, "/d/b.tif", "bad", plan=None, started_at="t", seconds=0))
    table = read_manifest(tmp_path)
    assert table.num_rows == 2 and table.column("status").to_pylist() == ["done", "failed"]
    assert [f.name for f in (tmp_path / "manifest").iterdir()] == ["run-r1.parquet"]
