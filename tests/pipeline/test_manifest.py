"""Manifest rows, one constructor per outcome, and the Parquet folder they land in."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.manifest import (
    ManifestWriter,
    ReplicaWork,
    RunIdentity,
    RunRecord,
    done_row,
    failed_row,
    read_manifest,
    read_run_records,
    skipped_row,
    write_run_record,
)
from fcnrs.pipeline.planning import plan_batches, plan_tiles
from fcnrs.pipeline.reading import SceneInfo
from fcnrs.pipeline.scenes import ScenePlan, SegmentSettings

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


def test_a_runs_record_sits_beside_its_rows_and_the_folder_still_reads_as_one_table(tmp_path):
    writer = ManifestWriter(tmp_path, "r1")
    writer.add(failed_row(RUN, "/d/b.tif", "bad", plan=None, started_at="t", seconds=0))
    record = RunRecord(
        run_id="r1",
        started_at="2026-01-01T01:30:00+00:00",
        finished_at="2026-01-01T01:31:00+00:00",
        seconds=60.0,
        engine="ray",
        device="cuda",
        model="s3://models/best.safetensors",
        model_digest="m" * 64,
        model_variant="fcn8s",
        classes=("water", "land"),
        bands=(4, 3, 2),
        settings={"tile_size": 1536, "overlap": 96, "batch_size": 4, "precision": "bf16"},
        settings_digest="s" * 16,
        threads_per_replica=1,
        replicas={
            "10.0.0.5:77 gpu=[0]": ReplicaWork(3, 12, 12 * 1536**2, 4.5),
            "10.0.0.6:91 gpu=[0]": ReplicaWork(1, 4, 4 * 1536**2, 1.5),
        },
    )
    where = write_run_record(tmp_path, record)
    assert where.path == tmp_path / "manifest" / "_runs" / "run-r1.json"
    assert read_run_records(tmp_path) == {"r1": record}
    # pyarrow, pandas and DuckDB skip "_" names: the folder is still the rows alone.
    assert pd.read_parquet(tmp_path / "manifest").scene.tolist() == ["/d/b.tif"]
    assert pq.read_table(tmp_path / "manifest").num_rows == 1
    glob = str(tmp_path / "manifest" / "*.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(1,)]
    assert read_manifest(tmp_path).num_rows == 1
    # A damaged record is left out, not fatal.
    (where.path.parent / "run-r2.json").write_text("{not json")
    assert list(read_run_records(tmp_path)) == ["r1"]


def test_a_local_run_records_each_replicas_work(make_scene, make_checkpoint, tmp_path):
    scenes = [make_scene(f"s{i}.tif", height=100, width=150, seed=i) for i in (1, 2)]
    settings = SegmentSettings(tile_size=64, overlap=32, batch_size=2)
    ckpt = make_checkpoint()
    report = run_scenes(
        scenes,
        model=ckpt,
        out_dir=tmp_path / "out",
        settings=settings,
        engine="local",
        run_id="night1",
        progress=None,
    )
    (record,) = read_run_records(tmp_path / "out").values()
    assert record.run_id == "night1" and record.engine == "local" and record.device == "cpu"
    assert record.model == str(ckpt) and record.model_digest == report.rows[0].model_digest
    assert record.classes == ("a", "b", "c", "d") and record.bands == (1, 2, 3)
    assert record.settings == asdict(settings.resolved("cpu"))
    assert record.settings_digest == report.rows[0].settings_digest
    ((name, work),) = record.replicas.items()
    # The one replica is the local engine's worker process, not this one.
    pid = int(re.fullmatch(r"local:(\d+) gpu=\[\]", name).group(1))
    assert pid != os.getpid() and record.replicas == report.replicas
    # Every tile of both scenes went through the one replica, in batches of two.
    assert work.tiles == sum(r.tiles for r in report.rows) == 2 * 2 * 3
    batches = plan_batches(plan_tiles(100, 150, tile_size=64, overlap=32), 2)
    assert work.batches == 2 * len(batches) and work.pixels == 2 * 100 * 150
    assert 0 < work.seconds < record.seconds
    # A re-run skips both: its record says no replica worked.
    run_scenes(
        scenes,
        model=ckpt,
        out_dir=tmp_path / "out",
        settings=settings,
        engine="local",
        run_id="night2",
        progress=None,
    )
    assert read_run_records(tmp_path / "out")["night2"].replicas == {}
