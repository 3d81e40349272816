"""The GIS outputs with an output folder in S3 (the real ``weed mini`` server),
through the command line: COGs with their ``.aux.xml``, the area query,
GeoParquet polygons, and the mosaic's VRT and GTI index pointing at ``/vsis3/``
COGs. Each is checked against the same command on a local copy of the folder."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.storage import Location, sync_gdal_env
from tests.files import tree_bytes
from tests.gis.test_mosaic import A_ORIGIN, B_ORIGIN, C_ORIGIN, C_RES, UTM33, blocks

pytestmark = pytest.mark.s3


@pytest.fixture
def nights(s3_server, make_labels, tmp_path):
    """The same three published label rasters (two UTM, one lon/lat) in a local
    folder and under an S3 prefix; returns both."""
    local, remote = tmp_path / "out", Location(f"s3://fcnrs/{uuid.uuid4().hex[:10]}/out")
    grids = {
        "a": (UTM33, from_origin(*A_ORIGIN, 10, 10), blocks(200, 300, 0)),
        "b": (UTM33, from_origin(*B_ORIGIN, 10, 10), blocks(200, 300, 1)),
        "c": ("EPSG:4326", from_origin(*C_ORIGIN, C_RES, C_RES), blocks(120, 150, 2)),
    }
    for name, (crs, transform, labels) in grids.items():
        for out in (local, remote):
            make_labels(
                labels, name=f"{name}.zarr", out_dir=out, crs=crs, transform=transform, tile_size=64
            )
    return local, str(remote)


def gdal_read(url: str) -> tuple[np.ndarray, object, object]:
    sync_gdal_env()
    with rasterio.open(Location(url).gdal_path) as src:
        return src.read(1), src.transform, src.crs


def test_export_writes_cogs_and_their_aux_xml_to_s3(nights, capsys):
    local, remote = nights
    assert fcnrs(["export", *(str(p) for p in sorted(local.glob("*.zarr"))),
                  "--out", str(local / "cogs"), "--quicklook", "64"]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        fcnrs(["export", f"{remote}/*.zarr", "--out", f"{remote}/cogs", "--quicklook", "64"]) == 0
    )
    printed = capsys.readouterr().out.split()
    assert printed == [f"{remote}/cogs/{n}" for s in "abc" for n in (f"{s}.tif", f"{s}.png")]
    # The same files, byte for byte, as the local export of the same rasters.
    written = tree_bytes(f"{remote}/cogs")
    assert sorted(written) == [
        f"{s}{ext}" for s in "abc" for ext in (".png", ".tif", ".tif.aux.xml")
    ]
    assert written == tree_bytes(local / "cogs")
    sync_gdal_env()
    for scene in "abc":
        valid, errors, warnings = cog_validate(Location(f"{remote}/cogs/{scene}.tif").gdal_path)
        assert valid and not errors and not warnings
    labels, _, _ = gdal_read(f"{remote}/cogs/a.tif")
    assert np.array_equal(labels, blocks(200, 300, 0))
    # The nightly re-run keeps them: nothing is uploaded again.
    etags = {k: (Location(f"{remote}/cogs") / k).head()["etag"] for k in written}
    assert fcnrs(["export", f"{remote}/*.zarr", "--out", f"{remote}/cogs"]) == 0
    assert {k: (Location(f"{remote}/cogs") / k).head()["etag"] for k in written} == etags
    # Debian's GDAL (3.6, as QGIS uses) reads the class names from the sidecar in S3.
    if shutil.which("gdalinfo"):
        info = subprocess.run(["gdalinfo", Location(f"{remote}/cogs/a.tif").gdal_path],
                              capture_output=True, text=True, env=os.environ, check=True)  # fmt: skip
        assert "Categories:" in info.stdout and "town" in info.stdout


def test_areas_of_an_s3_output_folder_equal_the_local_ones(nights, capsys):
    local, remote = nights
    assert fcnrs(["areas", str(local), "--format", "csv"]) == 0
    here = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert fcnrs(["areas", remote, "--format", "csv", "--output", f"{remote}/areas.csv"]) == 0
    there = pd.read_csv(io.BytesIO(Location(f"{remote}/areas.csv").read_bytes()))
    assert list(there.output) == [f"{remote}/{s}.zarr" for s in "abc" for _ in range(4)]
    pd.testing.assert_frame_equal(there.drop(columns="output"), here.drop(columns="output"))
    assert there.pixels.sum() == sum(int((blocks(*hw, s) != 255).sum()) for hw, s in
                                     (((200, 300), 0), ((200, 300), 1), ((120, 150), 2)))  # fmt: skip


def test_vectorize_writes_geoparquet_to_s3(nights, capsys):
    local, remote = nights
    assert fcnrs(["vectorize", *(str(p) for p in sorted(local.glob("*.zarr")))]) == 0
    assert fcnrs(["vectorize", f"{remote}/*.zarr"]) == 0
    assert fcnrs(["vectorize", f"{remote}/a.zarr", "--format", "gpkg"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-4:] == [f"{remote}/vectors/{s}.parquet" for s in "abc"] + [
        f"{remote}/vectors_gpkg/a.gpkg"
    ]
    for scene in "abc":
        there = pq.read_table(
            io.BytesIO(Location(f"{remote}/vectors/{scene}.parquet").read_bytes())
        )
        here = pq.read_table(local / "vectors" / f"{scene}.parquet")
        assert there.num_rows > 10 and there.equals(here)
        assert there.schema.metadata[b"geo"] == here.schema.metadata[b"geo"]
    # The GeoPackage in S3 opens through GDAL's /vsis3/ with the same polygons.
    sync_gdal_env()
    frame = gpd.read_file(Location(f"{remote}/vectors_gpkg/a.gpkg").gdal_path)
    assert len(frame) == pq.read_metadata(local / "vectors" / "a.parquet").num_rows
    # A re-run reads each file's footer in S3 and keeps the current ones.
    etag = Location(f"{remote}/vectors/b.parquet").head()["etag"]
    assert fcnrs(["vectorize", f"{remote}/*.zarr"]) == 0
    assert Location(f"{remote}/vectors/b.parquet").head()["etag"] == etag
    # The night's layer (each ground pixel once) is written beside the S3 mosaic.
    assert fcnrs(["vectorize", *(str(p) for p in sorted(local.glob("*.zarr"))), "--night"]) == 0
    assert fcnrs(["vectorize", f"{remote}/*.zarr", "--night"]) == 0
    night = pq.read_table(io.BytesIO(Location(f"{remote}/mosaic/polygons.parquet").read_bytes()))
    assert night.num_rows > 10 and night.equals(
        pq.read_table(local / "mosaic" / "polygons.parquet")
    )


def test_mosaic_in_s3_points_at_vsis3_cogs(nights, capsys):
    local, remote = nights
    assert fcnrs(["mosaic", str(local)]) == 0
    quicklook = f"{remote}/night.png"
    assert fcnrs(["mosaic", remote, "--quicklook", quicklook, "--size", "100"]) == 0
    assert capsys.readouterr().out.split()[-3:] == [
        f"{remote}/mosaic/labels.vrt",
        f"{remote}/mosaic/labels.gti.gpkg",
        quicklook,
    ]
    vrt = Location(f"{remote}/mosaic/labels.vrt").read_bytes().decode()
    gdal_name = Location(remote).gdal_path
    for scene in "ab":
        assert f'relativeToVRT="0">{gdal_name}/cogs/{scene}.tif<' in vrt
    assert f'relativeToVRT="0">{gdal_name}/mosaic/warped/c.vrt<' in vrt
    warped = Location(f"{remote}/mosaic/warped/c.vrt").read_bytes().decode()
    assert f'relativeToVRT="0">{gdal_name}/cogs/c.tif<' in warped
    # The layer read through /vsis3/ equals the local mosaic, pixel for pixel.
    with rasterio.open(local / "mosaic" / "labels.vrt") as src:
        expected, transform, crs = src.read(1), src.transform, src.crs
    for name in ("labels.vrt", "labels.gti.gpkg"):
        pixels, t, c = gdal_read(f"{remote}/mosaic/{name}")
        assert (t, c) == (transform, crs)
        agree = np.mean(pixels == expected)
        assert agree == 1.0 if name.endswith(".vrt") else agree > 0.999
    with rasterio.open(io.BytesIO(Location(quicklook).read_bytes())) as png:
        assert max(png.shape) == 100
    # Debian's GDAL 3.6 opens the VRT in S3 and follows it to the COGs.
    if shutil.which("gdal_translate"):
        subprocess.run(["gdal_translate", "-q", f"{gdal_name}/mosaic/labels.vrt", str(local / "d.tif")],
                       env=os.environ, check=True)  # fmt: skip
        with rasterio.open(local / "d.tif") as debian:
            assert np.array_equal(debian.read(1), expected)
