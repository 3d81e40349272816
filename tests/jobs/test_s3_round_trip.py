"""The README's whole night on S3, run from the README's own lines against the
real S3 server (``weed mini``): upload (the AWS CLI where it is installed; the
same copies by the test where not), segment, export, polygons, mosaic,
catalogue, areas. Then no object written, no line printed and no error of a run
with a wrong secret holds the key id or the secret."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

from fcnrs.gis.catalog import LocationStacIO
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.storage import Location, sync_gdal_env
from tests.conftest import S3_CREDENTIALS
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.s3


def readme_night() -> list[str]:
    """The command lines of the README's "The whole night on S3" block
    (continuation lines joined; the ``export`` lines are the environment)."""
    section = (ROOT / "README.md").read_text().split("#### The whole night on S3", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and
            not line.startswith("export ")]  # fmt: skip


def aws_cli() -> bool:
    """Whether an AWS CLI that honours ``AWS_ENDPOINT_URL`` is installed (v1 from
    1.29, v2 from 2.13; Debian's v2.9 would upload to AWS itself)."""
    if shutil.which("aws") is None:
        return False
    proc = subprocess.run(["aws", "--version"], capture_output=True, text=True)
    found = re.match(r"aws-cli/(\d+)\.(\d+)", proc.stdout + proc.stderr)
    return bool(found) and tuple(map(int, found.groups())) >= (
        (1, 29) if found.group(1) == "1" else (2, 13)
    )


def aws_cp(args: list[str], work: Path) -> tuple[int, str]:
    """``aws s3 cp [--recursive] SRC DST`` by the AWS CLI where it is installed,
    else the same copy by the test (the rest of the night still runs)."""
    if aws_cli():
        proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr
    src, dst = (a for a in args[3:] if not a.startswith("--"))
    files = sorted((work / src).iterdir()) if "--recursive" in args else [work / src]
    for f in files:
        target = f"{dst.rstrip('/')}/{f.name}" if "--recursive" in args else dst
        Location(target).write_bytes(f.read_bytes())
    return 0, ""


def run_lines(lines: list[str], bucket: str, work: Path) -> list[tuple[str, int, str]]:
    """Each line with ``s3://my-bucket/`` pointing into the test bucket: ``aws``
    as a process (:func:`aws_cp`), ``fcnrs`` in this process. Returns (line,
    status, output)."""
    done = []
    for line in lines:
        args = shlex.split(line.replace("s3://my-bucket/", bucket), comments=True)
        if args[0] == "aws":
            done.append((line, *aws_cp(args, work)))
            continue
        assert args[0] == "fcnrs", line
        try:
            status = fcnrs(args[1:])
        except SystemExit as exc:  # an argparse error (the areas job's bad OUT)
            status = int(exc.code)
        done.append((line, status, ""))
    return done


@pytest.fixture
def night_files(make_scene, make_checkpoint, tmp_path) -> Path:
    """``scenes/`` (two scenes side by side) and ``model.safetensors`` in a
    working folder, as the README's upload lines expect."""
    work = tmp_path / "work"
    (work / "scenes").mkdir(parents=True)
    for seed, (name, x) in enumerate((("a.tif", 500_000), ("b.tif", 503_000))):
        scene = make_scene(name, transform=from_origin(x, 4_100_000, 10, 10), seed=seed)
        shutil.move(scene, work / "scenes" / name)
    shutil.copy(make_checkpoint(), work / "model.safetensors")
    return work


def test_the_readme_night_on_s3_works_and_leaks_no_credentials(
    s3_server, night_files, monkeypatch, capfd
):
    monkeypatch.chdir(night_files)
    bucket = f"s3://fcnrs/{uuid.uuid4().hex[:10]}/"
    lines = readme_night()
    assert [shlex.split(line)[:2] for line in lines] == [
        ["aws", "s3"], ["aws", "s3"], ["fcnrs", "segment"], ["fcnrs", "export"],
        ["fcnrs", "vectorize"], ["fcnrs", "mosaic"], ["fcnrs", "catalog"], ["fcnrs", "areas"],
    ]  # fmt: skip
    done = run_lines(lines, bucket, night_files)
    said = capfd.readouterr()
    printed = said.out + said.err + "".join(output for _, _, output in done)
    assert [status for _, status, _ in done] == [0] * len(lines), printed[-3000:]

    out = Location(f"{bucket}labels/nightly")
    assert [r["status"] for r in read_manifest(out).to_pylist()] == ["done", "done"]
    objects = tree_bytes(bucket)
    for scene in "ab":
        group = zarr.open_group((out / f"{scene}.zarr").zarr_store(read_only=True), mode="r")
        labels = group["labels"][:]
        valid = int((labels != 255).sum())
        assert 0 < valid < labels.size
        # The COG in S3 holds the labels; its class names are beside it.
        sync_gdal_env()
        with rasterio.open((out / "cogs" / f"{scene}.tif").gdal_path) as cog:
            assert np.array_equal(cog.read(1), labels)
        assert f"labels/nightly/cogs/{scene}.tif.aux.xml" in objects
        assert f"labels/nightly/cogs/{scene}.png" in objects
        # The polygons cover the valid pixels: their areas add up to the area query's.
        polygons = pq.read_table(io.BytesIO(objects[f"labels/nightly/vectors/{scene}.parquet"]))
        areas = pd.read_csv(io.BytesIO(objects["labels/nightly/areas.csv"]))
        mine = areas[areas.scene == scene]
        assert mine.pixels.sum() == valid
        assert sum(polygons.column("area_m2").to_pylist()) == pytest.approx(mine.area_m2.sum())
        # The catalogue's Item lists every asset, with relative hrefs.
        item = pystac.Item.from_file(f"{out}/stac/{scene}/{scene}.json", stac_io=LocationStacIO())
        assert set(item.assets) == {"labels", "cog", "polygons", "quicklook"}
        assert all(not a.href.startswith(("s3:", "/")) for a in item.assets.values())
    # The mosaic in S3 is one layer over both scenes (b overlaps a's last 100
    # columns and is drawn on top, but for its nodata).
    with rasterio.open((out / "mosaic" / "labels.vrt").gdal_path) as mosaic:
        assert mosaic.shape == (300, 700)
        pixels = mosaic.read(1)
    with rasterio.open((out / "cogs" / "a.tif").gdal_path) as a:
        a = a.read(1)
    with rasterio.open((out / "cogs" / "b.tif").gdal_path) as b:
        b = b.read(1)
    assert np.array_equal(pixels[:, :300], a[:, :300])
    assert np.array_equal(
        pixels[:, 300:],
        np.where(b != 255, b, np.pad(a[:, 300:], ((0, 0), (0, 300)), constant_values=255)),
    )
    assert "labels/nightly/mosaic/night.png" in objects

    # The same night with a wrong secret: every command fails, none writes.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-0123")
    denied = run_lines(lines[2:], f"{bucket}denied/", night_files)
    said = capfd.readouterr()
    refused = said.out + said.err
    assert all(status in (1, 2) for _, status, _ in denied), denied
    assert refused.count("access denied") >= len(denied), refused[-3000:]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    assert not [k for k in tree_bytes(bucket) if k.startswith("denied/")]

    secrets = [*S3_CREDENTIALS.values(), "a-wrong-secret-0123"]
    assert len(objects) > 40  # scenes, model, rasters, manifest, COGs, polygons, mosaic, STAC
    for key, data in objects.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{key} holds a credential"
    for text in (printed, refused):
        for secret in secrets:
            assert secret not in text
    assert os.environ["AWS_ACCESS_KEY_ID"] == S3_CREDENTIALS["AWS_ACCESS_KEY_ID"]
