"""One raster layer for the night: the VRT (GDAL 3.6 and 3.10) and the GTI index
(GDAL 3.10) show every scene's labels in place, a foreign-CRS scene included."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from fcnrs.gis.mosaic import build_mosaic
from fcnrs.jobs.cli import main as fcnrs

CLASSES = ("water", "forest", "field", "town")
COLORS = ((0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0))
UTM33 = "EPSG:32633"
#: Scene a's and b's top-left corners (10 m pixels, 200 x 300): b starts where a ends.
A_ORIGIN, B_ORIGIN = (500_000, 4_000_000), (503_000, 4_000_000)
#: Scene c (EPSG:4326, 1e-4 degree pixels): its top-left corner 300 m south of a's
#: bottom edge, in lon/lat.
C_RES = 1e-4
C_ORIGIN = Transformer.from_crs(UTM33, "EPSG:4326", always_xy=True).transform(500_500, 3_997_700)


def blocks(height: int, width: int, seed: int) -> np.ndarray:
    """Classes in 40-px blocks with a nodata corner: resampling can only disagree
    along block edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (height // 40 + 1, width // 40 + 1)).astype(np.uint8)
    labels = np.kron(coarse, np.ones((40, 40), np.uint8))[:height, :width]
    labels[:30, :30] = 255
    return labels


@pytest.fixture
def night(make_labels, tmp_path):
    out = tmp_path / "out"
    scenes = {"a": blocks(200, 300, 0), "b": blocks(200, 300, 1), "c": blocks(120, 150, 2)}
    grids = {
        "a": (UTM33, from_origin(*A_ORIGIN, 10, 10)),
        "b": (UTM33, from_origin(*B_ORIGIN, 10, 10)),
        "c": ("EPSG:4326", from_origin(*C_ORIGIN, C_RES, C_RES)),
    }
    for name, labels in scenes.items():
        crs, transform = grids[name]
        make_labels(
            labels, name=f"{name}.zarr", out_dir=out, crs=crs, transform=transform, tile_size=64
        )
    return out, scenes


def expected_c(grid_transform, shape, labels_c) -> tuple[np.ndarray, np.ndarray]:
    """Scene c's label under each mosaic pixel centre (255 outside it), and where it is."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    xs, ys = grid_transform @ (cols + 0.5, rows + 0.5)
    lon, lat = Transformer.from_crs(UTM33, "EPSG:4326", always_xy=True).transform(xs, ys)
    c_col = np.floor((lon - C_ORIGIN[0]) / C_RES).astype(int)
    c_row = np.floor((C_ORIGIN[1] - lat) / C_RES).astype(int)
    inside = (c_col >= 0) & (c_col < labels_c.shape[1]) & (c_row >= 0) & (c_row < labels_c.shape[0])
    expected = np.full(shape, 255, np.uint8)
    expected[inside] = labels_c[c_row[inside], c_col[inside]]
    return expected, inside


def check_pixels(mosaic: np.ndarray, transform, scenes) -> float:
    """a and b exactly in place; returns the share of c's footprint that agrees."""
    assert transform.a == 10 and transform.e == -10
    col0, row0 = ~transform @ A_ORIGIN
    assert (col0, row0) == (round(col0), round(row0))  # a's pixels sit on the grid
    col0, row0 = int(col0), int(row0)
    assert np.array_equal(mosaic[row0 : row0 + 200, col0 : col0 + 300], scenes["a"])
    assert np.array_equal(mosaic[row0 : row0 + 200, col0 + 300 : col0 + 600], scenes["b"])
    expected, inside = expected_c(transform, mosaic.shape, scenes["c"])
    below = mosaic[row0 + 200 :]
    # Outside every scene: nodata; inside c: c's labels up to nearest-neighbour
    # resampling across a change of CRS.
    assert (below[~inside[row0 + 200 :]] == 255).all()
    assert inside.sum() > 15_000  # c's 18,000 pixels, at about 9 x 11 m each
    return float((mosaic[inside] == expected[inside]).mean())


def test_vrt_is_one_paletted_layer_with_every_scene_in_place(night):
    out, scenes = night
    done = build_mosaic(out)
    assert done.crs.to_string() == UTM33  # two of three scenes
    assert done.scenes == ("a", "b", "c") and done.exported == ("a", "b", "c")
    assert [p.name for p in done.warped] == ["c.vrt"]
    with rasterio.open(done.vrt) as vrt:
        assert vrt.count == 1 and vrt.nodata == 255 and vrt.crs.to_string() == UTM33
        assert {vrt.colormap(1)[k][:3] for k in range(4)} == set(COLORS)
        assert vrt.colormap(1)[255][3] == 0
        mosaic = vrt.read(1)
        agree = check_pixels(mosaic, vrt.transform, scenes)
    assert agree > 0.99  # measured: 1.0
    # A re-run keeps the COGs and rewrites the index.
    assert build_mosaic(out).exported == ()


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo (Debian gdal-bin) absent")
def test_debian_gdal_reads_the_vrt_with_colours_names_and_the_warped_scene(night, tmp_path):
    out, _ = night
    done = build_mosaic(out)
    info = json.loads(
        subprocess.run(
            ["gdalinfo", "-json", str(done.vrt)], check=True, capture_output=True, text=True
        ).stdout
    )
    band = info["bands"][0]
    assert band["colorInterpretation"] == "Palette" and band["noDataValue"] == 255
    assert band["categories"] == list(CLASSES)
    assert [e[:3] for e in band["colorTable"]["entries"][:4]] == [list(c) for c in COLORS]
    # Its own pixels (gdal_translate of the same version), the warped VRT included.
    copy = tmp_path / "debian.tif"
    subprocess.run(
        ["gdal_translate", "-q", str(done.vrt), str(copy)], check=True, capture_output=True
    )
    with rasterio.open(copy) as tif, rasterio.open(done.vrt) as vrt:
        assert np.array_equal(tif.read(1), vrt.read(1))


def test_gti_index_gives_the_same_layer_through_rasterio(night):
    out, scenes = night
    done = build_mosaic(out)
    with rasterio.open(done.vrt) as vrt:
        reference = vrt.read(1)
    with rasterio.open(done.gti) as gti:
        assert gti.driver == "GTI"
        assert gti.shape == reference.shape and gti.nodata == 255
        assert {gti.colormap(1)[k][:3] for k in range(4)} == set(COLORS)
        mosaic = gti.read(1)
        agree = check_pixels(mosaic, gti.transform, scenes)
    assert agree > 0.99  # measured: 1.0
    # GTI warps c from its COG on the fly; the VRT through its warped VRT.
    assert (mosaic == reference).mean() > 0.999  # measured: equal
    # The index is a GeoPackage a GIS opens as a vector layer of footprints.
    with sqlite3.connect(done.gti) as con:
        rows = con.execute("SELECT scene, crs, location FROM tiles ORDER BY sort_key").fetchall()
    assert rows == [
        ("a", UTM33, "../cogs/a.tif"),
        ("b", UTM33, "../cogs/b.tif"),
        ("c", "EPSG:4326", "../cogs/c.tif"),
    ]


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo (Debian gdal-bin) absent")
def test_debian_ogr_reads_the_index_as_a_vector_layer(night):
    out, _ = night
    done = build_mosaic(out)
    listing = subprocess.run(
        ["ogrinfo", "-ro", "-so", "-al", str(done.gti)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Geometry: Polygon" in listing and "Feature Count: 3" in listing
    assert "UTM zone 33N" in listing


def test_crs_flag_and_cli(night, tmp_path, capsys):
    out, _ = night
    (tmp_path / "empty").mkdir()
    assert fcnrs(["mosaic", str(tmp_path / "empty")]) == 1
    assert "no published label rasters" in capsys.readouterr().err
    code = fcnrs(["mosaic", str(out), "--crs", "EPSG:4326", "--quicklook", str(out / "n.png")])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed[:2] == [
        str(out / "mosaic" / "labels.vrt"),
        str(out / "mosaic" / "labels.gti.gpkg"),
    ]
    with rasterio.open(out / "mosaic" / "labels.vrt") as vrt:
        assert vrt.crs.to_string() == "EPSG:4326"
        assert vrt.res == (C_RES, C_RES)  # c's grid: a and b are warped onto it
    assert sorted(p.name for p in (out / "mosaic" / "warped").iterdir()) == ["a.vrt", "b.vrt"]
    with rasterio.open(out / "n.png") as png:
        assert png.driver == "PNG" and max(png.shape) == 512
