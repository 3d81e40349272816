"""Polygons of label rasters: exact across strips, bounded reads, the files readers open."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS, Geod
from rasterio.features import shapes
from rasterio.transform import from_origin
from scipy import ndimage

from fcnrs.gis.areas import query_areas
from fcnrs.gis.polygons import VectorSettings, polygons
from fcnrs.gis.rasters import open_label_raster
from fcnrs.gis.strips import PixelPolygons, pixel_polygons
from fcnrs.gis.vector_files import SOURCE_KEY
from fcnrs.gis.vectors import vectorize

UTM = from_origin(500_000, 4_000_000, 10, 10)
#: 0.001-degree pixels whose top edge is at 60.3 N: pixels are half as wide as at the equator.
LONLAT_60N = from_origin(10.0, 60.3, 0.001, 0.001)


def blobs(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Four classes in smooth random blobs, a nodata corner."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 6)
    labels = np.digitize(noise, np.quantile(noise, [0.25, 0.5, 0.75])).astype(np.uint8)
    labels[:40, :70] = 255
    return labels


def table_of(raster, settings: VectorSettings | None = None) -> pa.Table:
    return pa.concat_tables(polygons(raster, settings=settings or VectorSettings()))


def geoms(table) -> np.ndarray:
    return shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))


def per_class(table, column: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in zip(table["class_name"].to_pylist(), table[column].to_pylist(), strict=True):
        out[name] = out.get(name, 0.0) + value
    return out


@pytest.mark.parametrize(
    ("crs", "transform"), [("EPSG:32633", UTM), ("EPSG:4326", LONLAT_60N)], ids=["utm", "lonlat60N"]
)
def test_class_areas_equal_the_area_query_and_geodesic_polygon_areas(make_labels, crs, transform):
    labels = blobs((300, 300))
    path = make_labels(labels, crs=crs, transform=transform, tile_size=64)
    table = table_of(open_label_raster(path))
    polys = geoms(table)
    assert shapely.is_valid(polys).all()
    assert set(shapely.get_type_id(polys)) == {3}  # Polygon, never Multi
    expect = {r.class_name: r.area_m2 for r in query_areas([path]).itertuples()}
    got = per_class(table, "area_m2")
    for name in expect:
        assert got[name] == pytest.approx(expect[name], rel=1e-3)
        assert got[name] == pytest.approx(expect[name], rel=1e-9)  # the same pixels, in fact
    # Independently, the written outlines measured as polygons: planar in UTM;
    # pyproj's geodesic area on WGS84 in lon/lat, edges densified so that they
    # follow the parallels the pixel edges lie on.
    if crs == "EPSG:32633":
        planar = shapely.area(polys)
        np.testing.assert_allclose(planar, table["area_m2"].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(shapely.length(polys), table["perimeter_m"], rtol=1e-12)
    else:
        geod = Geod(ellps="WGS84")
        dense = shapely.segmentize(polys, 0.0005)
        # Areas from the oriented polygons (exterior minus holes); lengths ring by ring.
        area = [geod.geometry_area_perimeter(p)[0] for p in dense]
        length = [
            sum(geod.line_length(*np.asarray(r.coords).T) for r in (p.exterior, *p.interiors))
            for p in dense
        ]
        np.testing.assert_allclose(area, table["area_m2"], rtol=1e-3)
        np.testing.assert_allclose(length, table["perimeter_m"], rtol=1e-3)
        # At 60 N, degrees squared times the equatorial metres would be twice too large.
        naive = (labels != 255).sum() * (111_320 * 0.001) ** 2
        assert sum(got.values()) < 0.52 * naive


def test_strips_give_exactly_the_polygons_of_a_whole_raster_pass(make_labels):
    """Chunk rows of 64 against GDAL's polygonizer over the whole array: the same
    polygons, vertex for vertex: the seams leave nothing behind."""
    labels = blobs((300, 300), seed=5)
    raster = open_label_raster(make_labels(labels, tile_size=64))
    got = PixelPolygons.join(list(pixel_polygons(raster.labels, None)))
    whole = [
        (shapely.geometry.shape(g), int(v))
        for g, v in shapes(labels, mask=labels != 255, connectivity=4)
    ]
    assert len(got) == len(whole) > 20
    assert sorted(
        (int(c), shapely.normalize(g).wkt) for c, g in zip(got.class_id, got.geometry, strict=True)
    ) == sorted((c, shapely.normalize(g).wkt) for g, c in whole)
    crossing = [g for g in got.geometry if shapely.bounds(g)[3] - shapely.bounds(g)[1] > 64]
    assert len(crossing) >= 4  # many polygons did cross strip seams


def test_ring_over_four_chunks_is_one_polygon_with_its_hole(make_labels):
    labels = np.zeros((128, 128), np.uint8)
    yy, xx = np.mgrid[:128, :128]
    r2 = (yy - 63.5) ** 2 + (xx - 63.5) ** 2
    ring = (r2 < 40**2) & (r2 >= 20**2)
    labels[ring] = 2
    raster = open_label_raster(make_labels(labels, tile_size=64))
    assert raster.labels.chunks == (64, 64)
    table = table_of(raster)
    field = table.filter(np.array(table["class_name"].to_pylist()) == "field")
    assert field.num_rows == 1
    (poly,) = geoms(field)
    assert len(poly.interiors) == 1 and poly.is_valid
    assert poly.area == ring.sum() * 100 == field["area_m2"][0].as_py()
    # The water outside and the water inside the hole are two polygons.
    assert table.num_rows == 3


def test_checkerboard_pixels_are_each_their_own_polygon(make_labels):
    """Pixels of one class touching only at corners never merge (4-connectivity),
    here across chunk seams too."""
    yy, xx = np.mgrid[:96, :96]
    labels = ((yy + xx) % 2).astype(np.uint8)
    table = table_of(open_label_raster(make_labels(labels, tile_size=32)))
    assert table.num_rows == 96 * 96
    np.testing.assert_array_equal(table["area_m2"], 100.0)
    np.testing.assert_array_equal(table["perimeter_m"], 40.0)


def test_nodata_never_becomes_a_polygon(make_labels):
    labels = np.full((150, 150), 1, np.uint8)
    labels[30:120, 30:120] = 255  # a nodata square across four chunks
    labels[60:90, 60:90] = 3  # an island of town inside it
    table = table_of(open_label_raster(make_labels(labels, tile_size=64)))
    assert sorted(table["class_name"].to_pylist()) == ["forest", "town"]
    by_class = per_class(table, "area_m2")
    assert by_class == {"forest": (150**2 - 90**2) * 100.0, "town": 30**2 * 100.0}
    forest = geoms(table)[np.array(table["class_name"].to_pylist()) == "forest"][0]
    assert len(forest.interiors) == 1  # the nodata is a hole, never a feature


class SpyArray:
    """A label array that records the shape of every read."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = array.shape
        self.chunks = array.chunks
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        block = self.array[key]
        self.reads.append(block.shape)
        return block


def test_reads_one_chunk_row_at_a_time(make_labels):
    labels = blobs((300, 300), seed=2)
    raster = open_label_raster(make_labels(labels, tile_size=64))
    spy = SpyArray(raster.labels)
    table = table_of(dataclasses.replace(raster, labels=spy))
    assert table.num_rows > 20
    # Five strips of full width, each at most one chunk row high, each read once.
    assert spy.reads == [(64, 300)] * 4 + [(44, 300)]
    assert max(h * w for h, w in spy.reads) <= raster.labels.chunks[0] * 300


def test_simplify_and_min_area(make_labels):
    labels = np.zeros((200, 200), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    labels[(yy - 100) ** 2 + (xx - 100) ** 2 < 70**2] = 1  # a disc of forest
    labels[5, 5] = 3  # one pixel: 100 m^2
    labels[10:12, 10:12] = 3  # four pixels: 400 m^2
    labels[190:195, 10:30] = 2  # 100 pixels: 10,000 m^2
    path = make_labels(labels, tile_size=64)
    raster = open_label_raster(path)
    exact = table_of(raster)
    assert exact.num_rows == 5
    simple = table_of(raster, VectorSettings(simplify=15.0))
    disc, disc_simple = (
        geoms(t)[np.array(t["class_name"].to_pylist()) == "forest"][0] for t in (exact, simple)
    )
    # The disc's staircase has a vertex at every step; 15 m (1.5 px) leaves a few dozen.
    assert len(disc.exterior.coords) > 300 and len(disc_simple.exterior.coords) < 60
    assert disc_simple.is_valid and disc_simple.area == pytest.approx(disc.area, rel=0.01)
    assert shapely.is_valid(geoms(simple)).all()
    # Measures are the pixels': simplifying draws, it does not change them.
    assert simple["area_m2"].to_pylist() == exact["area_m2"].to_pylist()
    kept = table_of(raster, VectorSettings(min_area_m2=400.0))
    disc_px, rest_px = (labels == 1).sum(), (labels == 0).sum()
    assert sorted(kept["area_m2"].to_pylist()) == [400.0, 10_000.0, disc_px * 100, rest_px * 100]
    assert table_of(raster, VectorSettings(min_area_m2=401.0)).num_rows == 3
    with pytest.raises(ValueError, match="simplify must be a finite number >= 0"):
        VectorSettings(simplify=-1)


def many_squares(size: int = 300, seed: int = 1) -> np.ndarray:
    """Forest with many small squares of water and town: lots of small features."""
    rng = np.random.default_rng(seed)
    labels = np.ones((size, size), np.uint8)
    for y, x in rng.integers(0, size - 6, (400, 2)):
        labels[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = rng.choice([0, 3])
    return labels


def test_geoparquet_metadata_and_a_bbox_filter_that_skips_row_groups(make_labels):
    path = make_labels(many_squares(), tile_size=64)
    done = vectorize(path, row_group_rows=32)
    assert done.path == Path(path).parent / "vectors" / "scene.parquet" and done.features > 300
    meta = pq.read_metadata(done.path)
    geo = json.loads(meta.metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert CRS.from_json_dict(col["crs"]) == CRS.from_epsg(32633)
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert col["bbox"] == [500_000.0, 3_997_000.0, 503_000.0, 4_000_000.0]
    assert meta.metadata[SOURCE_KEY.encode()] == open_label_raster(path).fingerprint.encode()
    assert meta.num_row_groups >= 10

    # A box in one corner. Row-group statistics of the bbox columns tell which
    # row groups may hold a feature that meets it: most need not be read.
    box = (500_000.0, 3_999_000.0, 500_600.0, 3_999_600.0)
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]

    def stats(rg, name):
        return meta.row_group(rg).column(names.index(f"bbox.{name}")).statistics

    may_meet = [
        rg
        for rg in range(meta.num_row_groups)
        if stats(rg, "xmin").min <= box[2]
        and stats(rg, "xmax").max >= box[0]
        and stats(rg, "ymin").min <= box[3]
        and stats(rg, "ymax").max >= box[1]
    ]
    assert len(may_meet) <= meta.num_row_groups // 3

    meets = (
        (ds.field("bbox", "xmin") <= box[2])
        & (ds.field("bbox", "xmax") >= box[0])
        & (ds.field("bbox", "ymin") <= box[3])
        & (ds.field("bbox", "ymax") >= box[1])
    )
    hit = ds.dataset(done.path.parent, format="parquet").to_table(filter=meets)
    every = pq.read_table(done.path)
    by_geometry = shapely.intersects(shapely.envelope(geoms(every)), shapely.box(*box))
    assert 0 < hit.num_rows == by_geometry.sum() < every.num_rows // 3
    # Every feature that meets the box is in a row group the statistics kept.
    kept = pq.ParquetFile(done.path).read_row_groups(may_meet)
    assert ds.dataset(kept).to_table(filter=meets).num_rows == hit.num_rows
    import geopandas as gpd

    frame = gpd.read_parquet(done.path.parent, bbox=box)
    assert len(frame) == hit.num_rows and frame.crs == CRS.from_epsg(32633)


def test_gdal_geopandas_and_duckdb_read_the_outputs(make_labels, tmp_path):
    out = tmp_path / "labels"
    a = make_labels(blobs((150, 200)), name="a.zarr", out_dir=out, tile_size=64)
    b = make_labels(many_squares(120), name="b.zarr", out_dir=out, tile_size=64)
    written = {fmt: [vectorize(p, fmt=fmt) for p in (a, b)] for fmt in ("parquet", "fgb", "gpkg")}
    counts = [w.features for w in written["parquet"]]
    assert [w.features for w in written["fgb"]] == counts == [w.features for w in written["gpkg"]]
    assert written["fgb"][0].path == out / "vectors_fgb" / "a.fgb"

    # pyogrio's own GDAL (3.10 or later) reads both formats with CRS and metadata.
    for fmt in ("fgb", "gpkg"):
        info = pyogrio.read_info(written[fmt][0].path)
        assert info["crs"] == "EPSG:32633" and info["features"] == counts[0]
        assert info["geometry_type"] == "Polygon"
        assert info["layer_metadata"][SOURCE_KEY] == open_label_raster(a).fingerprint

    # geopandas: the folder as one dataset.
    import geopandas as gpd

    frame = gpd.read_parquet(out / "vectors")
    assert len(frame) == sum(counts) and frame.crs == CRS.from_epsg(32633)
    assert sorted(set(frame.scene)) == ["a", "b"] and frame.is_valid.all()

    # DuckDB reads the dataset's geometry as its core GEOMETRY type, with the CRS,
    # and its core ST_ functions query it. (The spatial extension would be fetched
    # at run time; autoloading is off so nothing is.)
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    files = f"read_parquet('{out / 'vectors'}/*.parquet')"
    rows = con.execute(
        f"SELECT scene, count(*), sum(area_m2) FROM {files} GROUP BY scene ORDER BY scene"
    ).fetchall()
    areas = query_areas([a, b])
    assert [(s, n) for s, n, _ in rows] == [("a", counts[0]), ("b", counts[1])]
    for (scene, _, area), expect in zip(rows, areas.groupby("scene").area_m2.sum(), strict=True):
        assert area == pytest.approx(expect, rel=1e-9), scene
    box = (
        "POLYGON((500000 3999000, 500600 3999000, 500600 3999600, 500000 3999600, 500000 3999000))"
    )
    (hits,) = con.execute(
        f"SELECT count(*) FROM {files} WHERE ST_Intersects_Extent(geometry, '{box}'::GEOMETRY)"
    ).fetchone()
    (plain,) = con.execute(
        f"SELECT count(*) FROM {files} WHERE bbox.xmin <= 500600 AND bbox.xmax >= 500000 "
        "AND bbox.ymin <= 3999600 AND bbox.ymax >= 3999000"
    ).fetchone()
    assert 0 < hits == plain < sum(counts)
    (crs_json,) = con.execute(f"SELECT ST_CRS(geometry) FROM {files} LIMIT 1").fetchone()
    assert CRS.from_user_input(crs_json) == CRS.from_epsg(32633)
    loaded = {
        r[0]
        for r in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded"
        ).fetchall()
    }
    assert "spatial" not in loaded


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="Debian's gdal-bin is not installed")
def test_debian_ogrinfo_reads_flatgeobuf_and_geopackage(make_labels):
    """GDAL 3.6 (what QGIS on many distributions uses; it has no Parquet driver)."""
    path = make_labels(blobs((150, 200)), tile_size=64)
    for fmt in ("fgb", "gpkg"):
        done = vectorize(path, fmt=fmt)
        text = subprocess.run(
            ["ogrinfo", "-so", "-al", str(done.path)], capture_output=True, text=True, check=True
        ).stdout
        assert f"Feature Count: {done.features}" in text and "Geometry: Polygon" in text
        assert 'ID["EPSG",32633]]' in text and "area_m2: Real" in text
