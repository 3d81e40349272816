"""A night that survives any process death: the local engine's worker killed by a
block, the driver itself killed mid-batch, transient faults, stops by signal,
and what a re-run recomputes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import psutil
import pytest

from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.distributed.crashes import INFLIGHT_DIR
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.writing import staging_path
from tests import faults
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = SegmentSettings(tile_size=64, overlap=32, batch_size=4)
POISON_WINDOW = "rows 64-128, cols 64-128"


@pytest.fixture
def night(make_scene, make_checkpoint, tmp_path):
    """Two good scenes around a poison one (its tile at row 64, col 64 also holds
    the poison pixel value), a checkpoint, and the good scenes' clean outputs."""
    scenes = [
        make_scene("good1.tif", height=200, width=260, seed=1),
        faults.plant(make_scene("poison.tif", height=320, width=300, seed=2)),
        make_scene("good2.tif", height=150, width=300, seed=3),
    ]
    ckpt = make_checkpoint()
    clean = tmp_path / "clean"
    report = run_scenes(
        scenes, model=ckpt, out_dir=clean, settings=SETTINGS, progress=None, engine="local"
    )
    assert [r.status for r in report.rows] == ["done"] * 3
    return scenes, ckpt, clean


def good_ones_are_clean(out: Path, clean: Path) -> None:
    for name in ("good1.zarr", "good2.zarr"):
        assert tree_bytes(out / name) == tree_bytes(clean / name), name


@pytest.mark.parametrize("stage", ["read", "predict"])
def test_a_block_that_kills_the_local_worker_fails_its_scene_alone(night, tmp_path, stage):
    """A block whose read (or whose pixels in the model) SIGKILLs the process, as
    a GDAL or codec crash or the OOM killer would: the night finishes, every
    scene has its row, the poison scene fails naming its one tile, the others
    equal a clean run's bytes."""
    scenes, ckpt, clean = night
    out = tmp_path / "out"
    report = run_scenes(
        scenes,
        model=ckpt,
        out_dir=out,
        settings=SETTINGS,
        progress=None,
        engine="local",
        worker_setup=partial(faults.install, stage, "die"),
    )
    rows = {Path(r.scene).name: r for r in report.rows}
    assert read_manifest(out).num_rows == 3 and report.exit_code() == 1
    assert rows["good1.tif"].status == rows["good2.tif"].status == "done"
    poison = rows["poison.tif"]
    # Split 4 -> 2 -> 1 as deaths look like the OOM killer: the one tile is named.
    assert poison.status == "failed"
    assert poison.error.startswith(f"{scenes[1]}: tile(s) {POISON_WINDOW} failed 3 time(s)")
    assert "the local worker process died (signal SIGKILL)" in poison.error
    good_ones_are_clean(out, clean)


def test_a_transient_fault_is_retried_and_changes_nothing(night, tmp_path, caplog):
    scenes, ckpt, clean = night
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        report = run_scenes(
            scenes,
            model=ckpt,
            out_dir=out,
            settings=SETTINGS,
            progress=None,
            engine="local",
            worker_setup=partial(faults.install, "read", "flaky"),
        )
    assert [r.status for r in report.rows] == ["done"] * 3 and report.exit_code() == 0
    retried = [r.message for r in caplog.records if "retrying" in r.message]
    assert len(retried) == 1 and POISON_WINDOW in retried[0]
    assert "injected transient read fault" in retried[0]
    for name in ("good1.zarr", "poison.zarr", "good2.zarr"):
        assert tree_bytes(out / name) == tree_bytes(clean / name), name


DRIVER = """
import functools, json, sys
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.scenes import SegmentSettings
from tests import faults
model, out, *scenes = sys.argv[1:]
report = run_scenes(
    scenes, model=model, out_dir=out, progress=None, engine="local", retries=1,
    settings=SegmentSettings(tile_size=64, overlap=32, batch_size=4),
    worker_setup=functools.partial(faults.install, "read", "hang"),
)
print(json.dumps([[r.scene, r.status, r.error] for r in report.rows]))
"""


def in_flight(out: Path, pid: int) -> list[list[str]]:
    """The batches in flight in the crash record of the driver with this PID."""
    for record in (out / "manifest" / INFLIGHT_DIR).glob("run-*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):  # replaced (whole) while we looked
            continue
        if data.get("pid") == pid and not data.get("ended"):
            return data["in_flight"]
    return []


def test_a_batch_in_flight_in_runs_that_died_is_not_tried_again(night, tmp_path):
    """The driver itself is SIGKILLed (as the OOM killer or a power loss would)
    twice while the poison batch is in flight: its worker dies with it; the
    second run tries the suspect batch alone; the third fails that scene at once
    (``--retries 1``: two deaths) and finishes the others with clean bytes."""
    scenes, ckpt, clean = night
    out = tmp_path / "out"
    args = [sys.executable, "-c", DRIVER, str(ckpt), str(out), *map(str, scenes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in (1, 2):
        driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE)
        deadline = time.monotonic() + 120
        flight = []
        while time.monotonic() < deadline:
            flight = in_flight(out, driver.pid)
            if any(key.endswith("|1,1") and "poison.zarr" in key for b in flight for key in b):
                break
            time.sleep(0.05)
        else:
            driver.kill()
            pytest.fail(f"attempt {attempt}: the poison batch never went in flight")
        if attempt == 2:  # the suspect runs alone
            assert len(flight) == 1, flight
        workers = psutil.Process(driver.pid).children(recursive=True)
        assert workers, "the local engine's worker process"
        driver.kill()  # this test's own child: SIGKILL, no clean-up of any kind
        driver.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "a worker outlived its driver"
    third = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    rows = {Path(s).name: (status, error) for s, status, error in json.loads(third.stdout)}
    # Done in this run or an earlier one (the first scene may finish before a kill).
    assert {rows["good1.tif"][0], rows["good2.tif"][0]} <= {"done", "skipped"}
    status, error = rows["poison.tif"]
    assert status == "failed" and "were being processed when 2 runs died" in error
    assert POISON_WINDOW in error
    good_ones_are_clean(out, clean)
    # Its staging group stays (the tiles written before are kept), and the crash
    # record keeps the conviction for the next night.
    assert staging_path(out / "poison.zarr").exists()
    records = list((out / "manifest" / INFLIGHT_DIR).glob("run-*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["ended"]


def test_the_output_identity_covers_what_changes_the_bytes(make_scene, make_checkpoint, tmp_path):
    """Precision, bands and probabilities recompute a scene; the batch size (which
    changes no byte) still skips it."""
    scene = make_scene(height=130, width=150)
    ckpt = make_checkpoint()
    out = tmp_path / "out"
    base = SegmentSettings(tile_size=64, overlap=32, batch_size=2, precision="fp32")

    def status(settings: SegmentSettings) -> str:
        report = run_scenes(
            [scene], model=ckpt, out_dir=out, settings=settings, progress=None, engine="local"
        )
        return report.rows[0].status

    assert status(base) == "done"
    assert status(base) == "skipped"
    assert status(SegmentSettings(**{**base.__dict__, "batch_size": 3})) == "skipped"
    assert status(SegmentSettings(**{**base.__dict__, "precision": "bf16"})) == "done"
    assert status(SegmentSettings(**{**base.__dict__, "precision": "bf16"})) == "skipped"
    assert status(SegmentSettings(**{**base.__dict__, "bands": (3, 2, 1)})) == "done"
    assert status(SegmentSettings(**{**base.__dict__, "probabilities": True})) == "done"
    assert status(SegmentSettings(**{**base.__dict__, "probabilities": True})) == "skipped"


def test_two_scenes_with_one_stem_in_one_run(make_scene, make_checkpoint, tmp_path):
    """Both would write OUT/x.zarr: the first is done, the second fails naming
    both files, and the first's output is untouched by it."""
    first = make_scene("x.tif", height=100, width=120, seed=1)
    other = tmp_path / "other"
    other.mkdir()
    second = make_scene("other/x.tif", height=100, width=120, seed=2)
    out = tmp_path / "out"
    report = run_scenes(
        [first, second],
        model=make_checkpoint(),
        out_dir=out,
        settings=SETTINGS,
        progress=None,
        engine="local",
    )
    rows = {r.scene: r for r in report.rows}
    assert rows[str(first)].status == "done"
    assert rows[str(second)].status == "failed"
    assert rows[str(second)].error.startswith(str(second))
    assert "x.zarr" in rows[str(second)].error and str(first) in rows[str(second)].error
    alone = tmp_path / "alone"
    run_scenes(
        [first], model=make_checkpoint(), out_dir=alone, settings=SETTINGS, progress=None,
        engine="local",
    )  # fmt: skip
    assert tree_bytes(out / "x.zarr") == tree_bytes(alone / "x.zarr")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_by_signal_records_the_night_and_prints_the_summary(
    make_scene, make_checkpoint, tmp_path, sig, code
):
    scene = make_scene("scene.tif", height=640, width=640, seed=6)
    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "jobs" / "segment_scenes.py"), "--model"]
    args += [str(make_checkpoint(width=0.5)), "--scenes", str(scene), "--out", str(out)]
    args += ["--tile-size", "64", "--overlap", "32", "--batch-size", "1", "--engine", "local"]
    args += ["--precision", "fp32"]
    job = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    chunks = staging_path(out / "scene.zarr") / "labels"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(chunks.glob("*.*"))) < 5:
        time.sleep(0.05)
    job.send_signal(sig)
    stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == code, stderr[-3000:]
    assert "0 done, 0 skipped, 0 failed, 1 interrupted" in stdout, stdout
    [row] = read_manifest(out).to_pylist()
    assert row["status"] == "interrupted" and sig.name in row["error"]
    assert not list((out / "manifest" / INFLIGHT_DIR).glob("*.json"))  # a clean stop


def test_a_dead_runs_record_counts_once_whatever_its_writes_left_behind(tmp_path):
    """A run killed while rewriting its crash record leaves a hidden copy beside
    it; the next run counts the dead run's batches once (a copy counted again
    convicted a batch after one death)."""
    from fcnrs.pipeline.distributed.crashes import CrashRecord
    from fcnrs.pipeline.storage import Location

    folder = tmp_path / "manifest" / INFLIGHT_DIR
    folder.mkdir(parents=True)
    dead = {
        "run_id": "a",
        "host": "elsewhere",
        "pid": 1,
        "started": 0.0,
        "written": 0.0,  # long ago, on another host: over
        "ended": False,
        "in_flight": [["out/s.zarr|1|1,1"]],
        "deaths": {},
    }
    text = json.dumps(dead)
    (folder / "run-a.json").write_text(text)
    (folder / ".run-a.json.0123abcd.tmp").write_text(text)  # this version's leftovers
    (folder / ".run-a.0123abcd.json").write_text(text)  # and one named as files once were
    record = CrashRecord(Location(tmp_path), "b")
    assert record.deaths == {"out/s.zarr|1|1,1": 1}
