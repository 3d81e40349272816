"""``fcnrs vectorize`` end to end, and ``--vectors`` on the nightly job."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from fcnrs.gis.night_areas import night_areas
from fcnrs.gis.rasters import list_outputs, open_label_raster
from fcnrs.gis.vector_files import SETTINGS_KEY, SOURCE_KEY
from fcnrs.jobs import segment_scenes
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.writing import read_attrs


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 5)
    return np.digitize(noise, np.quantile(noise, [0.3, 0.6, 0.8])).astype(np.uint8)


def test_cli_writes_keeps_forces_and_fails_a_bad_input_alone(make_labels, tmp_path, capsys):
    out = tmp_path / "labels"
    a = make_labels(blobs((130, 150), 0), name="a.zarr", out_dir=out, tile_size=64)
    b = make_labels(blobs((90, 200), 1), name="b.zarr", out_dir=out, tile_size=64)
    vectors = out / "vectors"
    assert fcnrs(["vectorize", str(a), str(b)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(vectors / "a.parquet"), str(vectors / "b.parquet")]
    meta = pq.read_metadata(vectors / "a.parquet").metadata
    assert meta[SOURCE_KEY.encode()] == open_label_raster(a).fingerprint.encode()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in vectors.iterdir()}

    # A re-run keeps current files untouched (same inode, same mtime).
    assert fcnrs(["vectorize", str(a), str(b)]) == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in vectors.iterdir()} == before
    # Other options make other polygons: rewritten; --force rewrites anyway.
    assert fcnrs(["vectorize", str(a), "--min-area", "500"]) == 0
    assert (vectors / "a.parquet").stat().st_ino != before[vectors / "a.parquet"][0]
    assert (
        b'"min_area_m2": 500.0'
        in pq.read_metadata(vectors / "a.parquet").metadata[SETTINGS_KEY.encode()]
    )
    assert fcnrs(["vectorize", str(b), "--force"]) == 0
    assert (vectors / "b.parquet").stat().st_ino != before[vectors / "b.parquet"][0]
    capsys.readouterr()

    # A bad input fails alone, named; the good one is written; exit status 1.
    bad = out / "bad.zarr"
    bad.mkdir()
    assert (
        fcnrs(["vectorize", str(bad), str(a), "--format", "fgb", "--out", str(tmp_path / "v")]) == 1
    )
    captured = capsys.readouterr()
    assert captured.out.split() == [str(tmp_path / "v" / "a.fgb")]
    assert f"{bad}: polygons failed" in captured.err
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["a.fgb"]  # no staging left
    with pytest.raises(SystemExit) as err:  # argparse refuses, before any work
        fcnrs(["vectorize", str(a), "--simplify", "-1"])
    assert err.value.code == 2
    assert "--simplify: must be a number >= 0" in capsys.readouterr().err


def test_segment_scenes_vectors_after_the_run(make_scene, make_checkpoint, tmp_path, capsys):
    """The local engine (no Ray): every scene done gets polygons; a re-run (skipped
    as done) keeps them; a scene whose polygons cannot be written keeps its labels
    and makes the exit status 1."""
    scenes = [make_scene(f"s{i}.tif", height=96, width=128, seed=i) for i in (1, 2)]
    out = tmp_path / "out"
    argv = [
        "--model",
        str(make_checkpoint()),
        "--scenes",
        *map(str, scenes),
        "--out",
        str(out),
        "--tile-size",
        "64",
        "--overlap",
        "32",
        "--engine",
        "local",
        "--vectors",
    ]
    assert segment_scenes.main(argv) == 0
    files = sorted((out / "vectors").iterdir())
    assert [f.name for f in files] == ["s1.parquet", "s2.parquet"]
    for f, scene in zip(files, ("s1", "s2"), strict=True):
        table = pq.read_table(f)
        raster = open_label_raster(out / f"{scene}.zarr")
        assert table.num_rows > 0 and set(table["scene"].to_pylist()) == {scene}
        labels = raster.labels[:]
        assert sum(table["area_m2"].to_pylist()) == (labels != 255).sum() * 100.0
        digests = set(table["model_digest"].to_pylist())
        assert digests == {read_attrs(out / f"{scene}.zarr")["model_digest"]}
    inode = files[0].stat().st_ino

    # A file in the way of s2's polygons (a folder): s2 fails, s1 is kept, labels stay.
    files[1].unlink()
    files[1].mkdir()
    assert segment_scenes.main(argv) == 1
    assert files[0].stat().st_ino == inode
    assert "s2.parquet: is a link or a folder" in capsys.readouterr().err
    assert open_label_raster(out / "s2.zarr").labels.shape == (96, 128)


def test_segment_scenes_vectors_format_chooses_the_format_and_adds_the_nights_layer(
    make_scene, make_checkpoint, tmp_path
):
    """``--vectors gpkg`` (what GDAL 3.6, without a Parquet driver, opens): one
    GeoPackage per scene and the night's layer, where the 40-column strip the
    two scenes share holds one set of polygons."""
    scenes = [
        make_scene(f"s{i}.tif", height=96, width=128, seed=i, transform=from_origin(x, 4e6, 10, 10))
        for i, x in ((1, 500_000), (2, 500_880))
    ]
    out = tmp_path / "out"
    argv = ["--model", str(make_checkpoint()), "--scenes", *map(str, scenes), "--out", str(out)]
    argv += ["--tile-size", "64", "--overlap", "32", "--engine", "local", "--vectors", "gpkg"]
    assert segment_scenes.main(argv) == 0
    assert sorted(p.name for p in (out / "vectors_gpkg").iterdir()) == ["s1.gpkg", "s2.gpkg"]
    assert not (out / "vectors").exists()
    night = out / "mosaic" / "polygons.gpkg"
    info = pyogrio.read_info(night)
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] == "Polygon"
    layer = gpd.read_file(night)
    whole = night_areas(list_outputs(out)).night
    by_class = layer.groupby("class_id").area_m2.sum().reindex(whole.class_id, fill_value=0)
    np.testing.assert_allclose(by_class, whole.area_m2, rtol=1e-9)
    union = shapely.union_all(layer.geometry.values).area
    assert layer.geometry.area.sum() == pytest.approx(union, rel=1e-12)  # no overlap
    per_scene = pd.concat(gpd.read_file(p) for p in sorted((out / "vectors_gpkg").iterdir()))
    assert per_scene.geometry.area.sum() > union + 30_000  # the strip, twice
    # A format it does not know is refused (--vectors alone stays GeoParquet: above).
    with pytest.raises(SystemExit) as exit:
        segment_scenes.main([*argv[:-1], "shp"])
    assert exit.value.code == 2


def test_vectorize_night_writes_the_nights_layer_of_one_folder(make_labels, tmp_path, capsys):
    out = tmp_path / "out"
    a = make_labels(blobs((100, 120), 1), name="a.zarr", out_dir=out)
    b = make_labels(
        blobs((100, 120), 2),
        name="b.zarr",
        out_dir=out,
        transform=from_origin(500_600, 4e6, 10, 10),
    )
    assert fcnrs(["vectorize", str(a), str(b), "--format", "fgb", "--night"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(out / "mosaic" / "polygons.fgb")
    layer = gpd.read_file(printed[-1])
    assert set(layer.scene) == {"a", "b"} and layer.crs.to_epsg() == 32633
    np.testing.assert_allclose(
        layer.area_m2.sum(), night_areas([a, b]).night.area_m2.sum(), rtol=1e-9
    )
    elsewhere = make_labels(blobs((50, 50), 3), name="c.zarr", out_dir=tmp_path / "other")
    assert fcnrs(["vectorize", str(a), str(elsewhere), "--night"]) == 1
    assert "the night's label rasters must be in one output folder" in capsys.readouterr().err
