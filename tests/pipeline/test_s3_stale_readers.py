"""Long-lived readers of republished outputs in S3: GDAL keeps what it learnt
of an object over HTTP (its size, its listing) for the life of the process, so
a process that reopens an output a later run republished reads it stale.
:func:`~fcnrs.pipeline.storage.clear_gdal_cache` forgets it, and the project
calls it wherever it reopens such an output through GDAL (COGs, the mosaic,
GDAL vector files).

Measured with GDAL 3.10 (rasterio) and 3.12 (pyogrio): with the project's
``CPL_VSIL_CURL_NON_CACHED=/vsis3/``, COGs (also through
``/vsis3_streaming/``), the VRT, the GTI index, GeoPackage and FlatGeobuf
reopen fresh anyway; a Zarr group through GDAL's ZARR driver does not. With an
operator's own ``CPL_VSIL_CURL_NON_CACHED`` (which wins), everything is cached."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

from fcnrs.gis.cog import export_cog
from fcnrs.gis.mosaic import build_mosaic
from fcnrs.pipeline.storage import Location, clear_gdal_cache, sync_gdal_env

pytestmark = pytest.mark.s3


def classes(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, (height, width)).astype(np.uint8)


def test_gdal_reads_a_republished_zarr_stale_until_its_cache_is_cleared(s3_server, make_labels):
    out = Location(f"s3://fcnrs/{uuid.uuid4().hex[:10]}")
    first, second = classes(100, 120, 0), classes(150, 170, 1)
    make_labels(first, out_dir=out, name="s.zarr", tile_size=64)
    sync_gdal_env()
    name = f'ZARR:"{(out / "s.zarr").gdal_path}":/labels'
    with rasterio.open(name) as src:
        assert np.array_equal(src.read(1), first)
    make_labels(second, out_dir=out, name="s.zarr", tile_size=64)  # a later run republishes
    # What GDAL 3.10 does without help (the "JSON parsing error" and
    # "Read failed"): it still has the old group's metadata sizes.
    with pytest.raises(RasterioIOError):
        with rasterio.open(name) as src:
            src.read(1)
    assert clear_gdal_cache() >= 1  # rasterio's GDAL (and pyogrio's, where loaded)
    with rasterio.open(name) as src:
        assert np.array_equal(src.read(1), second)


def test_exports_and_mosaics_reopen_republished_outputs_fresh(s3_server, make_labels, monkeypatch):
    # An operator who lets GDAL cache objects (their own CPL_VSIL_CURL_NON_CACHED
    # wins over the project's "/vsis3/"): COGs then go stale too, not only Zarr.
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", "/vsis3/another-bucket/")
    base = Location(f"s3://fcnrs/{uuid.uuid4().hex[:10]}")
    out, cogs = base / "out", base / "out" / "cogs"
    first, second = classes(200, 300, 0), classes(260, 330, 1)
    make_labels(first, out_dir=out, name="s.zarr", tile_size=64)
    assert build_mosaic(out).exported == ("s",)
    assert export_cog(out / "s.zarr", cogs).kept == (cogs / "s.tif",)  # read back: current
    # The scene is segmented again (another source, other size) and republished.
    make_labels(second, out_dir=out, name="s.zarr", tile_size=64, source_mtime_ns=1)
    assert export_cog(out / "s.zarr", cogs).kept == ()  # out of date: exported again
    # This process read the old COG through /vsis3/; it now sees the new one.
    assert export_cog(out / "s.zarr", cogs).kept == (cogs / "s.tif",)
    done = build_mosaic(out)
    assert done.exported == ()
    sync_gdal_env()
    with rasterio.open(Location(done.vrt).gdal_path) as src:
        assert np.array_equal(src.read(1), second)
