"""COG export: a valid COG, exact labels, categorical overviews, colours and names;
re-runs keep what is current."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rio_cogeo.cogeo import cog_validate

from fcnrs.gis.cog import export_cog
from fcnrs.jobs import export_cog as export_job
from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.writing import staging_path

CLASSES = ("water", "forest", "field", "town")
COLORS = ((0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0))


def striped_labels(height: int = 1500, width: int = 1300) -> np.ndarray:
    """Columns alternate water (0) and town (3): an average of class ids would
    invent forest/field (1, 2) in the overviews; mode never does. A nodata band on
    top and a solid forest block give the overviews something to keep."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, 1::2] = 3
    labels[:100] = 255
    labels[600:1000, 200:700] = 1
    return labels


@pytest.fixture
def exported(make_labels, tmp_path):
    labels = striped_labels()
    probs = np.stack([(labels == k) * 255 for k in range(4)]).astype(np.uint8)
    zarr_path = make_labels(labels, classes=CLASSES, colors=COLORS, probabilities=probs)
    done = export_cog(zarr_path, tmp_path / "cogs", probabilities=True, quicklook=260)
    return labels, probs, done


def test_cog_is_valid_and_holds_the_exact_labels_georeferenced(exported):
    labels, _, done = exported
    assert done.labels.name == "scene.tif"
    valid, errors, warnings = cog_validate(str(done.labels))
    assert valid and not errors and not warnings
    with rasterio.open(done.labels) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.block_shapes == [(512, 512)]
        assert cog.overviews(1) == [2, 4]
        assert cog.nodata == 255 and cog.dtypes == ("uint8",)
        assert cog.crs.to_epsg() == 32633
        assert cog.transform == rasterio.transform.from_origin(500_000, 4_000_000, 10, 10)
        assert np.array_equal(cog.read(1), labels)
        assert {cog.colormap(1)[k][:3] for k in range(4)} == set(COLORS)
        assert cog.colormap(1)[255][3] == 0  # nodata transparent
        assert [cog.tags()[f"CLASS_{k}"] for k in range(4)] == list(CLASSES)
        # Overviews by mode: only real classes, and the forest block and the nodata
        # band survive at 1/4 resolution.
        quarter = cog.read(1, out_shape=(375, 325), resampling=Resampling.nearest)
    assert set(np.unique(quarter)) <= {0, 3, 255} | {1}
    assert (quarter[:20] == 255).all() and (quarter[160:240, 60:165] == 1).all()
    assert not np.isin(quarter[30:140], [1, 2]).any()


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo (Debian gdal-bin) absent")
def test_debian_gdalinfo_shows_class_names_and_attribute_table(exported):
    _, _, done = exported
    info = json.loads(
        subprocess.run(
            ["gdalinfo", "-json", str(done.labels)], check=True, capture_output=True, text=True
        ).stdout
    )
    band = info["bands"][0]
    assert band["categories"] == list(CLASSES)
    assert band["colorInterpretation"] == "Palette" and band["noDataValue"] == 255
    rows = [[f for f in row["f"]] for row in info["rat"]["row"]]
    assert rows == [[k, name, *COLORS[k]] for k, name in enumerate(CLASSES)]


def test_probabilities_and_quicklook(exported):
    _, probs, done = exported
    with rasterio.open(done.probabilities) as p:
        assert p.count == 4 and p.overviews(1) == [2, 4]
        assert np.array_equal(p.read(), probs)
        assert p.descriptions[0] == "probability of water x 255"
    assert cog_validate(str(done.probabilities))[0]
    with rasterio.open(done.quicklook) as png:
        assert png.driver == "PNG" and (png.height, png.width) == (260, 225)
        small = png.read(1)
        cmap = png.colormap(1)
    # Downsampled by mode: class ids only, the forest block in forest green.
    assert set(np.unique(small)) <= {0, 1, 3, 255}
    assert cmap[int(small[140, 80])][:3] == COLORS[1]
    assert cmap[255][3] == 0


def test_a_bad_input_fails_alone_and_keeps_earlier_exports(make_labels, tmp_path, capsys):
    good = make_labels(striped_labels(300, 200), name="good.zarr")
    out = tmp_path / "cogs"
    export_cog(good, out)
    before = (out / "good.tif").read_bytes()
    partial = staging_path(tmp_path / "labels" / "half.zarr")
    shutil.copytree(good, partial)  # a scene still being written: not published
    with pytest.raises(OutputError, match=r"half\.zarr"):
        export_cog(tmp_path / "labels" / "half.zarr", out)
    code = export_job.main(
        [str(tmp_path / "labels" / "nothing.zarr"), str(good), "--out", str(out)]
    )
    assert code == 1
    assert capsys.readouterr().out.strip() == str(out / "good.tif")
    assert (out / "good.tif").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["good.tif", "good.tif.aux.xml"]


def test_a_rerun_keeps_current_exports_and_redoes_changed_ones(make_labels, tmp_path, capsys):
    labels = striped_labels(300, 200)
    probs = np.stack([(labels == k) * 255 for k in range(4)]).astype(np.uint8)
    zarr_path = make_labels(labels, probabilities=probs)
    out = tmp_path / "cogs"
    cog, prob = out / "scene.tif", out / "scene_probabilities.tif"

    def stamp(path):
        st = path.stat()
        return st.st_ino, st.st_mtime_ns

    assert export_cog(zarr_path, out).kept == ()
    first = stamp(cog)
    # The same label raster again, now with probabilities: only those are written.
    again = export_cog(zarr_path, out, probabilities=True)
    assert again.kept == (cog,) and stamp(cog) == first and prob.is_file()
    # The nightly CLI re-run rewrites nothing and still lists every output.
    before = stamp(prob)
    assert export_job.main([str(zarr_path), "--out", str(out), "--probabilities"]) == 0
    assert capsys.readouterr().out.split() == [str(cog), str(prob)]
    assert stamp(cog) == first and stamp(prob) == before

    # The scene is re-segmented from a changed source: both GeoTIFFs follow.
    changed = labels.copy()
    changed[150:250] = 2
    make_labels(changed, probabilities=probs, source_mtime_ns=1)
    redone = export_cog(zarr_path, out, probabilities=True)
    assert redone.kept == () and stamp(cog) != first and stamp(prob) != before
    with rasterio.open(cog) as src:
        assert np.array_equal(src.read(1), changed)
    # --force rewrites a current one; a foreign file in the way is replaced, not trusted.
    current = stamp(cog)
    assert export_job.main([str(zarr_path), "--out", str(out), "--force"]) == 0
    assert stamp(cog) != current
    cog.write_bytes(b"not a GeoTIFF")
    assert export_cog(zarr_path, out).kept == ()
    with rasterio.open(cog) as src:
        assert np.array_equal(src.read(1), changed)
