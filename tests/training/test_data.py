"""The labeled-scene table and class lists that fine-tuning starts from."""

from __future__ import annotations

import json

import pytest
from rasterio.transform import from_origin

from fcnrs.pipeline.errors import SceneError
from fcnrs.training.data import parse_classes, read_scene_table


def test_table_paths_relative_to_the_csv_and_grids_checked(make_scene, tmp_path):
    make_scene("a.tif", height=64, width=80)
    make_scene("a_label.tif", height=64, width=80, bands=1, dtype="uint8", mask=None)
    make_scene("b.tif", height=64, width=80, seed=1)
    make_scene("b_label.tif", height=64, width=80, bands=1, dtype="uint8", mask=None)
    table = tmp_path / "scenes.csv"
    table.write_text("image,label,split\na.tif,a_label.tif,train\nb.tif,b_label.tif,VAL\n")
    scenes = read_scene_table(table)
    assert [(s.split, s.image) for s in scenes] == [
        ("train", str((tmp_path / "a.tif").resolve())),
        ("val", str((tmp_path / "b.tif").resolve())),
    ]


def test_label_on_another_grid_fails_naming_both_files(make_scene, tmp_path):
    make_scene("img.tif", height=64, width=80)
    make_scene(
        "shifted.tif",
        height=64,
        width=80,
        bands=1,
        dtype="uint8",
        mask=None,
        transform=from_origin(500010.5, 4100000.25, 10.0, 10.0),
    )
    make_scene("small.tif", height=60, width=80, bands=1, dtype="uint8", mask=None)
    make_scene(
        "utm34.tif", height=64, width=80, bands=1, dtype="uint8", mask=None, crs="EPSG:32634"
    )
    for label, reason in [
        ("shifted.tif", "transform"),
        ("small.tif", "size 64x80 vs 60x80"),
        ("utm34.tif", "CRS EPSG:32633 vs EPSG:32634"),
    ]:
        table = tmp_path / "t.csv"
        table.write_text(f"image,label,split\nimg.tif,{label},train\n")
        with pytest.raises(
            SceneError, match=rf"img\.tif: and its label raster .*{label}.*{reason}"
        ):
            read_scene_table(table)


def test_bad_tables_are_refused(tmp_path, make_scene):
    bad = tmp_path / "bad.csv"
    bad.write_text("img,lbl\nx,y\n")
    with pytest.raises(
        SceneError, match=r"bad\.csv: expected a CSV with columns image,label,split"
    ):
        read_scene_table(bad)
    make_scene("a.tif", height=32, width=32)
    bad.write_text("image,label,split\na.tif,a.tif,test\n")
    with pytest.raises(SceneError, match="line 2: split must be train or val"):
        read_scene_table(bad)


def test_classes_from_names_json_and_yaml(tmp_path):
    plain = parse_classes("forest, water ,urban")
    assert plain.names == ("forest", "water", "urban") and len(set(plain.colors)) == 3
    js = tmp_path / "classes.json"
    js.write_text(json.dumps([{"name": "land", "color": [0, 128, 0]}, {"name": "water"}]))
    got = parse_classes(str(js))
    assert got.names == ("land", "water") and got.colors[0] == (0, 128, 0)
    ym = tmp_path / "classes.yaml"
    ym.write_text("land: [0, 128, 0]\nwater: [0, 0, 255]\n")
    assert parse_classes(str(ym)).colors == ((0, 128, 0), (0, 0, 255))
    with pytest.raises(ValueError, match="at least two classes"):
        parse_classes("water")
    with pytest.raises(ValueError, match="unique"):
        parse_classes("a,b,a")
