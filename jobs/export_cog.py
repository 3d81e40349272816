"""Export Zarr label rasters to Cloud Optimized GeoTIFFs for GDAL and QGIS.

    python jobs/export_cog.py OUT/scene_a.zarr [OUT/scene_b.zarr ...] --out cogs \\
        [--probabilities] [--quicklook 1024]
    fcnrs export OUT/*.zarr --out cogs

Writes ``cogs/<name>.tif`` per scene (nodata 255, 512-px tiles, overviews by mode,
the class colours as a colour table) with ``cogs/<name>.tif.aux.xml`` holding
the class names (category names and a raster attribute table; keep it beside
the .tif). ``--probabilities`` adds ``<name>_probabilities.tif``;
``--quicklook N`` adds ``<name>.png``, a colour-mapped preview N pixels on its
longer side. A bad input fails alone and is named; the others are exported.
A GeoTIFF already exported from the very same label raster (its
SOURCE_FINGERPRINT tag: model, settings, source file, grid) is kept, so a
nightly run redoes only re-segmented scenes; ``--force`` rewrites it anyway.
Prints every output path. Exit status: 0 all exported, 1 some failed, 2 an
s3:// glob cannot be listed. Label rasters and ``--out`` may be in S3
(``'s3://bucket/out/*.zarr'`` globs too).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.gis.cog import Exported, export_cog
from fcnrs.jobs.inputs import expand_inputs, for_each_input
from fcnrs.jobs.options import job_main, output_folder

log = logging.getLogger("fcnrs.export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "zarr",
        nargs="+",
        help="label rasters written by jobs/segment_scenes.py (paths, s3:// URLs or s3:// globs)",
    )
    p.add_argument(
        "--out", required=True, type=output_folder, help="folder (or s3:// prefix) for the GeoTIFFs"
    )
    p.add_argument("--probabilities", action="store_true", help="also export probabilities")
    p.add_argument("--quicklook", type=int, default=None, metavar="PX", help="PNG preview size")
    p.add_argument(
        "--force", action="store_true", help="rewrite GeoTIFFs even when they are current"
    )


def _report(done: Exported) -> None:
    for kept in done.kept:
        log.info("%s: kept, already exported from this label raster", kept)
    for written in (done.labels, done.probabilities, done.quicklook):
        if written:
            print(written)


def run(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.zarr, log)
    if paths is None:
        return 2

    def export(path: str) -> Exported:
        return export_cog(
            path,
            args.out,
            probabilities=args.probabilities,
            quicklook=args.quicklook,
            force=args.force,
        )

    failed = for_each_input(paths, export, done=_report, failure="export failed", log=log)
    return 1 if failed else 0


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
