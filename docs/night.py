"""Draw ``docs/night.png``: a night of scenes as one raster layer, made by the
project's own commands.

    make demo                       # fine-tunes demo_out/finetune/best (about a minute)
    python docs/night.py [--model demo_out/finetune/best] [--out night_out]

Writes four sample scenes (the demo's generator, new seeds) side by side: three
on one 10 m UTM 33N grid and a fourth in EPSG:4326 (pixels of about 10 m) in
the remaining corner, so that the mosaic has to warp it. Then runs what an
operator and a GIS user would:

    fcnrs segment --model MODEL --scenes night_out/scenes/*.tif --out night_out/labels --catalog
    fcnrs mosaic night_out/labels --quicklook docs/night.png --size 800
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from fcnrs.jobs.cli import main as fcnrs
from fcnrs.synthetic.scenes import make_sample_scene

HERE = Path(__file__).resolve().parent
#: Scene size (rows, cols) and the UTM 33N corner of the night.
SHAPE = (640, 800)
ORIGIN = (399_960.0, 4_900_020.0)
#: The lon/lat scene's pixel size in degrees: about 10 m each way at 44 N.
DEGREE_PIXEL = (1.25e-4, 9e-5)
#: The sample scenes' nodata border (top and left), in pixels.
BORDER = 24


def write_night(scenes: Path) -> list[Path]:
    """Three UTM scenes (top-left, top-right, bottom-left) and a lon/lat one in
    the bottom-right. Each overlaps its neighbours by its nodata border, which the
    mosaic must not draw over their pixels."""
    rows, cols = SHAPE
    x0, y0 = ORIGIN
    step_x, step_y = (cols - BORDER) * 10, (rows - BORDER) * 10
    utm = {
        "n1_utm": (x0, y0),
        "n2_utm": (x0 + step_x, y0),
        "n3_utm": (x0, y0 - step_y),
    }
    paths = []
    for seed, (name, corner) in enumerate(utm.items(), start=10):
        path, _ = make_sample_scene(
            scenes / f"{name}.tif", height=rows, width=cols, seed=seed, border=BORDER
        )
        with rasterio.open(path, "r+") as dst:
            dst.transform = from_origin(*corner, 10, 10)
        paths.append(path)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        x0 + step_x, y0 - step_y
    )
    path, _ = make_sample_scene(
        scenes / "n4_lonlat.tif", height=rows, width=cols, seed=13, border=BORDER
    )
    with rasterio.open(path, "r+") as dst:
        dst.crs = "EPSG:4326"
        dst.transform = from_origin(lon, lat, *DEGREE_PIXEL)
    return [*paths, path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="demo_out/finetune/best", help="a checkpoint")
    p.add_argument("--out", default="night_out", help="working folder")
    p.add_argument("--png", default=str(HERE / "night.png"), help="the picture to write")
    args = p.parse_args(argv)
    out = Path(args.out)
    scenes = write_night(out / "scenes")
    labels = str(out / "labels")
    segment = ["segment", "--model", args.model, "--scenes", *map(str, scenes)]
    status = fcnrs([*segment, "--out", labels, "--catalog"])
    if status != 0:
        return status
    return fcnrs(["mosaic", labels, "--quicklook", args.png, "--size", "800"])


if __name__ == "__main__":
    sys.exit(main())
