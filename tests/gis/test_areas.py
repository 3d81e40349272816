"""Areas per class, checked against independent computations."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from pyproj import Geod, Transformer
from rasterio.transform import from_origin

from fcnrs.gis.areas import COLUMNS, query_areas
from fcnrs.gis.rasters import list_outputs
from fcnrs.jobs import query_areas as query_job

CLASSES = ("water", "forest", "field", "town")


def geodesic_area(west: float, south: float, east: float, north: float) -> float:
    """Area of a lon/lat box on WGS84 by pyproj's geodesic polygon (edges along
    the parallels densified so the geodesics follow them)."""
    lons = np.concatenate([np.linspace(west, east, 400), np.linspace(east, west, 400)])
    lats = np.concatenate([np.full(400, south), np.full(400, north)])
    area, _ = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    return abs(area)


def by_class(table: pd.DataFrame, column: str) -> dict[str, float]:
    return dict(zip(table.class_name, table[column], strict=True))


def test_projected_area_is_pixel_count_times_pixel_area(make_labels):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (700, 500)).astype(np.uint8)
    labels[:50] = 255
    path = make_labels(labels, crs="EPSG:32633", transform=from_origin(400_000, 5e6, 10, 20))
    table = query_areas([path])
    assert list(table.columns) == COLUMNS
    counts = np.bincount(labels[labels != 255], minlength=4)
    assert by_class(table, "pixels") == dict(zip(CLASSES, counts.tolist(), strict=True))
    np.testing.assert_array_equal(table.area_m2, counts * 200.0)
    np.testing.assert_allclose(table.area_km2, counts * 200.0 / 1e6)


@pytest.mark.parametrize("south", [0.0, 60.0])
def test_geographic_areas_follow_the_ellipsoid_at_two_latitudes(make_labels, south):
    """0.01-degree pixels: at 60 N a pixel covers about half its equatorial area,
    so pixel count x res^2 would be wrong; each class is checked against a
    geodesic polygon of exactly the cells it covers."""
    res = 0.01
    labels = np.zeros((100, 150), np.uint8)
    labels[50:, :] = 1  # the southern half is forest
    labels[:, 120:] = 255  # nodata on the east
    transform = from_origin(10.0, south + 1.0, res, res)
    path = make_labels(labels, crs="EPSG:4326", transform=transform, tile_size=64)
    areas = by_class(query_areas([path]), "area_m2")
    expect_water = geodesic_area(10.0, south + 0.5, 11.2, south + 1.0)
    expect_forest = geodesic_area(10.0, south, 11.2, south + 0.5)
    assert areas["water"] == pytest.approx(expect_water, rel=0.005)
    assert areas["forest"] == pytest.approx(expect_forest, rel=0.005)
    # Much tighter in fact: the closed form is exact for cells between parallels.
    assert areas["forest"] == pytest.approx(expect_forest, rel=1e-6)
    naive = 6000 * (111_320 * res) ** 2
    if south == 60.0:
        assert areas["water"] < 0.52 * naive


def test_bbox_cuts_through_a_scene_by_pixel_centres(make_labels):
    labels = np.full((300, 400), 2, np.uint8)
    labels[:, 200:] = 0
    path = make_labels(labels, transform=from_origin(500_000, 4_000_000, 10, 10))
    # x from 501000 to 503004 -> columns 100..299 (centres 501005..502995); y from
    # 3998000 to 3999500 -> rows 50..199.
    table = query_areas([path], bbox=(501_000, 3_998_000, 503_004, 3_999_500))
    assert by_class(table, "pixels") == {
        "water": 100 * 150,
        "forest": 0,
        "field": 100 * 150,
        "town": 0,
    }
    assert by_class(table, "area_m2")["water"] == 100 * 150 * 100.0
    # A box that misses the scene counts nothing.
    missed = query_areas([path], bbox=(0, 0, 10, 10))
    assert missed.pixels.sum() == 0 and len(missed) == 4


def test_bbox_in_another_crs_matches_pixel_centres_tested_one_by_one(make_labels):
    labels = np.full((400, 400), 1, np.uint8)
    labels[::3] = 2
    transform = from_origin(500_000, 4_000_000, 10, 10)
    path = make_labels(labels, transform=transform)
    bbox = (15.005, 36.125, 15.03, 36.14)  # lon/lat, inside the UTM 33N scene
    table = query_areas([path], bbox=bbox, bbox_crs="EPSG:4326")
    # Independent: every pixel centre to lon/lat, then the plain box test.
    cols, rows = np.meshgrid(np.arange(400) + 0.5, np.arange(400) + 0.5)
    x, y = transform * (cols, rows)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    inside = (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])
    expect = np.bincount(labels[inside], minlength=4)
    got = table.set_index("class_name").pixels
    assert inside.sum() > 10_000 and 0 < inside.mean() < 0.5
    for k, name in enumerate(CLASSES):
        assert abs(got[name] - expect[k]) <= 2  # only pixels on the box's edge may differ


def test_cli_formats_classes_filter_and_manifest_join(make_labels, tmp_path, capsys):
    out = tmp_path / "labels"
    make_labels(np.full((64, 64), 0, np.uint8), name="a.zarr", out_dir=out)
    make_labels(np.full((32, 64), 3, np.uint8), name="b.zarr", out_dir=out)
    (out / ".c.zarr.partial").mkdir()  # a scene still being written is not listed
    assert [p.name for p in list_outputs(out)] == ["a.zarr", "b.zarr"]
    assert query_job.main([str(out), "--format", "csv", "--classes", "water,town"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns) == COLUMNS
    assert table[["scene", "class_name", "pixels"]].values.tolist() == [
        ["a", "water", 4096],
        ["a", "town", 0],
        ["b", "water", 0],
        ["b", "town", 2048],
    ]
    with pytest.raises(SystemExit) as err:
        query_job.main([str(out), "--format", "parquet"])
    assert err.value.code == 2
    pq = tmp_path / "areas.parquet"
    assert query_job.main([str(out), "--format", "parquet", "--output", str(pq)]) == 0
    areas = pd.read_parquet(pq)
    assert areas.pixels.sum() == 4096 + 2048 and areas.area_m2.sum() == (4096 + 2048) * 100
    # Joins with a run manifest on the output path it records.
    manifest = pd.DataFrame({"output": [str(out / "a.zarr"), str(out / "b.zarr")], "status": "ok"})
    joined = areas.merge(manifest, on="output")
    assert len(joined) == len(areas) == 8
    for bad in (["--bbox", "1,2,3"], ["--bbox", "3,2,1,4"], ["--bbox-crs", "EPSG:0"]):
        with pytest.raises(SystemExit) as err:
            query_job.main([str(out), *bad])
        assert err.value.code == 2
