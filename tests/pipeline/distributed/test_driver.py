"""The Ray path: same labels as one process, skips, resumes, faults, GPU pinning."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from fcnrs.pipeline.distributed import plan_replicas, run_scenes
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.pipeline.writing import is_complete, staging_path
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = SegmentSettings(tile_size=128, overlap=64, batch_size=2)


def labels(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["labels"][:]


def test_replicas_one_per_gpu_or_fit_the_cpus():
    gpu = plan_replicas({"CPU": 32, "GPU": 4})
    assert (gpu.replicas, gpu.num_gpus, gpu.num_cpus, gpu.device) == (4, 1, 1, "cuda")
    assert plan_replicas({"CPU": 2, "GPU": 2}).num_cpus == 0.5  # room left for reading
    # A 2-core laptop: one replica computing on both cores, reserving 1.5 so
    # that two read/write tasks (0.25 CPU each) run beside it.
    small = plan_replicas({"CPU": 2})
    assert (small.replicas, small.num_cpus, small.threads, small.device) == (1, 1.5, 2, "cpu")
    big = plan_replicas({"CPU": 64})
    assert big.replicas == 8 and big.threads == 8 and big.num_cpus == 7.5
    assert plan_replicas({"CPU": 8}, replicas=3).replicas == 3


def test_same_labels_as_one_process_then_skip_then_recompute(
    ray_local, make_scene, make_checkpoint, tmp_path
):
    scenes = [
        make_scene("big.tif", height=700, width=650, seed=1),
        make_scene("small.tif", height=200, width=333, seed=2, mask="internal"),
    ]
    ckpt = make_checkpoint()
    out = tmp_path / "out"
    report = run_scenes(scenes, model=ckpt, out_dir=out, settings=SETTINGS, progress=None)
    assert [r.status for r in report.rows] == ["done", "done"] and report.exit_code() == 0
    for scene in scenes:
        segment_scene(scene, model=ckpt, out_dir=tmp_path / "ref", settings=SETTINGS)
        ref = tmp_path / "ref" / f"{scene.stem}.zarr"
        assert np.array_equal(labels(out / f"{scene.stem}.zarr"), labels(ref))
    # The local engine (no Ray, every core in this process) writes the same bytes.
    local = run_scenes(
        scenes,
        model=ckpt,
        out_dir=tmp_path / "local",
        settings=SETTINGS,
        progress=None,
        engine="local",
    )
    assert [r.status for r in local.rows] == ["done", "done"]
    for scene in scenes:
        name = f"{scene.stem}.zarr"
        assert tree_bytes(tmp_path / "local" / name) == tree_bytes(out / name)
    # Rows come in the order scenes finish, which Ray does not fix.
    big = next(r for r in report.rows if r.scene == str(scenes[0]))
    assert big.tiles == 36 and big.valid_pixels == (labels(out / "big.zarr") != 255).sum()

    # The manifest reads as one table in pyarrow, pandas and DuckDB.
    table = read_manifest(out)
    assert table.num_rows == 2 and set(table.column("status").to_pylist()) == {"done"}
    assert pq.read_table(out / "manifest").num_rows == 2
    assert len(pd.read_parquet(out / "manifest")) == 2
    [(n,)] = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/manifest/*.parquet') WHERE status = 'done'"
    ).fetchall()
    assert n == 2

    # A nightly re-run with the same model and settings touches nothing.
    before = {p: p.stat().st_mtime_ns for p in (out / "big.zarr").rglob("*")}
    t0 = time.perf_counter()
    again = run_scenes(scenes, model=ckpt, out_dir=out, settings=SETTINGS, progress=None)
    skip_seconds = time.perf_counter() - t0
    assert [r.status for r in again.rows] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in (out / "big.zarr").rglob("*")} == before
    print(f"re-run of 2 finished scenes: {skip_seconds:.3f} s")

    # A changed setting or model recomputes.
    wider = SegmentSettings(tile_size=128, overlap=96, batch_size=2)
    changed = run_scenes(scenes[:1], model=ckpt, out_dir=out, settings=wider, progress=None)
    assert changed.rows[0].status == "done"
    assert changed.rows[0].tiles_predicted == big.tiles_predicted > 30
    other = make_checkpoint("other.safetensors", seed=5)
    changed = run_scenes(scenes[:1], model=other, out_dir=out, settings=wider, progress=None)
    assert changed.rows[0].status == "done"
    assert read_manifest(out).num_rows == 6


class ReadyReplicas(logging.Handler):
    """The PIDs of the replicas this run reports ready (``node:pid gpu=[]``):
    the only processes the test may kill."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pids: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("replica ") and "is ready" in record.getMessage():
            name = str(record.args[0]) if record.args else ""
            self.pids.append(int(name.split(":")[1].split()[0]))


def test_killed_replica_is_replaced_and_output_is_identical(
    ray_local, make_scene, make_checkpoint, tmp_path
):
    scene = make_scene("scene.tif", height=900, width=900, seed=4)
    # A wider network in fp32, so the replica is still busy when it is killed
    # (with the fast defaults it can finish every batch before the writes catch up).
    ckpt = make_checkpoint(width=0.5)
    settings = SegmentSettings(tile_size=96, overlap=64, batch_size=1, precision="fp32")
    out = tmp_path / "out"
    stage = staging_path(out / "scene.zarr")
    killed: list[int] = []
    ready = ReadyReplicas()
    engine_log = logging.getLogger("fcnrs.pipeline.distributed.ray_engine")
    engine_log.addHandler(ready)
    engine_log.setLevel(logging.INFO)

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = len(list((stage / "labels").glob("*.*"))) if (stage / "labels").exists() else 0
            pids = list(ready.pids)  # reported by this run: no other run's replica
            if done >= 1 and pids:  # the pipeline flows: the replica is mid-scene
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        report = run_scenes([scene], model=ckpt, out_dir=out, settings=settings, progress=None)
    finally:
        thread.join()
        engine_log.removeHandler(ready)
    assert killed, "the replica was never killed: the test proved nothing"
    assert report.rows[0].status == "done" and report.rows[0].tiles == 100
    # Another replica process took over after the first was killed: the batches
    # written after the kill came from a process other than the killed one.
    assert sum(report.replica_batches.values()) == 100
    assert any(f":{killed[0]} " not in replica for replica in report.replica_batches)
    segment_scene(scene, model=ckpt, out_dir=tmp_path / "ref", settings=settings)
    assert np.array_equal(labels(out / "scene.zarr"), labels(tmp_path / "ref" / "scene.zarr"))


def test_driver_killed_mid_run_resumes_to_the_same_bytes(
    ray_local, make_scene, make_checkpoint, tmp_path
):
    scene = make_scene("scene.tif", height=1000, width=1000, seed=6)
    ckpt = make_checkpoint()
    args = ["--tile-size", "96", "--overlap", "64", "--batch-size", "1"]
    settings = SegmentSettings(tile_size=96, overlap=64, batch_size=1)
    # The uninterrupted reference, through the same Ray path.
    run_scenes([scene], model=ckpt, out_dir=tmp_path / "ref", settings=settings, progress=None)

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "segment_scenes.py"),
        "--model",
        str(ckpt),
        "--scenes",
        str(scene),
        "--out",
        str(out),
        *args,
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    stage = staging_path(out / "scene.zarr")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if stage.exists() and len(list((stage / "labels").glob("*.*"))) >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    partial = len(list((stage / "labels").glob("*.*")))
    assert 10 <= partial < 121, f"{partial} chunks on disk when killed"
    assert not (out / "scene.zarr").exists() and not is_complete(stage)

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    rows = read_manifest(out).to_pylist()
    assert rows[-1]["status"] == "done" and rows[-1]["tiles_predicted"] <= 121 - partial + 1
    assert tree_bytes(out / "scene.zarr") == tree_bytes(tmp_path / "ref" / "scene.zarr")


GPU_SCRIPT = """
import json, logging, sys, ray
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.scenes import SegmentSettings
ready = []
class Ready(logging.Handler):
    def emit(self, record):
        if "is ready" in record.getMessage():
            ready.append(str(record.args[0]))
engine_log = logging.getLogger("fcnrs.pipeline.distributed.ray_engine")
engine_log.addHandler(Ready()); engine_log.setLevel(logging.INFO)
ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
r = run_scenes(sys.argv[1:2], model=sys.argv[2], out_dir=sys.argv[3], progress=None,
               settings=SegmentSettings(tile_size=64, overlap=32, batch_size=1))
print(json.dumps({"status": r.rows[0].status, "ready": ready, "replicas": r.replica_batches}))
"""


def test_replicas_are_pinned_one_per_gpu(make_scene, make_checkpoint, tmp_path):
    """Logical GPUs on a CPU machine: two replicas, each holding its own GPU."""
    scene = make_scene("scene.tif", height=256, width=320)
    proc = subprocess.run(
        [sys.executable, "-c", GPU_SCRIPT, str(scene), str(make_checkpoint()), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "done"
    # Both replicas started, each on its own GPU (which one gets the work first
    # is a race: the first to load its model starts working).
    gpus = sorted(r.split("gpu=")[1] for r in result["ready"])
    assert gpus == ["[0]", "[1]"], result["ready"]
    assert set(result["replicas"]) <= set(result["ready"])


def test_progress_line_shows_tiles_rate_and_time_left():
    import io

    from fcnrs.pipeline.distributed import Progress

    stream = io.StringIO()
    bar = Progress(total_tiles=10, stream=stream)
    bar.start -= 4.0  # as if 4 s had passed
    bar.update(4, 4_000_000)
    line = bar.line()
    assert line.startswith("tiles 4/10 (40%)")
    rate, left = re.search(r"([\d.]+) MP/s\s+(\d+) s left", line).groups()
    assert float(rate) == pytest.approx(1.0, rel=0.05) and left == "6"
    bar.update(6, 6_000_000)  # the last update is always printed
    assert re.search(r"tiles 10/10 \(100%\)  2\.[45]\d MP/s  0 s left\n$", stream.getvalue())
