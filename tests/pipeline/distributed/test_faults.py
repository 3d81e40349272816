"""A night always finishes: poison tiles in every stage, dying replicas, a lost
node, a stopped driver. Faults are injected by the test-only hook in
``tests/faults.py``, never through production flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings
from tests import faults
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = SegmentSettings(tile_size=64, overlap=32, batch_size=4)
# The poison scene's poison tile: the interior one at row 64, col 64.
POISON_WINDOW = "rows 64-128, cols 64-128"


@pytest.fixture
def night(make_scene, make_checkpoint, tmp_path):
    """Two good scenes around a poison one, a checkpoint, and the good scenes'
    outputs from a run without the poison scene (the local engine: the Ray
    engine writes the same bytes, tested in test_driver.py)."""
    scenes = [
        make_scene("good1.tif", height=200, width=260, seed=1),
        faults.plant(make_scene("poison.tif", height=320, width=300, seed=2)),
        make_scene("good2.tif", height=150, width=300, seed=3),
    ]
    ckpt = make_checkpoint()
    clean = tmp_path / "clean"
    report = run_scenes(
        [scenes[0], scenes[2]],
        model=ckpt,
        out_dir=clean,
        settings=SETTINGS,
        progress=None,
        engine="local",
    )
    assert [r.status for r in report.rows] == ["done", "done"]
    return scenes, ckpt, clean


def check_night(scenes, out, clean, report, *, poison_status="failed"):
    """Every scene has a row; the good ones equal the clean run's bytes."""
    rows = {Path(r.scene).name: r for r in report.rows}
    assert set(rows) == {"good1.tif", "poison.tif", "good2.tif"}
    assert len(report.rows) == 3 and read_manifest(out).num_rows == 3
    for name in ("good1", "good2"):
        assert rows[f"{name}.tif"].status == "done"
        assert tree_bytes(out / f"{name}.zarr") == tree_bytes(clean / f"{name}.zarr")
    assert rows["poison.tif"].status == poison_status
    return rows["poison.tif"]


@pytest.mark.parametrize("stage", ["read", "predict", "write"])
def test_a_poison_tile_fails_its_scene_alone_in_any_stage(night, tmp_path, stage):
    scenes, ckpt, clean = night
    out = tmp_path / "out"
    report = run_scenes(
        scenes,
        model=ckpt,
        out_dir=out,
        settings=SETTINGS,
        progress=None,
        engine="local",
        worker_setup=partial(faults.install, stage, "raise"),
    )
    poison = check_night(scenes, out, clean, report)
    # Tried 3 times (2 retries), then failed naming the scene, the stage and the
    # tile windows of the batch; its other batches were cancelled.
    assert poison.error.startswith(f"{scenes[1]}: tile(s) ")
    assert POISON_WINDOW in poison.error and "failed 3 time(s)" in poison.error
    assert f"{stage} stage: OSError" in poison.error and "cancelled" in poison.error
    assert not (out / "poison.zarr").exists() and report.exit_code() == 1
    assert poison.tiles == 25 and poison.tiles_predicted < 25


def test_a_batch_that_runs_out_of_memory_is_split_until_it_fits(night, tmp_path):
    scenes, ckpt, clean = night
    out = tmp_path / "out"
    report = run_scenes(
        scenes,
        model=ckpt,
        out_dir=out,
        settings=SETTINGS,
        progress=None,
        engine="local",
        worker_setup=partial(faults.install, "predict", "memory"),
    )
    poison = check_night(scenes, out, clean, report, poison_status="done")
    # Split 4 -> 2 -> 1: the poison tile went through alone, and the scene's
    # bytes equal a run with no memory trouble at all.
    reference = tmp_path / "reference"
    [ref] = run_scenes(
        [scenes[1]],
        model=ckpt,
        out_dir=reference,
        settings=SETTINGS,
        progress=None,
        engine="local",
    ).rows
    assert poison.tiles_predicted == ref.tiles_predicted > 20
    assert tree_bytes(out / "poison.zarr") == tree_bytes(reference / "poison.zarr")


def test_retries_zero_fails_at_the_first_failure(night, tmp_path):
    scenes, ckpt, _ = night
    report = run_scenes(
        scenes[1:2],
        model=ckpt,
        out_dir=tmp_path / "out",
        settings=SETTINGS,
        progress=None,
        engine="local",
        retries=0,
        worker_setup=partial(faults.install, "write", "raise"),
    )
    assert "failed 1 time(s)" in report.rows[0].error


RAY_NIGHT = """
import json, sys, time, ray
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.scenes import SegmentSettings
root, faults, model, out, *scenes = sys.argv[1:]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
    "worker_process_setup_hook": "tests.faults.install_from_env",
    "env_vars": {"PYTHONPATH": root, "FCNRS_TEST_FAULTS": faults},
})
t0 = time.perf_counter()
r = run_scenes(scenes, model=model, out_dir=out, progress=None,
               settings=SegmentSettings(tile_size=64, overlap=32, batch_size=4))
print(json.dumps({"seconds": time.perf_counter() - t0, "replicas": r.replica_batches,
                  "rows": [[row.scene, row.status, row.error] for row in r.rows]}))
"""


def run_script(script: str, *args: object, timeout: float = 300) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The script's last line of JSON (Ray may print a dying node's notice after it).
    line = [x for x in proc.stdout.splitlines() if x.startswith(("{", "["))][-1]
    result = json.loads(line)
    result["log"] = proc.stderr
    return result


def test_on_ray_a_tile_that_kills_its_replica_fails_alone(make_scene, make_checkpoint, tmp_path):
    """A poison tile kills the replica's process (SIGKILL, as the OOM killer or a
    segfault would) every time it is predicted; another poison tile raises in the
    write task. Both scenes fail naming the tile; the good ones finish, unchanged."""
    good = [
        make_scene("good1.tif", height=200, width=260, seed=1),
        make_scene("good2.tif", height=150, width=300, seed=3),
    ]
    dies = faults.plant(make_scene("dies.tif", height=320, width=300, seed=2))
    raises = make_scene("raises.tif", height=320, width=300, seed=5)
    ckpt = make_checkpoint()
    clean = tmp_path / "clean"
    run_scenes(good, model=ckpt, out_dir=clean, settings=SETTINGS, progress=None, engine="local")
    out = tmp_path / "out"
    result = run_script(
        RAY_NIGHT,
        ROOT,
        "predict:die:dies,write:raise:raises",
        ckpt,
        out,
        good[0],
        dies,
        raises,
        good[1],
    )
    rows = {Path(scene).name: (status, error) for scene, status, error in result["rows"]}
    assert len(result["rows"]) == 4 and read_manifest(out).num_rows == 4
    for scene in good:
        assert rows[scene.name][0] == "done"
        name = f"{scene.stem}.zarr"
        assert tree_bytes(out / name) == tree_bytes(clean / name)
    status, error = rows["dies.tif"]
    # Each death looked like the OOM killer's: the batch was split 4 -> 2 -> 1,
    # so the message names the one tile that kills its process.
    assert status == "failed" and error.startswith(f"{dies}: tile(s) {POISON_WINDOW} failed 3")
    assert "the replica running it died (its process died" in error
    status, error = rows["raises.tif"]
    assert status == "failed" and POISON_WINDOW in error and "write stage: OSError" in error
    # Three replicas died and were replaced; the run went on to the end.
    assert len(result["replicas"]) >= 2
    print(f"night with a killer tile: {result['seconds']:.1f} s")


def test_on_ray_replicas_that_cannot_start_end_the_run(make_scene, make_checkpoint, tmp_path):
    scenes = [make_scene("a.tif", height=100, width=120), make_scene("b.tif", seed=2)]
    out = tmp_path / "out"
    result = run_script(RAY_NIGHT, ROOT, "replica:raise:-", make_checkpoint(), out, *scenes)
    assert [status for _, status, _ in result["rows"]] == ["failed", "failed"]
    for _, _, error in result["rows"]:
        assert "model replicas cannot start" in error and "cannot be loaded" in error
    assert read_manifest(out).num_rows == 2


TWO_NODES = """
import json, sys, threading, time, ray
from pathlib import Path
from ray.cluster_utils import Cluster
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.scenes import SegmentSettings
model, out, scene = sys.argv[1:]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
stage = Path(out) / ".scene.zarr.partial" / "labels"
killed = []
def kill_worker_node():
    while not killed:
        if stage.exists() and len(list(stage.glob("*.*"))) >= 12:
            cluster.remove_node(worker, allow_graceful=False)
            killed.append(len(list(stage.glob("*.*"))))
        time.sleep(0.02)
threading.Thread(target=kill_worker_node, daemon=True).start()
r = run_scenes([scene], model=model, out_dir=out, progress=None,
               settings=SegmentSettings(tile_size=64, overlap=32, batch_size=1, precision="fp32"))
print(json.dumps({"killed_at": killed, "replicas": r.replica_batches,
                  "rows": [[row.scene, row.status, row.error] for row in r.rows]}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.cluster
def test_a_node_lost_mid_run_changes_nothing_in_the_output(make_scene, make_checkpoint, tmp_path):
    """A real two-node Ray cluster on this machine (Ray's own ``Cluster``): one
    replica per node; the non-head node is killed mid-run. The job finishes on
    the head, with output byte-identical to an uninterrupted run's."""
    scene = make_scene("scene.tif", height=640, width=640, seed=7)
    ckpt = make_checkpoint(width=0.5)  # slow enough that the kill lands mid-run
    settings = SegmentSettings(tile_size=64, overlap=32, batch_size=1, precision="fp32")
    run_scenes(
        [scene],
        model=ckpt,
        out_dir=tmp_path / "ref",
        settings=settings,
        progress=None,
        engine="local",
    )
    out = tmp_path / "out"
    result = run_script(TWO_NODES, ckpt, out, scene, timeout=400)
    assert result["killed_at"] and result["killed_at"][0] < 100, "the node was not killed mid-run"
    assert result["rows"] == [[str(scene), "done", None]]
    # Both nodes' replicas worked before one node was lost.
    assert len(result["replicas"]) >= 2, result["replicas"]
    # The batches in flight on the lost node (its replica's calls, and reads or
    # writes running there: NodeDiedError) came back as failures and were retried.
    retried = [line for line in result["log"].splitlines() if "retrying" in line]
    assert any("the replica running it died" in line for line in retried), retried
    assert all("died" in line or "Node" in line for line in retried), retried
    assert tree_bytes(out / "scene.zarr") == tree_bytes(tmp_path / "ref" / "scene.zarr")
