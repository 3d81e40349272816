"""The STAC catalogue: pystac reads it back, every href resolves, core STAC
validates offline against pystac's bundled 1.1.0 schemas, the projection and
classification fields against hand-written schemas of their v2.0.0 field
tables; the nightly run keeps it current."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
from pyproj import CRS, Transformer
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.transform import Affine, from_origin

from fcnrs.gis.catalog import LocationStacIO, scene_history
from fcnrs.gis.cog import export_cog
from fcnrs.gis.rasters import PublishedOutput
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.jobs.segment_scenes import main as segment
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.storage import Location

PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
#: A transverse Mercator with no EPSG code: the Item says proj:wkt2 instead.
CUSTOM_CRS = "+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m"

#: The projection extension v2.0.0's fields, as its README defines them.
PROJ_FIELDS = {
    "type": "object",
    "properties": {
        "proj:code": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9.-]+:[A-Za-z0-9.-]+$"},
        "proj:wkt2": {"type": ["string", "null"]},
        "proj:projjson": {"type": ["object", "null"]},
        "proj:bbox": {
            "type": "array",
            "items": {"type": "number"},
            "oneOf": [{"minItems": 4, "maxItems": 4}, {"minItems": 6, "maxItems": 6}],
        },
        "proj:shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": 2,
            "maxItems": 2,
        },
        "proj:transform": {
            "type": "array",
            "items": {"type": "number"},
            "oneOf": [{"minItems": 6, "maxItems": 6}, {"minItems": 9, "maxItems": 9}],
        },
    },
    # v2.0.0 has no other proj: field (proj:epsg became proj:code).
    "patternProperties": {"^(?!proj:)": {}},
    "additionalProperties": False,
}
#: The classification extension v2.0.0's class object, as its README defines it.
CLASS_OBJECT = {
    "type": "object",
    "required": ["value", "name"],
    "properties": {
        "value": {"type": "integer"},
        "name": {"type": "string", "pattern": "^[0-9A-Za-z_-]+$"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "color_hint": {"type": "string", "pattern": "^[0-9A-Fa-f]{6}$"},
        "nodata": {"type": "boolean"},
        "percentage": {"type": "number", "minimum": 0, "maximum": 100},
        "count": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}
CLASSES_FIELD = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": CLASS_OBJECT,
}


@pytest.fixture
def offline(monkeypatch):
    """Any attempt by pystac to fetch a URL (a schema, say) fails the test."""
    read_local = pystac.stac_io.DefaultStacIO.read_text_from_href

    def local_only(self, href):
        assert "://" not in href, f"pystac tried to fetch {href}"
        return read_local(self, href)

    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", local_only)


def validate_offline(path: Path) -> dict:
    """Core STAC 1.1.0 (pystac's bundled schemas), then the extension fields."""
    data = json.loads(path.read_text())
    kind = pystac.STACObjectType.ITEM if data["type"] == "Feature" else "Collection"
    JsonSchemaSTACValidator().validate_core(data, kind, data["stac_version"], str(path))
    if data["type"] == "Feature":
        assert set(data["stac_extensions"]) == {PROJ, CLASSIFICATION}
        jsonschema.validate(data["properties"], PROJ_FIELDS)
        for asset in data["assets"].values():
            jsonschema.validate(asset, PROJ_FIELDS)
            if "classification:classes" in asset:
                jsonschema.validate(asset["classification:classes"], CLASSES_FIELD)
    return data


def read_back(out: Path) -> tuple[pystac.Collection, dict[str, pystac.Item]]:
    """The catalogue through pystac, each file validated, each asset on disk."""
    collection = pystac.Collection.from_file(str(out / "stac" / "collection.json"))
    validate_offline(out / "stac" / "collection.json")
    items = {i.id: i for i in collection.get_items()}
    for item in items.values():
        validate_offline(Path(item.get_self_href()))
        for key, asset in item.assets.items():
            assert not Path(asset.href).is_absolute(), (item.id, key)
            assert Path(asset.get_absolute_href()).exists(), (item.id, key, asset.href)
    return collection, items


def row(status: str, at: str, *, model: str = "m", output: str = "/out/a.zarr") -> dict:
    return {
        "run_id": f"{status}-{at}",
        "scene": "/scenes/a.tif",
        "output": output,
        "status": status,
        "error": None if status in ("done", "skipped") else "boom",
        "model_digest": model,
        "settings_digest": "s",
        "started_at": f"2026-01-0{at}T01:00:00+00:00",
        "finished_at": f"2026-01-0{at}T02:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("rows", "made", "stale"),
    [
        ([row("done", "1"), row("skipped", "2")], "done-1", None),
        ([row("done", "1"), row("failed", "2")], "done-1", "failed-2"),
        ([row("done", "1"), row("interrupted", "2")], "done-1", "interrupted-2"),
        ([row("done", "1"), row("failed", "2"), row("done", "3")], "done-3", None),
        # Failed before it was planned: no output path, the scene's name tells.
        ([row("done", "1"), row("failed", "2", output="")], "done-1", "failed-2"),
        # Same second: the failure counts as the later.
        ([row("failed", "1"), row("done", "1")], "done-1", "failed-1"),
        # Made by another model than the published raster's: no run explains it.
        ([row("done", "1", model="other")], None, None),
    ],
)
def test_history_tells_which_run_made_an_output_and_whether_it_is_stale(rows, made, stale):
    output = PublishedOutput(
        Location("/out/a.zarr"),
        {"model_digest": "m", "settings_digest": "s"},
        1,
        1,
        Affine.identity(),
        None,
    )
    history = scene_history(rows, output)
    assert (history.made or {}).get("run_id") == made
    assert (history.stale or {}).get("run_id") == stale


def test_items_describe_every_output_and_validate_offline(make_labels, tmp_path, offline):
    out = tmp_path / "out"
    labels = np.zeros((200, 300), np.uint8)
    labels[:, 150:] = 3
    make_labels(labels, name="a.zarr", out_dir=out, tile_size=64)
    make_labels(
        labels[:120, :150],
        name="geo.zarr",
        out_dir=out,
        crs="EPSG:4326",
        transform=from_origin(15.0, 36.0, 1e-4, 1e-4),
        tile_size=64,
    )
    make_labels(
        labels[:64, :64],
        name="custom.zarr",
        out_dir=out,
        crs=CUSTOM_CRS,
        transform=from_origin(400_000, 4_000_000, 10, 10),
        tile_size=64,
    )
    export_cog(out / "a.zarr", out / "cogs", quicklook=64)
    (out / "vectors").mkdir()
    pq.write_table(pa.table({"class_id": [0, 3]}), out / "vectors" / "a.parquet")
    assert fcnrs(["catalog", str(out)]) == 0

    collection, items = read_back(out)
    assert sorted(items) == ["a", "custom", "geo"]
    a = items["a"]
    assert sorted(a.assets) == ["cog", "labels", "polygons", "quicklook"]
    assert a.assets["labels"].href == "../../a.zarr"
    assert a.assets["labels"].media_type == "application/vnd+zarr"
    assert a.assets["polygons"].media_type == "application/vnd.apache.parquet"
    assert a.assets["quicklook"].roles == ["overview"]
    assert a.assets["cog"].roles == a.assets["labels"].roles == ["data"]
    classes = a.assets["cog"].extra_fields["classification:classes"]
    assert classes == a.assets["labels"].extra_fields["classification:classes"]
    assert classes[:2] == [
        {"value": 0, "name": "water", "title": "water", "color_hint": "0000FF"},
        {"value": 1, "name": "forest", "title": "forest", "color_hint": "008000"},
    ]
    assert classes[-1] == {"value": 255, "name": "nodata", "title": "no data", "nodata": True}
    # Projection: the raster's own grid; geometry: its outline in lon/lat.
    assert a.properties["proj:code"] == "EPSG:32633"
    assert a.properties["proj:shape"] == [200, 300]
    assert a.properties["proj:transform"] == [10, 0, 500_000, 0, -10, 4_000_000]
    assert a.properties["proj:bbox"] == [500_000, 3_998_000, 503_000, 4_000_000]
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    corners = [to_wgs84.transform(x, y) for x in (500_000, 503_000) for y in (3_998_000, 4e6)]
    ring = a.geometry["coordinates"][0]
    for corner in corners:
        assert min(np.hypot(*np.subtract(p, corner)) for p in ring) < 1e-8
    lon, lat = np.array(corners).T
    # The reprojected edges bulge a little between the corners.
    assert a.bbox == pytest.approx([lon.min(), lat.min(), lon.max(), lat.max()], abs=1e-6)
    assert items["geo"].properties["proj:code"] == "EPSG:4326"
    assert items["geo"].bbox == pytest.approx([15.0, 35.988, 15.015, 36.0])
    custom = items["custom"].properties
    assert custom["proj:code"] is None
    assert CRS.from_wkt(custom["proj:wkt2"]) == CRS.from_user_input(CUSTOM_CRS)
    assert sorted(items["geo"].assets) == ["labels"]  # no COG, polygons or quicklook
    # The source scene, as recorded in the raster's attributes.
    (source,) = a.get_links("derived_from")
    assert source.href == str(Path("a.zarr").resolve())
    # The Collection's extent is the union of its Items'.
    (box,) = collection.extent.spatial.bboxes
    assert box[0] == min(i.bbox[0] for i in items.values())
    assert box[3] == max(i.bbox[3] for i in items.values())


def test_nightly_runs_keep_the_catalogue_current(make_scene, make_checkpoint, tmp_path, offline):
    """Run 1: a, b, d done. Then d's output is removed and b's source breaks.
    Run 2: a skipped (Item unchanged), b failed (Item kept, marked stale), c new,
    e failed with no earlier output (no Item), d's Item dropped."""
    model = make_checkpoint()
    scenes = {n: make_scene(f"{n}.tif", height=96, width=128, seed=i) for i, n in enumerate("abcd")}
    (tmp_path / "e.tif").write_text("not a raster")
    out = tmp_path / "out"

    def night(*names):
        paths = [str(scenes.get(n, tmp_path / f"{n}.tif")) for n in names]
        flags = ["--tile-size", "64", "--overlap", "32", "--catalog"]
        return segment(["--model", str(model), "--scenes", *paths, "--out", str(out), *flags])

    assert night("a", "b", "d") == 0
    _, first = read_back(out)
    assert sorted(first) == ["a", "b", "d"]
    rows = {Path(r["scene"]).stem: r for r in read_manifest(out).to_pylist()}
    a = first["a"]
    assert a.datetime == datetime.fromisoformat(rows["a"]["finished_at"])
    assert a.common_metadata.start_datetime == datetime.fromisoformat(rows["a"]["started_at"])
    assert a.properties["fcnrs:model_digest"] == rows["a"]["model_digest"]
    assert a.properties["fcnrs:settings"]["tile_size"] == 64
    assert a.properties["fcnrs:run_id"] == rows["a"]["run_id"]
    assert a.get_links("derived_from")[0].href == str(scenes["a"])
    a_bytes = (out / "stac" / "a" / "a.json").read_bytes()

    shutil.rmtree(out / "d.zarr")
    scenes["b"].write_text("broken overnight")
    assert night("a", "b", "c", "e") == 1
    _, second = read_back(out)
    assert sorted(second) == ["a", "b", "c"]
    assert not (out / "stac" / "d").exists()
    assert (out / "stac" / "a" / "a.json").read_bytes() == a_bytes  # skipped: kept as is
    run2 = {
        Path(r["scene"]).stem: r
        for r in read_manifest(out).to_pylist()
        if r["run_id"] != rows["a"]["run_id"]
    }
    assert run2["a"]["status"] == "skipped" and run2["b"]["status"] == "failed"
    b = second["b"]
    assert b.properties["fcnrs:stale"] is True
    assert b.properties["fcnrs:stale_reason"].startswith(f"run {run2['b']['run_id']} failed at ")
    assert "not a readable GTiff raster" in b.properties["fcnrs:stale_reason"]
    assert b.datetime == first["b"].datetime  # still the raster run 1 made
    assert "fcnrs:stale" not in second["c"].properties
    assert second["c"].datetime == datetime.fromisoformat(run2["c"]["finished_at"])
    collection = json.loads((out / "stac" / "collection.json").read_text())
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [
        "./a/a.json",
        "./b/b.json",
        "./c/c.json",
    ]


@pytest.mark.s3
def test_the_catalogue_of_an_s3_output_folder(s3_server, make_scene, make_checkpoint, offline):
    where = f"s3://fcnrs/{uuid.uuid4().hex[:10]}"
    out, scene = f"{where}/labels", f"{where}/scenes/a.tif"
    Location(scene).write_bytes(make_scene("a.tif", height=96, width=128).read_bytes())
    flags = ["--tile-size", "64", "--overlap", "32", "--catalog"]
    assert (
        segment(["--model", str(make_checkpoint()), "--scenes", scene, "--out", out, *flags]) == 0
    )
    io = LocationStacIO()
    collection = pystac.Collection.from_file(f"{out}/stac/collection.json", stac_io=io)
    (item,) = collection.get_items()
    assert item.get_self_href() == f"{out}/stac/a/a.json"
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, "1.1.0")
    assert item.assets["labels"].href == "../../a.zarr"
    assert item.assets["labels"].get_absolute_href() == f"{out}/a.zarr"
    assert Location(f"{out}/a.zarr/.zmetadata").is_file()
    assert item.properties["proj:code"] == "EPSG:32633"
    assert item.get_links("derived_from")[0].href == scene
