"""Draw ``docs/report.png``: the night's page, from two real nights of the demo model.

    make demo                        # fine-tunes demo_out/finetune/best (about a minute)
    python docs/report.py [--model demo_out/finetune/best] [--out report_out]

Writes four sample scenes (the demo's generator, new seeds): three on one 10 m
UTM 33N grid, each sharing a 100-pixel strip of labelled ground with its
neighbour, and a fourth in EPSG:4326. The first night segments the three UTM
scenes; overnight the third one's file is truncated, and the second night
skips the first two, fails the third (its earlier labels stay: stale), fails
a file that is not a raster at all, and segments the lon/lat one. Each night
runs what an operator would:

    fcnrs segment --model MODEL --scenes ... --out report_out/labels --vectors --catalog --report

Then Debian's headless Chromium takes the picture of ``report_out/labels/report.html``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from fcnrs.jobs.cli import main as fcnrs
from fcnrs.synthetic.scenes import make_sample_scene

HERE = Path(__file__).resolve().parent
SHAPE = (640, 800)
ORIGIN = (399_960.0, 4_900_020.0)
#: The sample scenes' nodata border (top and left), and the labelled strip two
#: neighbours share beyond it, in pixels.
BORDER, SHARED = 24, 100
DEGREE_PIXEL = (1.25e-4, 9e-5)
WINDOW = (1400, 2000)


def write_scenes(scenes: Path) -> dict[str, Path]:
    rows, cols = SHAPE
    x0, y0 = ORIGIN
    step_x, step_y = (cols - BORDER - SHARED) * 10, (rows - BORDER - SHARED) * 10
    corners = {"n1_utm": (x0, y0), "n2_utm": (x0 + step_x, y0), "n3_utm": (x0, y0 - step_y)}
    paths = {}
    for seed, (name, corner) in enumerate(corners.items(), start=10):
        path, _ = make_sample_scene(
            scenes / f"{name}.tif", height=rows, width=cols, seed=seed, border=BORDER
        )
        with rasterio.open(path, "r+") as dst:
            dst.transform = from_origin(*corner, 10, 10)
        paths[name] = path
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        x0 + step_x, y0 - step_y
    )
    path, _ = make_sample_scene(
        scenes / "n4_lonlat.tif", height=rows, width=cols, seed=13, border=BORDER
    )
    with rasterio.open(path, "r+") as dst:
        dst.crs = "EPSG:4326"
        dst.transform = from_origin(lon, lat, *DEGREE_PIXEL)
    paths["n4_lonlat"] = path
    return paths


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--screenshot={png.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="demo_out/finetune/best", help="a checkpoint")
    p.add_argument("--out", default="report_out", help="working folder")
    p.add_argument("--png", default=str(HERE / "report.png"), help="the picture to write")
    args = p.parse_args(argv)
    out = Path(args.out)
    scenes = write_scenes(out / "scenes")
    labels = out / "labels"
    run = ["segment", "--model", args.model, "--out", str(labels), "--vectors", "--catalog"]
    first = [str(scenes[n]) for n in ("n1_utm", "n2_utm", "n3_utm")]
    if fcnrs([*run, "--report", "--run-id", "night-1", "--scenes", *first]) != 0:
        return 1
    third = scenes["n3_utm"]
    third.write_bytes(third.read_bytes()[:4096])  # truncated overnight
    not_a_raster = out / "scenes" / "n5_cloudy.tif"
    not_a_raster.write_text("an upload that never finished")
    second = [*first, str(scenes["n4_lonlat"]), str(not_a_raster)]
    fcnrs([*run, "--report", "--run-id", "night-2", "--scenes", *second])  # exit 1: two failed
    screenshot(labels / "report.html", Path(args.png))
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
