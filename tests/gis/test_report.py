"""The night's page, loaded in a real headless Chromium: no console error, no
request beyond itself, and the numbers on it are the manifest's and the area
query's."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from fcnrs.gis.areas import query_areas
from fcnrs.gis.night_areas import night_areas
from fcnrs.gis.rasters import describe_output, list_outputs
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.manifest import read_manifest, read_run_records
from fcnrs.pipeline.storage import Location
from tests.browser import Browser, chromium_missing

#: Two 200 x 300 scenes sharing a 50-column strip, and a third below the first.
GRIDS = {
    "a": (200, 300, (500_000, 4_000_000)),
    "b": (200, 300, (502_500, 4_000_000)),
    "c": (150, 200, (500_000, 3_998_000)),
}
FLAGS = ["--tile-size", "128", "--overlap", "32", "--engine", "local"]

needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


def scene(make_scene, name: str, seed: int) -> Path:
    height, width, origin = GRIDS[name]
    return make_scene(
        f"{name}.tif", height=height, width=width, transform=from_origin(*origin, 10, 10), seed=seed
    )


@pytest.fixture
def night(make_scene, make_checkpoint, tmp_path):
    """Two nights. The first: a and b done. The second: a skipped, b's source
    broken overnight (it fails; its earlier output stays published: stale), a
    scene that never worked, and c new. Polygons, catalogue and page each time."""
    ckpt = str(make_checkpoint())
    out = tmp_path / "out"
    a, b = scene(make_scene, "a", 1), scene(make_scene, "b", 2)
    base = ["segment", "--model", ckpt, "--out", str(out), *FLAGS]
    extras = ["--vectors", "--catalog", "--report"]
    assert fcnrs([*base, "--scenes", str(a), str(b), "--run-id", "night1", *extras]) == 0
    b.write_bytes(b.read_bytes()[:300])  # truncated: its header no longer reads
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    c = scene(make_scene, "c", 3)
    scenes = [str(a), str(b), str(broken), str(c)]
    assert fcnrs([*base, "--scenes", *scenes, "--run-id", "night2", *extras]) == 1
    return out


def rows_of(browser: Browser, table: str) -> list[dict[str, dict]]:
    """A table's body rows as the page shows them: header -> the cell's text and
    its exact ``data-value``; ``_scene``/``_run`` from the row."""
    return browser.evaluate(
        f"""(() => {{
          const heads = Array.from(document.querySelectorAll('#{table} thead th'))
            .map(th => th.textContent.trim());
          return Array.from(document.querySelectorAll('#{table} tbody tr, #{table} tfoot tr'))
            .map(tr => {{
              const row = {{_scene: tr.getAttribute('data-scene'), _run: tr.getAttribute('data-run'),
                           _class: tr.className}};
              Array.from(tr.cells).forEach((td, i) => {{
                row[heads[i]] = {{text: td.textContent.trim(), value: td.getAttribute('data-value')}};
              }});
              return row;
            }});
        }})()"""
    )


def value(cell: dict) -> float:
    return float(cell["value"])


@needs_chromium
def test_the_page_shows_the_night_as_the_manifest_and_the_area_query_say(night, tmp_path):
    out = night
    page = out / "report.html"
    manifest = read_manifest(out).to_pylist()
    tonight = {Path(r["scene"]).stem: r for r in manifest if r["run_id"] == "night2"}
    with Browser(tmp_path / "chromium", width=1400, height=2000) as browser:
        browser.load(page.as_uri())
        assert browser.problems() == []
        # Nothing fetched but the page itself and its inline pictures.
        assert all(u == page.as_uri() or u.startswith("data:") for u in browser.requests())
        assert browser.evaluate("document.getElementById('run-id').textContent") == "night2"
        counts = browser.evaluate(
            "['done','skipped','failed'].map(k => document.getElementById('count-' + k).textContent)"
        )
        assert counts == ["1", "1", "2"]

        # Every scene of the run, as the manifest says, with megapixels per second.
        scenes = rows_of(browser, "scenes")
        assert sorted(r["_scene"] for r in scenes) == sorted(tonight) == ["a", "b", "broken", "c"]
        for r in scenes:
            row = tonight[r["_scene"]]
            assert r["status"]["text"] == row["status"]
            assert r["reason"]["text"] == (row["error"] or "")
            assert int(r["tiles"]["value"]) == row["tiles"]
            assert int(r["predicted"]["value"]) == row["tiles_predicted"]
            assert value(r["valid Mpx"]) * 1e6 == pytest.approx(row["valid_pixels"], abs=1e-6)
            assert value(r["seconds"]) == row["seconds"]
            assert r["seconds"]["text"] == f"{row['seconds']:.2f}"
        by_scene = {r["_scene"]: r for r in scenes}
        c = tonight["c"]
        assert value(by_scene["c"]["Mpx/s"]) == pytest.approx(150 * 200 / 1e6 / c["seconds"])
        assert by_scene["a"]["Mpx/s"]["text"] == "—"  # skipped: no rate
        assert "not a readable GTiff raster" in by_scene["broken"]["reason"]["text"]
        # Links go to files that exist, beside the page.
        hrefs = browser.evaluate(
            "Array.from(document.querySelectorAll('#scenes a, #layers a')).map(a => a.getAttribute('href'))"
        )
        assert len(hrefs) >= 3 * 4 + 4
        assert all((out / unquote(h)).exists() for h in hrefs), hrefs
        links_c = browser.evaluate(
            "Array.from(document.querySelectorAll('#scenes tr[data-scene=\"c\"] a')).map(a => a.textContent)"
        )
        assert links_c == ["STAC item", "COG", "polygons", "labels"]

        # The replicas: only c ran; its tiles are theirs, all of them.
        record = read_run_records(out)["night2"]
        replicas = rows_of(browser, "replicas")
        assert [r["replica"]["text"] for r in replicas] == sorted(record.replicas)
        assert sum(int(r["tiles"]["value"]) for r in replicas) == c["tiles"]
        assert sum(value(r["share %"]) for r in replicas) == pytest.approx(100)
        for r in replicas:
            work = record.replicas[r["replica"]["text"]]
            assert int(r["batches"]["value"]) == work.batches
            assert value(r["seconds in the model"]) == work.seconds

        # Model and settings.
        model = browser.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#model dd, #settings dd'))"
            ".map(dd => [dd.getAttribute('data-key'), dd.textContent]))"
        )
        assert (
            model["digest"] == c["model_digest"]
            and model["settings digest"] == c["settings_digest"]
        )
        assert (model["tile_size"], model["overlap"], model["engine"]) == ("128", "32", "local")

        # Areas per scene (fcnrs areas) and for the night (fcnrs areas --night).
        outputs = list_outputs(out)
        per_scene = query_areas(outputs)
        whole = night_areas(outputs).night
        areas = rows_of(browser, "areas")
        for r in areas:
            if r["_scene"]:
                mine = per_scene[per_scene.scene == r["_scene"]]
                for _, cls in mine.iterrows():
                    assert value(r[f"{cls.class_name} km²"]) == pytest.approx(
                        cls.area_km2, rel=1e-12
                    )
        (night_row,) = [r for r in areas if r["_class"] == "night"]
        for _, cls in whole.iterrows():
            assert value(night_row[f"{cls.class_name} km²"]) == pytest.approx(
                cls.area_km2, rel=1e-12
            )
            assert night_row[f"{cls.class_name} km²"]["text"] == f"{cls.area_km2:.4f}"
        (summed,) = [r for r in areas if r["_class"] == "sum"]
        assert value(summed["total km²"]) > value(night_row["total km²"])  # the strip, twice

        # The map: the mosaic's quicklook, every published footprint by what
        # happened tonight, and the scene that has none said so.
        assert browser.evaluate(
            "document.getElementById('quicklook').getAttribute('href').startsWith('data:image/png;base64,')"
        )
        footprints = browser.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#map .footprint'))"
            ".map(g => [g.getAttribute('data-scene'), g.getAttribute('class')]))"
        )
        assert footprints == {
            "a": "footprint skipped",
            "b": "footprint stale",
            "c": "footprint done",
        }
        assert "broken" in browser.evaluate("document.getElementById('map-missing').textContent")

        # The history: both nights, newest first.
        history = rows_of(browser, "history")
        assert [r["_run"] for r in history] == ["night2", "night1"]
        assert [int(history[1][k]["value"]) for k in ("done", "skipped", "failed")] == [2, 0, 0]

        # The screenshot shows the map (in the classes' colours) and the tables.
        shot = browser.screenshot()
        boxes = browser.evaluate(
            "Object.fromEntries(['map', 'scenes', 'replicas', 'areas'].map(id => {"
            "const r = document.getElementById(id).getBoundingClientRect();"
            "return [id, [r.left, r.top, r.right, r.bottom]]; }))"
        )
    with rasterio.MemoryFile(shot) as mem, mem.open() as png:
        pixels = np.moveaxis(png.read()[:3], 0, -1)
    assert pixels.shape[:2] == (2000, 1400)
    for name, (left, top, right, bottom) in boxes.items():
        assert 0 <= left < right <= 1400 and 0 <= top < bottom <= 2000, (name, boxes)
    left, top, right, bottom = (round(v) for v in boxes["map"])
    drawn = pixels[top + 2 : bottom - 2, left + 2 : right - 2].reshape(-1, 3)
    colors = describe_output(out / "a.zarr").colors
    in_class_colors = np.isin(
        drawn @ [65536, 256, 1], [r * 65536 + g * 256 + b for r, g, b in colors]
    )
    assert in_class_colors.mean() > 0.3


@needs_chromium
def test_the_browser_check_sees_errors_and_requests(tmp_path):
    """The check the page passes is one that can fail: a page with a console
    error, an uncaught exception and a remote picture is caught on all three."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><p>x</p><img src='https://example.invalid/a.png'>"
        "<script>console.error('boom'); missing();</script>"
    )
    with Browser(tmp_path / "chromium") as browser:
        browser.load(bad.as_uri())
        problems = browser.problems()
        requests = browser.requests()
    assert any("console.error: boom" in p for p in problems)
    assert any("missing is not defined" in p for p in problems)
    assert "https://example.invalid/a.png" in requests


def test_a_night_where_everything_failed_still_gets_a_page(make_checkpoint, tmp_path):
    out = tmp_path / "out"
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    argv = ["segment", "--model", str(make_checkpoint()), "--scenes", str(broken)]
    assert fcnrs([*argv, "--out", str(out), *FLAGS, "--report"]) == 1
    page = (out / "report.html").read_text()
    assert 'id="failures"' in page and "not a readable GTiff raster" in page
    assert "no published label rasters, so no areas." in page


def test_a_run_from_before_run_records_in_a_folder_of_two_models(
    make_scene, make_checkpoint, make_labels, tmp_path
):
    """A run from before run records were kept: its model and settings come from
    the output it made, and the page says it has no replica record. A raster of
    another class list in the same folder leaves the page without areas, saying
    why, rather than without a page."""
    out = tmp_path / "out"
    argv = ["segment", "--model", str(make_checkpoint()), "--scenes"]
    assert fcnrs([*argv, str(scene(make_scene, "a", 1)), "--out", str(out), *FLAGS]) == 0
    for record in (out / "manifest" / "_runs").iterdir():
        record.unlink()
    other = ("land", "sea", "ice", "rock")
    make_labels(np.zeros((64, 64), np.uint8), name="z.zarr", out_dir=out, classes=other)
    assert fcnrs(["report", str(out), "--no-mosaic"]) == 0
    page = (out / "report.html").read_text()
    (row,) = read_manifest(out).to_pylist()
    assert f'data-key="digest">{row["model_digest"]}<' in page
    assert f'data-key="settings digest">{row["settings_digest"]}<' in page
    assert 'data-key="tile_size">128<' in page and 'data-key="variant">fcn8s<' in page
    assert "this run has no record (runs from before records were kept)" in page
    assert "no areas: " in page and "z.zarr: classes [&#x27;land&#x27;" in page
    assert "no mosaic yet" in page


def test_fcnrs_report_says_why_there_is_nothing_to_report(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert fcnrs(["report", str(missing)]) == 1
    assert (
        f"{missing}: report not written: {missing}: no such output folder."
        in capsys.readouterr().err
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    assert fcnrs(["report", str(afile)]) == 1
    assert f"{afile}: is a file, not an output folder" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / "x").mkdir(parents=True)
    assert fcnrs(["report", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert f"{foreign}: not an output folder of fcnrs segment: it has no run manifest" in err
    (foreign / "manifest").mkdir()
    (foreign / "manifest" / "notes.txt").write_text("x")
    assert fcnrs(["report", str(foreign)]) == 1
    assert f"{foreign / 'manifest'}: the run manifest holds no runs yet" in capsys.readouterr().err
    assert not (foreign / "report.html").exists()


@pytest.mark.s3
@needs_chromium
def test_the_report_of_an_s3_output_folder(s3_server, make_scene, make_checkpoint, tmp_path):
    """The nightly run writes the page beside its S3 outputs; it reads the
    manifest, run record, outputs and areas from S3, and builds the mosaic there
    (the COGs and VRT in S3), whose quicklook is the map's picture."""
    where = f"s3://fcnrs/{uuid.uuid4().hex[:10]}"
    out = f"{where}/labels"
    for name, seed in (("a", 1), ("b", 2)):
        path = scene(make_scene, name, seed)
        Location(f"{where}/scenes/{name}.tif").write_bytes(path.read_bytes())
    scenes = [f"{where}/scenes/a.tif", f"{where}/scenes/b.tif"]
    argv = ["segment", "--model", str(make_checkpoint()), "--scenes", *scenes, "--out", out]
    assert fcnrs([*argv, *FLAGS, "--report"]) == 0
    page = tmp_path / "report.html"
    page.write_bytes(Location(f"{out}/report.html").read_bytes())
    with Browser(tmp_path / "chromium") as browser:
        browser.load(page.as_uri())
        assert browser.problems() == []
        assert sorted(r["_scene"] for r in rows_of(browser, "scenes")) == ["a", "b"]
        (night_row,) = [r for r in rows_of(browser, "areas") if r["_class"] == "night"]
        whole = night_areas(list_outputs(out)).night
        got = [value(night_row[f"{c} km²"]) for c in whole.class_name]
        np.testing.assert_allclose(got, whole.area_km2, rtol=1e-12)
        assert browser.evaluate("document.querySelectorAll('#map .footprint.done').length") == 2
        assert browser.evaluate(
            "document.getElementById('quicklook').getAttribute('href')"
            ".startsWith('data:image/png;base64,')"
        )
    assert Location(f"{out}/mosaic/labels.vrt").is_file()
    assert Location(f"{out}/cogs/a.tif").is_file() and Location(f"{out}/cogs/b.tif").is_file()
