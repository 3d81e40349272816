"""GIS tools open the label rasters with the source's CRS and geotransform."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import from_origin

from fcnrs.fcn_model import checkpoint_digest
from fcnrs.pipeline.planning import plan_tiles
from fcnrs.pipeline.reading import SceneInfo
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.pipeline.writing import StagingGroup, is_complete, read_attrs

GRIDS = {
    "utm": ("EPSG:32618", from_origin(101985.0, 2826915.0, 30.0, 30.0)),
    "wgs84": (
        "EPSG:4326",
        from_origin(
            -0.7818936232976315, 38.12881257139627, 8.983152841195215e-05, 8.983152841195215e-05
        ),
    ),
}


def close(a, b, rel=1e-9):
    """GDAL rebuilds the geotransform from the float64 pixel-centre coordinates;
    in degrees that can differ from the source by a few ulps (1e-13 relative)."""
    return all(abs(x - y) <= rel * max(abs(x), abs(y), 1e-300) for x, y in zip(a, b, strict=True))


@pytest.fixture(params=sorted(GRIDS))
def output(request, make_scene, make_checkpoint, tmp_path):
    crs, transform = GRIDS[request.param]
    scene = make_scene(height=333, width=517, crs=crs, transform=transform)
    segment_scene(
        scene,
        model=make_checkpoint(logit_scale=100.0),
        out_dir=tmp_path / "out",
        settings=SegmentSettings(tile_size=128, overlap=32, probabilities=True),
    )
    return scene, tmp_path / "out" / "scene.zarr"


def test_rasterio_reads_crs_transform_and_nodata(output):
    scene, out = output
    with rasterio.open(scene) as src, rasterio.open(f'ZARR:"{out}":/labels') as dst:
        assert dst.crs == src.crs
        assert close(dst.transform[:6], src.transform[:6])
        assert (dst.width, dst.height, dst.nodata, dst.dtypes[0]) == (517, 333, 255, "uint8")
        labels = dst.read(1)
        assert np.array_equal(labels == 255, src.dataset_mask() == 0)
    with rasterio.open(f'ZARR:"{out}":/probabilities') as probs:
        assert probs.count == 4 and probs.crs == src.crs
        p = probs.read().astype(int)
    valid = labels != 255
    # The label is the most probable class, and probabilities sum to ~255.
    assert (np.abs(p.sum(0)[valid] - 255) <= 4).all()
    top2 = np.sort(p, axis=0)[-2:]
    clear = valid & (top2[1] - top2[0] >= 2)  # rounding to uint8 cannot flip these
    assert clear.mean() > 0.5
    assert np.array_equal(p.argmax(0)[clear], labels[clear])
    assert (p[:, ~valid] == 0).all()


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo (Debian gdal-bin) absent")
def test_debian_gdalinfo_reads_crs_and_geotransform(output):
    scene, out = output
    info = json.loads(
        subprocess.run(
            ["gdalinfo", "-json", f'ZARR:"{out}":/labels'],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    with rasterio.open(scene) as src:
        assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == src.crs
        assert close(info["geoTransform"], src.transform.to_gdal())
    assert info["size"] == [517, 333]
    assert info["bands"][0]["noDataValue"] == 255


def test_xarray_open_zarr_gives_pixel_centre_coordinates(output):
    scene, out = output
    ds = xr.open_zarr(out, mask_and_scale=False)
    labels = ds["labels"]
    assert labels.dims == ("y", "x") and labels.dtype == np.uint8
    with rasterio.open(scene) as src:
        t = src.transform
    np.testing.assert_allclose(ds.x.values, t.c + t.a * (np.arange(517) + 0.5), rtol=0, atol=0)
    np.testing.assert_allclose(ds.y.values, t.f + t.e * (np.arange(333) + 0.5), rtol=0, atol=0)
    assert "spatial_ref" in labels.coords
    assert CRS.from_wkt(ds.spatial_ref.attrs["crs_wkt"]) == src.crs
    # rioxarray finds the CRS and the transform through the grid mapping.
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    assert labels.rio.crs == src.crs
    assert close(labels.rio.transform()[:6], t[:6])
    assert ds.attrs["complete"] is True and len(ds.attrs["model_digest"]) == 64
    assert ds.attrs["tile_grid"]["tile_size"] == 128


def test_output_records_rounding_classes_and_provenance(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(height=200, width=210)
    segment_scene(
        scene,
        model=make_checkpoint(),
        out_dir=tmp_path / "o",
        settings=SegmentSettings(tile_size=100, overlap=20),
    )
    attrs = json.loads((tmp_path / "o" / "scene.zarr" / ".zattrs").read_text())
    assert attrs["tile_grid"]["tile_size"] == 96 and attrs["tile_grid"]["overlap"] == 32
    assert "100 rounded to 96" in attrs["tile_grid"]["notes"][0]
    assert attrs["class_names"] == ["a", "b", "c", "d"]
    assert attrs["source"] == str(scene) and attrs["complete"] is True
    chunks = json.loads((tmp_path / "o" / "scene.zarr" / "labels" / ".zarray").read_text())
    assert chunks["chunks"] == [96, 96] and chunks["zarr_format"] == 2


def test_rerun_replaces_output_atomically(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(height=100, width=100)
    out = tmp_path / "o"
    first, second = make_checkpoint(seed=1), make_checkpoint("m2.safetensors", seed=2)
    segment_scene(scene, model=first, out_dir=out)
    old = zarr.open_group(str(out / "scene.zarr"), mode="r")["labels"][:]
    segment_scene(scene, model=second, out_dir=out)
    assert is_complete(out / "scene.zarr")
    assert sorted(p.name for p in out.iterdir()) == ["scene.zarr"]  # no .partial, no .old
    # The published output is the second model's, label for label.
    assert read_attrs(out / "scene.zarr")["model_digest"] == checkpoint_digest(second)
    segment_scene(scene, model=second, out_dir=tmp_path / "fresh")
    new = zarr.open_group(str(out / "scene.zarr"), mode="r")["labels"][:]
    fresh = zarr.open_group(str(tmp_path / "fresh" / "scene.zarr"), mode="r")["labels"][:]
    assert np.array_equal(new, fresh) and not np.array_equal(new, old)


def test_resume_keeps_a_matching_staging_group_and_reports_its_tiles(
    make_scene, make_checkpoint, tmp_path
):
    from fcnrs.fcn_model import read_meta
    from fcnrs.pipeline.scenes import plan_scene
    from fcnrs.pipeline.writing import staging_group

    scene, ckpt = make_scene(height=150, width=200), make_checkpoint()
    meta = read_meta(ckpt)
    settings = SegmentSettings(tile_size=64, overlap=32)
    plan = plan_scene(scene, meta=meta, out_dir=tmp_path / "o", settings=settings)
    group = staging_group(plan, meta=meta, model_digest="a" * 64, settings=settings)
    assert group.resume_or_create() == set()  # nothing to resume: created afresh
    chunks = group.chunks()
    tiles = list(plan.grid)
    ones = np.ones(tiles[0].core.shape, np.uint8)
    assert chunks.write(tiles[0].core, ones) == ones.size
    assert chunks.write_nodata(tiles[4].core) == 0
    # A later run with the same identity resumes and sees exactly those two tiles.
    again = staging_group(plan, meta=meta, model_digest="a" * 64, settings=settings)
    assert again.resume_or_create() == {tiles[0].index, tiles[4].index}
    assert again.chunks().count_valid([tiles[0].core, tiles[4].core]) == ones.size
    # Another model's run starts afresh: the earlier chunks are gone.
    other = staging_group(plan, meta=meta, model_digest="b" * 64, settings=settings)
    assert other.resume_or_create() == set() and other.done_tiles() == set()
    assert other.published() is None
    final = other.publish(valid_pixels=0)
    assert other.published() is not None and read_attrs(final)["valid_pixels"] == 0


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 400),
    width=st.integers(1, 400),
    tile=st.integers(1, 200),
    overlap=st.integers(0, 100),
    probabilities=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_chunk_is_written_by_exactly_one_tile_whole(
    tmp_path_factory, height, width, tile, overlap, probabilities, seed
):
    """Tile cores are the chunks: a tile's write creates its own chunk file in each
    array (labels, probabilities) and touches no other, and the chunk holds the
    tile's core whole. Together the tiles write every chunk once."""
    grid = plan_tiles(height, width, tile_size=tile, overlap=overlap)
    info = SceneInfo(
        path="drawn.tif",
        height=height,
        width=width,
        count=1,
        dtypes=("uint8",),
        crs_wkt=CRS.from_epsg(32633).to_wkt(),
        transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0),
        nodata=None,
        mask_flags=(("all_valid",),),
        size_bytes=-1,
        mtime_ns=-1,
    )
    classes = ["a", "b", "c"]
    final = tmp_path_factory.mktemp("w") / "drawn.zarr"
    group = StagingGroup(
        final,
        info=info,
        grid=grid,
        classes=classes,
        colors=[[0, 0, 0]] * 3,
        probabilities=probabilities,
    )
    group.create()
    writer = group.chunks()
    arrays = ["labels", "probabilities"] if probabilities else ["labels"]

    def chunk_files() -> dict[str, bytes]:
        return {
            f"{name}/{e.name}": Path(e.path).read_bytes()
            for name in arrays
            for e in os.scandir(group.staging / name)
            if not e.name.startswith(".")
        }

    rng = np.random.default_rng(seed)
    tiles = list(grid)
    rng.shuffle(tiles)
    writes: dict[str, tuple[int, int]] = {}
    for t in tiles:
        labels = rng.integers(0, 3, t.core.shape, dtype=np.uint8)
        probs = rng.integers(0, 256, (3, *t.core.shape), dtype=np.uint8) if probabilities else None
        before = chunk_files()
        writer.write(t.core, labels, probs)
        after = chunk_files()
        changed = {k for k in after if before.get(k) != after[k]}
        i, j = t.core.row // grid.tile_size, t.core.col // grid.tile_size
        expected = {"labels/" + f"{i}.{j}"} | (
            {f"probabilities/0.{i}.{j}"} if probs is not None else set()
        )
        assert changed == expected, (t, changed)
        for key in changed:
            assert key not in writes, f"{key} written by {writes[key]} and {t.index}"
            writes[key] = t.index
        root = zarr.open_group(str(group.staging), mode="r")
        rows, cols = t.core.slices()
        assert np.array_equal(root["labels"][rows, cols], labels)
        if probs is not None:
            assert np.array_equal(root["probabilities"][:, rows, cols], probs)
    assert len(writes) == len(tiles) * len(arrays)
    assert group.done_tiles() == {t.index for t in tiles}
