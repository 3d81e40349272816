"""The label raster's attributes, as pure functions (no file is written)."""

from __future__ import annotations

import numpy as np
from pyproj import CRS

from fcnrs.pipeline import layout
from fcnrs.pipeline.planning import plan_tiles
from fcnrs.pipeline.reading import SceneInfo


def info(crs: str = "EPSG:32633", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)):
    return SceneInfo(
        path="/data/a.tif",
        height=3,
        width=4,
        count=3,
        dtypes=("uint16",) * 3,
        crs_wkt=CRS.from_user_input(crs).to_wkt(),
        transform=transform,
        nodata=0,
        mask_flags=(("nodata",),) * 3,
        size_bytes=1234,
        mtime_ns=99,
    )


def test_coordinates_are_pixel_centres():
    x, y = layout.coordinates(info())
    assert np.array_equal(x, [500005.0, 500015.0, 500025.0, 500035.0])
    assert np.array_equal(y, [4099995.0, 4099985.0, 4099975.0])


def test_grid_mapping_carries_gdal_geotransform_and_cf_crs():
    attrs = layout.grid_mapping_attrs(info())
    assert attrs["GeoTransform"] == "500000.0 10.0 0.0 4100000.0 0.0 -10.0"
    assert attrs["grid_mapping_name"] == "transverse_mercator"
    assert CRS.from_wkt(attrs["crs_wkt"]).to_epsg() == 32633


def test_axis_attrs_follow_the_crs_kind():
    assert layout.axis_attrs(info(), "x")["units"] == "m"
    geo = info("EPSG:4326", (0.01, 0.0, 15.0, 0.0, -0.01, 37.0))
    assert layout.axis_attrs(geo, "y") == {
        "_ARRAY_DIMENSIONS": ["y"],
        "standard_name": "latitude",
        "units": "degrees_north",
    }


def test_labels_attrs_name_classes_for_gdal_and_cf():
    attrs = layout.labels_attrs(info(), ["open water", "forest"], [(0, 0, 255), (0, 128, 0)])
    assert attrs["_ARRAY_DIMENSIONS"] == ["y", "x"]
    assert attrs["flag_values"] == [0, 1] and attrs["flag_meanings"] == "open_water forest"
    assert attrs["class_colors"] == [[0, 0, 255], [0, 128, 0]]
    assert CRS.from_json_dict(attrs["_CRS"]["projjson"]).to_epsg() == 32633


def test_identity_changes_with_source_settings_and_grid_only():
    grid = plan_tiles(3, 4, tile_size=64, overlap=32)
    base = layout.identity(info(), grid, {"model_digest": "abc"})
    assert base["source_size"] == 1234 and base["source_mtime_ns"] == 99
    assert layout.has_identity({**base, "complete": False, "extra": 1}, base)
    other_model = layout.identity(info(), grid, {"model_digest": "abd"})
    other_grid = layout.identity(info(), plan_tiles(3, 4, tile_size=96, overlap=32), {})
    assert not layout.has_identity(other_model, base)
    assert not layout.has_identity(other_grid, base)
    assert not layout.has_identity(None, base)


def test_published_attrs_mark_completion_last_and_hold_no_timings():
    ident = {"model_digest": "abc"}
    attrs = layout.published_attrs(
        ident, classes=["a", "b"], colors=[(1, 2, 3), (4, 5, 6)], valid_pixels=7, tiles=2
    )
    assert layout.is_complete_attrs(attrs)
    assert attrs["valid_pixels"] == 7 and attrs["nodata"] == 255
    assert not any("time" in k or "seconds" in k for k in attrs)
    assert not layout.is_complete_attrs({**attrs, "complete": False})
    assert not layout.is_complete_attrs({**attrs, "format": "something else"})
