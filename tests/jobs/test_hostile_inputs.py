"""What an operator's worst night throws at the job: hostile files, bad flags, paths
that reach outside ``--out``, folders that are not ours. Each gets a clear error
naming the file or the flag; the rest of the batch finishes; nothing else is touched."""

from __future__ import annotations

import os
import pickle
import stat
import struct
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio

from fcnrs.jobs.segment_scenes import main
from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.distributed.local import available_cpus, default_depth
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings, plan_scene
from fcnrs.pipeline.storage import Location
from fcnrs.pipeline.writing import is_complete
from tests import spies

SMALL = ["--tile-size", "64", "--overlap", "32", "--engine", "local"]


def tiny_tiff_claiming(path: Path, width: int, height: int) -> Path:
    """A ~120-byte classic TIFF whose header claims ``width x height`` 8-bit pixels
    in one strip that lies far beyond the end of the file."""
    entries = [
        (256, 4, width),  # ImageWidth
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: min-is-black
        (273, 4, 4096),  # StripOffsets: past the end of the file
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, 0xFFFFFFF0),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack(
            "<HHIHH" if kind == 3 else "<HHII", tag, kind, 1, value, *(0,) * (kind == 3)
        )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))
    return path


def test_hostile_scenes_each_fail_alone_naming_the_file(
    make_scene, make_checkpoint, tmp_path, monkeypatch
):
    good = make_scene("good.tif", height=200, width=230, bands=1)
    secret = make_scene("secret.tif", height=64, width=64, bands=1, seed=9)
    # A VRT (GDAL's XML format, which can reference any file) renamed .tif.
    vrt = tmp_path / "vrt.tif"
    with rasterio.open(secret) as src:
        vrt.write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{secret}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
        )
    # Control: GDAL with every driver enabled does follow it into the other file.
    with rasterio.open(vrt) as src:
        assert src.driver == "VRT" and src.read(1).any()
    huge = tiny_tiff_claiming(tmp_path / "huge.tif", 100_000, 100_000)
    assert huge.stat().st_size < 200
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    folder = tmp_path / "x.tif"
    folder.mkdir()
    scenes = [vrt, huge, good, empty, folder]

    log = tmp_path / "reads.log"
    out = tmp_path / "out"
    report = run_scenes(
        scenes,
        model=make_checkpoint(bands=(1,)),
        out_dir=out,
        settings=SegmentSettings(),  # the defaults: 1536-px tiles, 4356 of them on huge.tif
        progress=None,
        engine="local",
        worker_setup=partial(spies.log_reads, str(log)),
    )
    reads = {"huge": sum(path == str(huge) for path, _ in spies.read_log(log))}
    rows = {Path(r.scene).name: r for r in report.rows}
    assert len(rows) == 5 and read_manifest(out).num_rows == 5
    assert rows["good.tif"].status == "done" and is_complete(out / "good.zarr")
    for name in ("vrt.tif", "huge.tif", "empty.tif", "x.tif"):
        row = rows[name]
        assert row.status == "failed" and row.error.startswith(str(tmp_path / name)), row.error
        assert not (out / f"{Path(name).stem}.zarr").exists()
    assert "not a readable GTiff raster" in rows["vrt.tif"].error
    assert "not a readable GTiff raster" in rows["empty.tif"].error
    assert "not a readable GTiff raster" in rows["x.tif"].error
    # The huge claim fails at its first reads: at most the three attempts of each
    # batch in flight when the first one ran out of retries, not 1,089 batches.
    assert (
        "cannot read rows " in rows["huge.tif"].error
        and "failed 3 time(s)" in rows["huge.tif"].error
    )
    in_flight = default_depth(available_cpus())
    assert reads["huge"] <= 3 * in_flight and rows["huge.tif"].tiles == 4356
    assert rows["huge.tif"].tiles_predicted == 0


def test_a_pickle_renamed_safetensors_is_refused_and_never_unpickled(make_scene, tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    pickle.loads(evil.read_bytes())  # control: unpickling it does run code
    assert marker.exists()
    marker.unlink()
    status = main(
        ["--model", str(evil), "--scenes", str(make_scene()), "--out", str(tmp_path / "o"), *SMALL]
    )
    assert status == 2 and not marker.exists()
    assert f"{evil}: not a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--tile-size", "0", "at least 1"),
        ("--overlap", "-5", "at least 0"),
        ("--batch-size", "0", "at least 1"),
        ("--run-id", "../../../x", "run id '../../../x'"),
        ("--out", "gs://bucket/labels", "other schemes are not supported"),
        ("--retries", "-1", "at least 0"),
    ],
)
def test_invalid_flags_exit_2_naming_the_flag_before_any_work(
    make_scene, make_checkpoint, tmp_path, capsys, flag, value, says
):
    args = ["--model", str(make_checkpoint()), "--scenes", str(make_scene())]
    args += ["--out", str(tmp_path / "out"), *SMALL, flag, value]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and says in err, err
    assert not (tmp_path / "out").exists() and not Path("gs:").exists()


def test_a_folder_that_is_not_ours_is_never_replaced(make_scene, make_checkpoint, tmp_path):
    scenes = [make_scene("a.tif", height=100, width=120), make_scene("b.tif", height=90, seed=2)]
    out = tmp_path / "out"
    theirs = out / "a.zarr"
    theirs.mkdir(parents=True)
    (theirs / "field-notes.txt").write_text("three years of survey notes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "b.zarr").symlink_to(elsewhere)  # a link out of --out, even to a folder
    ckpt = make_checkpoint()
    args = ["--model", str(ckpt), "--scenes", *map(str, scenes), "--out", str(out), *SMALL]
    assert main(args) == 1
    rows = {Path(r["scene"]).name: r for r in read_manifest(out).to_pylist()}
    for name in ("a", "b"):
        assert rows[f"{name}.tif"]["status"] == "failed"
        assert (
            f"{out / name}.zarr exists and is not a label raster of this project"
            in (rows[f"{name}.tif"]["error"])
        )
    assert (theirs / "field-notes.txt").read_text() == "three years of survey notes"
    assert sorted(os.listdir(theirs)) == ["field-notes.txt"] and os.listdir(elsewhere) == []
    assert (out / "b.zarr").is_symlink()
    # Our own earlier output is replaced as usual once the operator moves theirs away.
    theirs.rename(tmp_path / "moved.zarr")
    (out / "b.zarr").unlink()
    assert main(args) == 0 and is_complete(out / "a.zarr")


@pytest.mark.parametrize(
    "scene", ["../..", "a/../..", "/data/..", "s3://bucket/..", ".", "..tif", "/x/.tif"]
)
def test_output_names_stay_inside_out_whatever_the_scene_path(tmp_path, scene, monkeypatch):
    from fcnrs.pipeline import scenes as scenes_module

    monkeypatch.setattr(scenes_module, "inspect_scene", lambda path: _Info())
    monkeypatch.setattr(scenes_module, "resolve_bands", lambda *a, **k: (1,))
    out = tmp_path / "out"
    settings = SegmentSettings(overlap=96)  # the halo given: _Info is no checkpoint
    plan = plan_scene(scene, meta=_Info(), out_dir=out, settings=settings)
    assert plan.output.parent == Location(out) and plan.output.name.endswith(".zarr")
    assert plan.output.name not in (".zarr", "..zarr") and "/" not in plan.output.name


class _Info:
    """A scene header and a model's metadata, as far as planning looks."""

    height = width = 10
    bands = (1,)
    in_channels = 1


def test_files_are_created_with_the_process_umask(make_scene, make_checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        ckpt = make_checkpoint()
        out = tmp_path / "out"
        run_scenes(
            [make_scene()],
            model=ckpt,
            out_dir=out,
            settings=SegmentSettings(tile_size=64, overlap=32),
            progress=None,
            engine="local",
        )
    finally:
        os.umask(old)
    manifest = next((out / "manifest").glob("*.parquet"))
    chunk = next((out / "scene.zarr" / "labels").glob("0.0"))
    for path in (ckpt, manifest, chunk):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_readers_are_closed_as_scenes_finish(make_scene, make_checkpoint, tmp_path):
    """Open file descriptors stay bounded over a run of a hundred scenes, in the
    worker process that reads them and in this one."""
    scenes = [make_scene(f"s{i:03d}.tif", height=40, width=50, seed=i) for i in range(100)]
    ckpt = make_checkpoint()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    log = tmp_path / "reads.log"
    before = open_fds()
    report = run_scenes(
        scenes,
        model=ckpt,
        out_dir=tmp_path / "out",
        progress=None,
        settings=SegmentSettings(tile_size=64, overlap=32),
        engine="local",
        worker_setup=partial(spies.log_reads, str(log)),
    )
    peak = [fds for _, fds in spies.read_log(log)]
    assert {r.status for r in report.rows} == {"done"} and len(peak) >= 100
    # Without closing, each scene kept a descriptor: 100 more by the end. The
    # worker's count at its first read is its baseline (its imports, its pipes).
    assert max(peak) - peak[0] <= 10, (peak[0], max(peak))
    np.testing.assert_array_less(np.array(peak[50:]) - peak[0], 11)
    assert open_fds() <= before + 2
