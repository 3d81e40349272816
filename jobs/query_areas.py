"""Area per class of the label rasters in an output folder, with dask.

    python jobs/query_areas.py OUT [--bbox minx,miny,maxx,maxy] [--bbox-crs EPSG:4326] \\
        [--classes water,built-up] [--format table|csv|parquet] [--output FILE]
    fcnrs areas OUT ...

Reports, per scene and class, the pixel count and the area in m^2 and km^2
(exact on the ellipsoid for geographic CRSs), inside the bounding box when one
is given (``--bbox-crs`` defaults to each scene's own CRS). Nodata is never
counted. CSV and Parquet carry the columns scene, output, class_id, class_name,
pixels, area_m2, area_km2; ``output`` is the same path the run manifest
records, so the two join on it. Results go to standard output unless
``--output`` is given (Parquet needs it). OUT and ``--output`` may be s3:// URLs.
Exit status 2 on bad arguments, or an OUT that cannot be listed.

``--night``: one row per class for the whole night instead (columns class_id,
class_name, pixels, area_m2, area_km2), where scenes overlap each ground pixel
counted once: it belongs to the last scene by name that has a label there, the
rule the mosaic draws by (fcnrs.gis.night).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal, get_args

import pandas as pd
from pyproj import CRS
from pyproj.exceptions import CRSError

from fcnrs.gis.areas import query_areas
from fcnrs.gis.night_areas import night_areas
from fcnrs.gis.rasters import list_outputs
from fcnrs.jobs.options import job_main
from fcnrs.pipeline.storage import Location

#: How the table is written.
TableFormat = Literal["table", "csv", "parquet"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="output folder of jobs/segment_scenes.py (or s3:// prefix)")
    p.add_argument("--bbox", default=None, help="minx,miny,maxx,maxy")
    p.add_argument("--bbox-crs", default=None, help="CRS of --bbox (default: each scene's)")
    p.add_argument("--classes", default=None, help="class names or ids, comma-separated")
    p.add_argument("--format", choices=get_args(TableFormat), default="table")
    p.add_argument(
        "--output", default=None, help="file or s3:// URL to write (default: standard output)"
    )
    p.add_argument("--workers", type=int, default=None, help="dask threads (default: CPUs)")
    p.add_argument(
        "--night",
        action="store_true",
        help="one row per class for the whole night, each ground pixel once where scenes "
        "overlap (the last scene by name wins, as in the mosaic)",
    )
    p.set_defaults(parser=p)


def _bbox(p: argparse.ArgumentParser, text: str | None) -> list[float] | None:
    """``--bbox`` as four numbers, or the parser's error (exit status 2)."""
    if not text:
        return None
    try:
        bbox = [float(v) for v in text.split(",")]
    except ValueError:
        bbox = []
    if len(bbox) != 4 or bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
        p.error(f"--bbox must be minx,miny,maxx,maxy with min < max. Got {text!r}.")
    return bbox


def _areas(
    args: argparse.Namespace, outputs: list[Location], bbox: list[float] | None
) -> pd.DataFrame:
    """Per scene and class, or (``--night``) per class for the whole night."""
    options: dict[str, Any] = {
        "bbox": bbox,
        "bbox_crs": args.bbox_crs,
        "classes": args.classes.split(",") if args.classes else None,
        "num_workers": args.workers,
    }
    if args.night:
        return night_areas(outputs, **options).night
    return query_areas(outputs, **options)


def _write(table: pd.DataFrame, fmt: TableFormat, output: str | None) -> None:
    """The table to standard output, or to ``output`` (local or ``s3://``, whole)."""
    text = ""
    if fmt == "table":
        text = table.drop(columns="output", errors="ignore").to_string(
            index=False, formatters={"area_m2": "{:.1f}".format, "area_km2": "{:.4f}".format}
        )
    if not output:
        if fmt == "csv":
            table.to_csv(sys.stdout, index=False)
        else:
            print(text)
        return
    with Location(output).staged() as tmp:  # a local file or an s3:// object, whole
        if fmt == "parquet":
            table.to_parquet(tmp, index=False)
        elif fmt == "csv":
            table.to_csv(tmp, index=False)
        else:
            tmp.write_text(text + "\n")


def run(args: argparse.Namespace) -> int:
    p = args.parser
    if args.format == "parquet" and not args.output:
        p.error("--format parquet needs --output FILE")
    bbox = _bbox(p, args.bbox)
    if args.bbox_crs:
        try:
            CRS.from_user_input(args.bbox_crs)
        except CRSError as exc:
            p.error(f"--bbox-crs {args.bbox_crs!r}: {exc}")
    try:
        outputs = list_outputs(args.out_dir)  # a local folder or an s3:// prefix
    except (OSError, ValueError) as exc:  # missing, no such bucket, access denied
        p.error(str(exc))
    if args.night and not outputs:
        p.error(f"{args.out_dir}: no published label rasters, so no night to measure")
    _write(_areas(args, outputs, bbox), args.format, args.output)
    return 0


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
