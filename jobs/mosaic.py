"""One raster layer for a whole output folder: a VRT and a GDAL tile index over its COGs.

    python jobs/mosaic.py OUT [--cogs DIR] [--crs EPSG:32633] [--quicklook night.png]
    fcnrs mosaic OUT ...

Exports the COGs that are missing or out of date into ``--cogs`` (default
``OUT/cogs``; current ones are kept), then writes ``OUT/mosaic/labels.vrt``
(every GDAL, 3.6 included: open it in QGIS as one paletted layer),
``OUT/mosaic/labels.gti.gpkg`` (the same layer through GDAL >= 3.9's GTI
driver; as a vector layer, the scenes' footprints). Scenes in
another CRS than the mosaic's (default: the one most scenes share) are warped
by nearest neighbour. ``--quicklook FILE`` also renders the mosaic as a
paletted PNG (``--size`` pixels on its longer side). OUT, ``--cogs`` and
``--quicklook`` may be s3:// URLs; an S3 mosaic names its COGs ``/vsis3/...``.
Prints the paths written.
Exit status: 0 written, 1 nothing to mosaic or a bad output.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pyproj import CRS
from pyproj.exceptions import CRSError

from fcnrs.gis.mosaic import build_mosaic
from fcnrs.gis.quicklook import write_quicklook
from fcnrs.jobs.options import at_least, job_main, output_folder
from fcnrs.pipeline.errors import PipelineError
from fcnrs.pipeline.storage import Location

log = logging.getLogger("fcnrs.mosaic")


def crs_text(text: str) -> str:
    """An argparse type: a CRS pyproj understands."""
    try:
        CRS.from_user_input(text)
    except CRSError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CRS (try EPSG:32633)") from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "out_dir", type=output_folder, help="output folder of jobs/segment_scenes.py (or s3://)"
    )
    p.add_argument(
        "--cogs", type=output_folder, default=None, help="COG folder (default: OUT/cogs)"
    )
    p.add_argument("--crs", type=crs_text, default=None, help="mosaic CRS (default: most scenes')")
    p.add_argument(
        "--quicklook", default=None, metavar="PNG", help="also render a PNG (path or s3:// URL)"
    )
    p.add_argument(
        "--size",
        type=at_least(1),
        default=512,
        help="longer side of the quicklook (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        done = build_mosaic(args.out_dir, cogs=args.cogs, crs=args.crs)
    except (PipelineError, OSError) as exc:  # OSError: missing, no such bucket, denied
        log.error("%s", exc)
        return 1
    for name in done.exported:
        log.info("%s: COG exported", name)
    paths: list[Path | Location] = [done.vrt, done.gti]
    if args.quicklook:
        paths.append(write_quicklook(done.vrt, args.quicklook, size=args.size))
    for path in paths:
        print(path)
    return 0


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
