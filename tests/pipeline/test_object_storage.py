"""Scenes in, label rasters and manifests out, on a real S3 server (SeaweedFS's
``weed mini``, started by the ``s3_server`` fixture). No mocks of S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
import zarr

from fcnrs.jobs.segment_scenes import main
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings, expand_scenes
from fcnrs.pipeline.storage import Location, sync_gdal_env
from fcnrs.pipeline.writing import is_complete
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = SegmentSettings(tile_size=64, overlap=32, batch_size=2)
pytestmark = pytest.mark.s3


def prefix() -> str:
    return f"s3://fcnrs/{uuid.uuid4().hex[:10]}"


def upload(path: Path, url: str) -> str:
    Location(url).write_bytes(path.read_bytes())
    return url


def labels(where: str | Path) -> np.ndarray:
    return zarr.open_group(Location(where).zarr_store(read_only=True), mode="r")["labels"][:]


def chunk_objects(where: str | Path) -> dict[str, bytes]:
    """The label chunks (the attributes name the source, which differs by place)."""
    return {k: v for k, v in tree_bytes(where).items() if k.startswith("labels/")}


@pytest.fixture
def remote_night(s3_server, make_scene, make_checkpoint, tmp_path):
    """Two scenes on S3 (one listed, one found by a glob), a checkpoint on S3,
    and the same night run on local files for reference."""
    scenes = [
        make_scene("a.tif", height=200, width=260, seed=1),
        make_scene("b.tif", height=150, width=180, seed=2, mask="internal"),
    ]
    ckpt = make_checkpoint()
    base = prefix()
    urls = [upload(s, f"{base}/scenes/{s.name}") for s in scenes]
    model = upload(ckpt, f"{base}/models/model.safetensors")
    Location(f"{base}/tonight.txt").write_bytes(b"# tonight\nscenes/a.tif\n")
    local = run_scenes(
        scenes, model=ckpt, out_dir=tmp_path / "local", settings=SETTINGS, progress=None,
        engine="local",
    )  # fmt: skip
    assert [r.status for r in local.rows] == ["done", "done"]
    return base, urls, model, tmp_path / "local", scenes


def test_s3_scenes_to_s3_labels_equal_a_local_run_then_skip_then_recompute(
    remote_night, make_scene
):
    base, urls, model, local, _ = remote_night
    found = expand_scenes([f"{base}/tonight.txt", f"{base}/scenes/b*.tif"])
    assert found == urls
    out = f"{base}/labels"
    report = run_scenes(found, model=model, out_dir=out, settings=SETTINGS, progress=None,
                        engine="local")  # fmt: skip
    assert [r.status for r in report.rows] == ["done", "done"]
    for name in ("a", "b"):
        assert is_complete(f"{out}/{name}.zarr")
        assert np.array_equal(labels(f"{out}/{name}.zarr"), labels(local / f"{name}.zarr"))
        assert chunk_objects(f"{out}/{name}.zarr") == chunk_objects(local / f"{name}.zarr")
    # Nothing of the staging groups is left behind.
    assert not [k for k in Location(out).list() if ".partial" in k]
    # The manifest on S3 reads as a table (pyarrow), in pandas, and in DuckDB.
    table = read_manifest(out)
    assert table.num_rows == 2 and set(table.column("status").to_pylist()) == {"done"}
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame) and (frame["source_size"] > 0).all()
    manifest = table  # noqa: F841 (DuckDB queries the Arrow table by its name)
    [(n,)] = duckdb.sql("SELECT count(*) FROM manifest WHERE status = 'done'").fetchall()
    assert n == 2

    # The next night: both skipped, nothing rewritten.
    before = tree_bytes(out)
    again = run_scenes(found, model=model, out_dir=out, settings=SETTINGS, progress=None,
                       engine="local")  # fmt: skip
    assert [r.status for r in again.rows] == ["skipped", "skipped"]
    assert {k: v for k, v in tree_bytes(out).items() if "manifest" not in k} == {
        k: v for k, v in before.items() if "manifest" not in k
    }
    # A scene replaced in the bucket (same name, new content) is recomputed.
    upload(make_scene("a2.tif", height=200, width=260, seed=9), urls[0])
    third = run_scenes(found, model=model, out_dir=out, settings=SETTINGS, progress=None,
                       engine="local")  # fmt: skip
    assert {Path(r.scene).name: r.status for r in third.rows} == {
        "a.tif": "done",
        "b.tif": "skipped",
    }
    assert not np.array_equal(labels(f"{out}/a.zarr"), labels(local / "a.zarr"))


def test_gdal_and_xarray_read_labels_where_they_are(remote_night):
    base, urls, model, local, _ = remote_night
    out = f"{base}/labels"
    run_scenes(urls, model=model, out_dir=out, settings=SETTINGS, progress=None, engine="local")
    sync_gdal_env()
    key = Location(f"{out}/a.zarr")
    with (
        rasterio.open(f'ZARR:"{key.gdal_path}":/labels') as remote,
        rasterio.open(f'ZARR:"{local / "a.zarr"}":/labels') as here,
    ):
        assert remote.crs == here.crs and remote.transform == here.transform
        assert np.array_equal(remote.read(1), here.read(1))
    ds = xr.open_zarr(key.zarr_store(read_only=True), mask_and_scale=False)
    ref = xr.open_zarr(str(local / "a.zarr"), mask_and_scale=False)
    assert np.array_equal(ds["x"].values, ref["x"].values)
    assert np.array_equal(ds["labels"].values, ref["labels"].values)


def test_a_run_killed_mid_scene_resumes_on_s3_to_the_same_bytes(
    s3_server, make_scene, make_checkpoint, tmp_path
):
    scene = make_scene("big.tif", height=640, width=640, seed=3)
    ckpt = make_checkpoint(width=0.5)
    base = prefix()
    url = upload(scene, f"{base}/scenes/big.tif")
    settings = ["--tile-size", "64", "--overlap", "32", "--batch-size", "1", "--precision", "fp32"]
    ref = f"{base}/ref"
    cmd = [sys.executable, str(ROOT / "jobs" / "segment_scenes.py"), "--model", str(ckpt),
           "--scenes", url, "--engine", "local", *settings]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    clean = subprocess.run([*cmd, "--out", ref], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-3000:]

    out = f"{base}/out"
    stage = Location(f"{out}/.big.zarr.partial/labels")
    proc = subprocess.Popen([*cmd, "--out", out], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len([k for k in stage.list() if k[0] != "."]) < 15:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len([k for k in stage.list() if not k.startswith(".")])
    assert 15 <= partial < 100 and not Location(f"{out}/big.zarr").exists()

    resumed = subprocess.run([*cmd, "--out", out], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    row = read_manifest(out).to_pylist()[-1]
    assert row["status"] == "done" and row["tiles_predicted"] <= 100 - partial + 1
    published = {k: v for k, v in tree_bytes(out).items() if k.startswith("big.zarr/")}
    expected = {k: v for k, v in tree_bytes(ref).items() if k.startswith("big.zarr/")}
    assert published == expected


def test_a_wrong_secret_fails_fast_naming_the_url_and_writes_nothing(
    remote_night, monkeypatch, capsys
):
    base, urls, _, local, _ = remote_night
    secret = "not-the-secret-at-all"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    t0 = time.perf_counter()
    status = main(["--model", str(local.parent / "model.safetensors"), "--scenes", *urls,
                   "--out", f"{base}/denied", "--engine", "local"])  # fmt: skip
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert status == 2 and f"{base}/denied" in err and "access denied" in err, err[-3000:]
    assert secret not in err and os.environ["AWS_ACCESS_KEY_ID"] not in err
    assert not list(Location(f"{base}/denied").list())
    assert seconds < 30, "a permanent error is not retried for minutes"
