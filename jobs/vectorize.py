"""Turn Zarr label rasters into polygons per class (GeoParquet, FlatGeobuf, GeoPackage).

    python jobs/vectorize.py OUT/scene_a.zarr [OUT/scene_b.zarr ...] [--out DIR] \\
        [--format parquet|fgb|gpkg] [--simplify M] [--min-area M2] [--force]
    fcnrs vectorize OUT/*.zarr

Writes one file per scene, by default ``OUT/vectors/<name>.parquet``: together
the files of an output folder are one GeoParquet dataset (geopandas, DuckDB and
pyarrow read the folder as a whole). ``--format fgb`` or ``gpkg`` writes
FlatGeobuf or GeoPackage instead (default folder ``OUT/vectors_fgb`` or
``OUT/vectors_gpkg``). Each feature is one polygon of one class (holes kept;
4-connected pixels), with scene, class_id, class_name, area_m2, perimeter_m and
model_digest. ``--simplify M`` simplifies outlines by M map units, keeping them
valid; ``--min-area M2`` leaves out polygons smaller than M2 square metres.
A file already made from the very same label raster with the same options is
kept; ``--force`` rewrites it. A bad input fails alone and is named; the others
are written. ``--night`` also writes the night's layer of the given rasters
(all in one output folder): ``OUT/mosaic/polygons.<ext>``, where each ground
pixel belongs to the last scene by name that has a label there (the mosaic's
rule), so overlapping scenes give one set of outlines. Label rasters and
``--out`` may be in S3 (``'s3://bucket/out/*.zarr'`` globs too). Prints every
output path. Exit status: 0 all written or kept, 1 some failed, 2 bad arguments
or an s3:// glob that cannot be listed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.gis.night_polygons import write_night_polygons
from fcnrs.gis.polygons import VectorSettings
from fcnrs.gis.vector_files import FORMATS
from fcnrs.gis.vectors import Vectorized, vectorize
from fcnrs.jobs.inputs import expand_inputs, for_each_input
from fcnrs.jobs.options import job_main, output_folder

log = logging.getLogger("fcnrs.vectorize")


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "zarr",
        nargs="+",
        help="label rasters written by jobs/segment_scenes.py (paths, s3:// URLs or s3:// globs)",
    )
    p.add_argument(
        "--out",
        type=output_folder,
        default=None,
        help="folder or s3:// prefix for the files (default: vectors/ beside each raster)",
    )
    p.add_argument("--format", choices=sorted(FORMATS), default="parquet", help="file format")
    p.add_argument(
        "--simplify",
        type=non_negative,
        default=0.0,
        metavar="M",
        help="simplification tolerance in map units (topology kept; default none)",
    )
    p.add_argument(
        "--min-area",
        type=non_negative,
        default=0.0,
        metavar="M2",
        help="leave out polygons smaller than this many m^2 (default none)",
    )
    p.add_argument("--force", action="store_true", help="rewrite files even when current")
    p.add_argument(
        "--night",
        action="store_true",
        help="also write the night's layer OUT/mosaic/polygons.<ext> (overlaps once)",
    )


def _report(done: Vectorized) -> None:
    if done.kept:
        log.info("%s: kept, already made from this label raster", done.path)
    else:
        log.info("%s: %d polygons", done.path, done.features)
    print(done.path)


def run(args: argparse.Namespace) -> int:
    settings = VectorSettings(simplify=args.simplify, min_area_m2=args.min_area)
    paths = expand_inputs(args.zarr, log)
    if paths is None:
        return 2

    def polygons(path: str) -> Vectorized:
        return vectorize(path, args.out, fmt=args.format, settings=settings, force=args.force)

    failed = for_each_input(paths, polygons, done=_report, failure="polygons failed", log=log)
    if args.night:
        try:
            done = write_night_polygons(paths, fmt=args.format, settings=settings, force=args.force)
        except Exception as exc:
            log.error("the night's polygons failed: %s", exc)
            return 1
        log.info("%s: %s", done.path, "kept" if done.kept else f"{done.features} polygons")
        print(done.path)
    return 1 if failed else 0


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
