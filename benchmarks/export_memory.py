"""Peak memory of the COG export and the area query on a huge label raster.

Publishes a synthetic ``size x size`` Zarr label raster (chunk by chunk, through
the pipeline's writer), then runs, each in a fresh process that reports its own
peak RSS: a baseline that loads the labels whole (what a naive export would
do), ``export_cog`` (with a quicklook), and ``query_areas``. Bounded memory
means the last two stay flat as the raster grows, far below the baseline.

    python benchmarks/export_memory.py --sizes 8192 16384 24576
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

CHILD = """
import json, resource, sys, time
task, zarr_path, out = sys.argv[1:4]
t = time.perf_counter()
if task == "load whole (baseline)":
    import zarr
    labels = zarr.open_group(zarr_path, mode="r", zarr_format=2)["labels"][:]
    result = int((labels != 255).sum())
elif task == "export_cog + quicklook":
    from fcnrs.gis.cog import export_cog
    result = str(export_cog(zarr_path, out, quicklook=1024).labels)
else:
    from fcnrs.gis.areas import query_areas
    result = int(query_areas([zarr_path]).pixels.sum())
print(json.dumps({"seconds": time.perf_counter() - t, "result": result,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def waves(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Four classes in smooth waves: large regions, few polygons."""
    return ((np.sin(rows / 300) + np.cos(cols / 200)) * 1.9 + 2).astype(np.uint8) % 4


def write_labels(path: Path, size: int) -> Path:
    return write_label_raster(path, size, waves)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 24576])
    args = p.parse_args(argv)
    for size in args.sizes:
        if run_size(size):
            return 1
    return 0


def run_size(size: int) -> int:
    with tempfile.TemporaryDirectory(prefix="export_memory_") as tmp:
        t = time.perf_counter()
        zarr_path = write_labels(Path(tmp) / "big.zarr", size)
        print(
            f"{size}x{size} label raster ({size * size / 2**20:.0f} MiB as uint8) written in {time.perf_counter() - t:.0f} s"
        )
        base = None
        for task in ("load whole (baseline)", "export_cog + quicklook", "query_areas"):
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, task, str(zarr_path), str(Path(tmp) / "cogs")],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if proc.returncode:
                print(proc.stderr[-3000:])
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = base or r["peak_rss_mib"]
            print(
                f"{task:24s} peak RSS {r['peak_rss_mib']:7.0f} MiB "
                f"({r['peak_rss_mib'] / base:.2f}x baseline), {r['seconds']:6.1f} s, {r['result']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
