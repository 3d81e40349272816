"""Peak memory of polygonising a huge label raster, strip by strip against whole.

Publishes a synthetic ``size x size`` Zarr label raster (chunk by chunk, through
the pipeline's writer) of many small objects: cells of 16 x 16 pixels, each of
one of four classes by a hash of its position, so that neighbouring cells of a
class merge into small polygons of every shape (with holes), plus a nodata disc.
Then, each in a fresh process that reports its own peak RSS:

- the baseline, what peers do: load the labels whole and polygonise them with
  ``rasterio.features.shapes`` in one go (4-connectivity, nodata masked),
  keeping the polygons as shapely geometries;
- ``fcnrs.gis.vectors.vectorize``: strip by strip, to a GeoParquet file.

Both must find the same number of polygons.

    python benchmarks/vector_memory.py --size 16384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fcnrs.synthetic.label_rasters import write_label_raster

ROOT = Path(__file__).resolve().parents[1]
CELL = 16

CHILD = """
import json, resource, sys, time
task, zarr_path, out = sys.argv[1:4]
t = time.perf_counter()
if task == "baseline":
    import shapely, zarr
    from rasterio.features import shapes
    from fcnrs.gis.rasters import open_label_raster
    raster = open_label_raster(zarr_path)
    labels = zarr.open_group(zarr_path, mode="r", zarr_format=2)["labels"][:]
    polygons = [
        (shapely.geometry.shape(g), int(v))
        for g, v in shapes(labels, mask=labels != 255, connectivity=4, transform=raster.transform)
    ]
    result = len(polygons)
else:
    from fcnrs.gis.vectors import vectorize
    result = vectorize(zarr_path, out).features
print(json.dumps({"seconds": time.perf_counter() - t, "result": result,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cell_classes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Class 0..3 of the 16-px cell of each pixel, by an integer hash of its position."""
    h = ((rows // CELL) * 0x9E3779B1 + (cols // CELL) * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    return (h % 4).astype(np.uint8)


def write_labels(path: Path, size: int) -> Path:
    return write_label_raster(path, size, cell_classes)


def run(task: str, zarr_path: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(zarr_path), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        raise RuntimeError(f"{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16384)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vector_memory_") as tmp:
        t = time.perf_counter()
        zarr_path = write_labels(Path(tmp) / "big.zarr", args.size)
        print(
            f"{args.size}x{args.size} label raster ({args.size**2 / 2**20:.0f} MiB as uint8, "
            f"1024-px chunks) written in {time.perf_counter() - t:.0f} s"
        )
        results = {}
        for task in ("baseline", "vectorize"):
            r = results[task] = run(task, zarr_path, Path(tmp) / "vectors")
            print(
                f"{task:10s} peak RSS {r['peak_rss_mib']:7.0f} MiB, {r['seconds']:6.1f} s, "
                f"{r['result']} polygons"
            )
        base, ours = results["baseline"], results["vectorize"]
        print(
            f"peak RSS ratio vectorize / baseline: {ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}"
        )
        if base["result"] != ours["result"]:
            print("polygon counts differ", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
