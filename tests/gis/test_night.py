"""Whole-night answers: where scenes overlap, each ground pixel counts once, by
the rule the mosaic draws with (the last scene by name that has a label)."""

from __future__ import annotations

import io

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from fcnrs.gis.areas import query_areas
from fcnrs.gis.mosaic import build_mosaic
from fcnrs.gis.night import in_precedence
from fcnrs.gis.night_areas import NIGHT_COLUMNS, night_areas
from fcnrs.gis.night_polygons import night_polygons_path, write_night_polygons
from fcnrs.gis.rasters import list_outputs
from fcnrs.gis.vectors import vectorize
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.errors import OutputError

CLASSES = ("water", "forest", "field", "town")
UTM33 = "EPSG:32633"
#: Two 200 x 300 scenes of 10 m pixels on one grid; the east one starts 50
#: columns before the west one ends: a shared strip of 200 x 50 pixels.
WEST, EAST = (500_000, 4_000_000), (502_500, 4_000_000)
STRIP = 50


def blocks(height: int, width: int, seed: int) -> np.ndarray:
    """Classes in 20-px blocks, a nodata corner and two nodata patches, one at
    each end: whichever scene is on top has nodata inside the shared strip,
    where the one below must show."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (height // 20 + 1, width // 20 + 1)).astype(np.uint8)
    labels = np.kron(coarse, np.ones((20, 20), np.uint8))[:height, :width]
    labels[:30, :30] = 255
    labels[120:140, 10:25] = 255
    labels[60:80, 260:285] = 255
    return labels


@pytest.fixture(params=[("a", "b"), ("b", "a")], ids=["east-on-top", "west-on-top"])
def pair(request, make_labels, tmp_path):
    """The two scenes, named so that the east (first case) or the west one (second)
    is the later name: the one on top."""
    west_name, east_name = request.param
    out = tmp_path / "out"
    west, east = blocks(200, 300, 0), blocks(200, 300, 1)
    for name, labels, origin in ((west_name, west, WEST), (east_name, east, EAST)):
        make_labels(
            labels,
            name=f"{name}.zarr",
            out_dir=out,
            transform=from_origin(*origin, 10, 10),
            tile_size=64,
        )
    return out, west, east, east_name > west_name


def expected_night(west: np.ndarray, east: np.ndarray, east_on_top: bool) -> np.ndarray:
    """The night by hand on the 550-column grid both scenes share."""
    night = np.full((200, 550), 255, np.uint8)
    below, above = ((west, 0), (east, 250)) if east_on_top else ((east, 250), (west, 0))
    for labels, col in (below, above):
        window = night[:, col : col + 300]
        window[labels != 255] = labels[labels != 255]  # nodata never hides
    return night


def test_night_areas_count_the_shared_strip_once_as_the_mosaic_draws_it(pair):
    out, west, east, east_on_top = pair
    expected = expected_night(west, east, east_on_top)
    mosaic = build_mosaic(out)
    with rasterio.open(mosaic.vrt) as src:
        drawn = src.read(1)
        assert (src.transform.a, src.transform.c, src.transform.f) == (10, *WEST)
    # The mosaic draws the later name on top, and a scene's nodata never hides.
    np.testing.assert_array_equal(drawn, expected)
    strip = drawn[:, 250:300]
    top, under = (
        (east[:, :STRIP], west[:, 250:]) if east_on_top else (west[:, 250:], east[:, :STRIP])
    )
    assert np.array_equal(strip[top != 255], top[top != 255])
    assert (top == 255).sum() > 0 and np.array_equal(strip[top == 255], under[top == 255])

    areas = night_areas(list_outputs(out))
    assert list(areas.night.columns) == NIGHT_COLUMNS
    mosaic_pixels = np.bincount(drawn[drawn != 255], minlength=4)
    # Counted once: the mosaic's pixels (10 m: 100 m^2 each), to within 0.1% (here exactly).
    np.testing.assert_allclose(areas.night.area_m2, mosaic_pixels * 100.0, rtol=1e-3)
    assert areas.night.pixels.tolist() == mosaic_pixels.tolist()
    # Per scene, every pixel of each, as fcnrs areas says; their sum counts the
    # strip twice, by exactly the lower scene's labelled pixels under the top one's.
    pd.testing.assert_frame_equal(areas.scenes, query_areas(list_outputs(out)))
    twice = areas.scenes.groupby("class_id").pixels.sum().to_numpy() - mosaic_pixels
    hidden = under[(under != 255) & (top != 255)]
    assert twice.tolist() == np.bincount(hidden, minlength=4).tolist()
    assert twice.sum() > 1000
    # Each scene's share: what it adds to the night.
    shares = areas.shares.groupby("class_id").pixels.sum().to_numpy()
    assert shares.tolist() == mosaic_pixels.tolist()


def test_night_polygons_do_not_overlap_where_the_scenes_polygons_do(pair):
    out, west, east, east_on_top = pair
    outputs = list_outputs(out)
    done = write_night_polygons(outputs)
    assert done.path == night_polygons_path(out, "parquet") == out / "mosaic" / "polygons.parquet"
    night = gpd.read_parquet(done.path)
    assert night.crs.to_epsg() == 32633 and len(night) > 50
    areas = night_areas(outputs).night
    by_class = night.groupby("class_id").area_m2.sum().reindex(range(4), fill_value=0)
    np.testing.assert_allclose(by_class, areas.area_m2, rtol=1e-9)
    # No two polygons overlap: the outlines' union covers exactly their sum.
    planar = night.geometry.area
    assert planar.sum() == pytest.approx(shapely.union_all(night.geometry.values).area, rel=1e-12)
    tree = shapely.STRtree(night.geometry.values)
    pairs = tree.query(night.geometry.values, predicate="overlaps")
    assert pairs.shape[1] == 0
    # The strip holds one set of outlines: the top scene's, where it has labels.
    top = "b" if east_on_top else "a"
    strip = shapely.box(502_500 + 1, 4_000_000 - 2000 + 1, 503_000 - 1, 4_000_000 - 1)
    inside = night[night.intersects(strip)]
    assert top in set(inside.scene)
    # Per scene, the polygons overlap by the strip's labels counted twice (the
    # problem a night layer solves).
    per_scene = gpd.GeoDataFrame(
        pd.concat([gpd.read_parquet(vectorize(p).path) for p in outputs]), crs=night.crs
    )
    overlap = per_scene.geometry.area.sum() - shapely.union_all(per_scene.geometry.values).area
    labelled_twice = ((west[:, 250:] != 255) & (east[:, :STRIP] != 255)).sum() * 100.0
    assert overlap == pytest.approx(labelled_twice, rel=1e-9)
    # A re-run keeps the file; another precedence makes another one.
    assert write_night_polygons(outputs).kept


def test_a_scene_in_another_crs_is_counted_once_too(make_labels, tmp_path):
    """A lon/lat scene (about 8 x 11 m pixels) over the east half of a UTM scene:
    the night drops the UTM pixels whose centres fall on its labels, as the
    mosaic's nearest-neighbour warp does. The two measure on different grids
    (native pixels against 10 m mosaic pixels, and ellipsoidal against projected
    areas), so they agree to 0.5% here, not exactly; counting the shared ground
    twice would be 15% off."""
    out = tmp_path / "out"
    make_labels(
        blocks(200, 300, 0), name="a.zarr", out_dir=out, transform=from_origin(*WEST, 10, 10)
    )
    lon, lat = Transformer.from_crs(UTM33, "EPSG:4326", always_xy=True).transform(
        501_500, 3_999_500
    )
    make_labels(
        blocks(150, 200, 2),
        name="c.zarr",
        out_dir=out,
        crs="EPSG:4326",
        transform=from_origin(lon, lat, 1e-4, 1e-4),
        tile_size=64,
    )
    areas = night_areas(list_outputs(out))
    with rasterio.open(build_mosaic(out).vrt) as src:
        drawn = src.read(1)
    mosaic_m2 = np.bincount(drawn[drawn != 255], minlength=4) * 100.0
    np.testing.assert_allclose(areas.night.area_m2, mosaic_m2, rtol=5e-3)
    summed = areas.scenes.groupby("class_id").area_m2.sum().to_numpy()
    assert summed.sum() > 1.15 * mosaic_m2.sum()
    # The night's polygons, in the CRS both share most (a tie: the first by name, UTM).
    night = gpd.read_parquet(write_night_polygons(list_outputs(out)).path)
    assert night.crs.to_epsg() == 32633 and set(night.scene) == {"a", "c"}
    overlap = night.geometry.area.sum() - shapely.union_all(night.geometry.values).area
    assert overlap < 0.002 * night.geometry.area.sum()  # slivers along warped pixel edges


def test_precedence_is_by_scene_name_whatever_the_order_given(make_labels, tmp_path):
    out = tmp_path / "out"
    paths = [
        make_labels(
            blocks(64, 64, s), name=f"{n}.zarr", out_dir=out, transform=from_origin(*WEST, 10, 10)
        )
        for s, n in enumerate(["b-2", "b", "a"])
    ]
    assert [p.name for p in in_precedence(paths)] == ["a.zarr", "b.zarr", "b-2.zarr"]
    forward, backward = night_areas(paths), night_areas(paths[::-1])
    pd.testing.assert_frame_equal(forward.night, backward.night)
    # Three scenes on one footprint: the night is the last name's labels where it has them.
    top = blocks(64, 64, 0)
    lower = blocks(64, 64, 1)
    assert forward.night.pixels.sum() == (top != 255).sum() + ((top == 255) & (lower != 255)).sum()


def test_bad_nights_say_what_is_wrong(make_labels, tmp_path, capsys):
    with pytest.raises(OutputError, match="the night is empty"):
        night_areas([])
    out = tmp_path / "out"
    make_labels(blocks(64, 64, 0), name="a.zarr", out_dir=out)
    make_labels(blocks(64, 64, 1), name="b.zarr", out_dir=out, classes=("land", "sea", "x", "y"))
    with pytest.raises(OutputError, match=r"b.zarr: classes \['land'.*differ from a's"):
        night_areas(list_outputs(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit:
        fcnrs(["areas", str(empty), "--night"])
    assert exit.value.code == 2
    assert f"{empty}: no published label rasters" in capsys.readouterr().err


def test_fcnrs_areas_night_prints_one_row_per_class(make_labels, tmp_path, capsys):
    out = tmp_path / "out"
    for name, seed, origin in (("a", 0, WEST), ("b", 1, EAST)):
        make_labels(
            blocks(200, 300, seed),
            name=f"{name}.zarr",
            out_dir=out,
            transform=from_origin(*origin, 10, 10),
        )
    assert fcnrs(["areas", str(out), "--night", "--format", "csv"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(printed.columns) == NIGHT_COLUMNS
    expected = night_areas(list_outputs(out)).night
    assert printed.pixels.tolist() == expected.pixels.tolist()
    np.testing.assert_allclose(printed.area_m2, expected.area_m2)
    # With a box (the strip's top half, in UTM): only the pixels whose centres are in it.
    assert (
        fcnrs(
            [
                "areas",
                str(out),
                "--night",
                "--format",
                "csv",
                "--bbox",
                "502500,3999000,503000,4000000",
            ]
        )
        == 0
    )
    boxed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert (
        boxed.pixels.sum()
        == (
            expected_night(blocks(200, 300, 0), blocks(200, 300, 1), True)[:100, 250:300] != 255
        ).sum()
    )
