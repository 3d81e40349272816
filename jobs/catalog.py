"""A STAC catalogue of an output folder: one Item per label raster, one Collection.

    python jobs/catalog.py OUT [--cogs DIR] [--vectors DIR]
    fcnrs catalog OUT ...
    fcnrs segment ... --out OUT --catalog     (the nightly run keeps it current)

(Re)writes ``OUT/stac/collection.json`` and ``OUT/stac/<name>/<name>.json``
(relative hrefs: the folder can move) from what OUT holds and what its run
manifest says: every published label raster has an Item with its Zarr, and its
COG and quicklook (``--cogs``, default OUT/cogs) and polygons (``--vectors``,
default OUT/vectors/<name>.parquet) where they exist; Items of removed outputs
are deleted; an output whose latest run failed keeps its Item, marked
``fcnrs:stale``. OUT may be an s3:// URL. Prints the collection's path.
Exit status: 0 written, 1 failed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.gis.catalog import write_catalog
from fcnrs.jobs.options import job_main, output_folder

log = logging.getLogger("fcnrs.catalog")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=output_folder, help="output folder of jobs/segment_scenes.py")
    p.add_argument("--cogs", default=None, help="COGs and quicklooks (default: OUT/cogs)")
    p.add_argument("--vectors", default=None, help="polygons (default: OUT/vectors)")


def update(out_dir: str, *, cogs: str | None = None, vectors: str | None = None) -> bool:
    """Write the catalogue; log (and return False on) a failure."""
    try:
        report = write_catalog(out_dir, cogs=cogs, vectors=vectors)
    except Exception as exc:  # the catalogue is a by-product: say why, never hide it
        log.error("%s: STAC catalogue not updated: %s", out_dir, exc)
        return False
    for name in report.removed:
        log.info("%s: item removed (its output is gone)", name)
    for name in report.stale:
        log.warning("%s: item kept but stale (its latest run did not finish it)", name)
    print(report.collection)
    return True


def run(args: argparse.Namespace) -> int:
    return 0 if update(args.out_dir, cogs=args.cogs, vectors=args.vectors) else 1


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
