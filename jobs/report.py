"""The morning after: one self-contained HTML page for the night's run.

    python jobs/report.py OUT [--no-mosaic] [--size 1024] [--workers N]
    fcnrs report OUT ...
    fcnrs segment ... --out OUT --report     (the nightly run writes it at the end)

Writes ``OUT/report.html`` (OUT may be an s3://bucket/prefix URL): the latest
run's scenes (status and reason, time, Mpx/s, links to each scene's STAC Item,
COG, polygons and labels), the model replicas and their share of the work,
the model and every setting, class areas per scene and for the night (each
ground pixel once where scenes overlap: the last scene by name wins, as in the
mosaic), a map (the mosaic's quicklook with every footprint; failed scenes
marked) and every earlier run from the manifest. One file: styles, script and
map inline, no network access when opened. The mosaic is first brought up
to date (COGs exported where missing or out of date; in S3 too) unless
``--no-mosaic``. Prints the page's path. Exit status: 0 written, 1 nothing to
report (the folder is missing, not an output folder, or its manifest is empty).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.gis.report import write_report
from fcnrs.jobs.options import at_least, job_main, output_folder

log = logging.getLogger("fcnrs.report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=output_folder, help="output folder of jobs/segment_scenes.py")
    p.add_argument(
        "--no-mosaic",
        action="store_true",
        help="draw the map from the mosaic as it is (do not bring it up to date first)",
    )
    p.add_argument(
        "--size",
        type=at_least(64),
        default=1024,
        help="longer side of the map in pixels (default %(default)s)",
    )
    p.add_argument("--workers", type=at_least(1), default=None, help="threads for the areas")


def update(
    out_dir: str,
    *,
    refresh: bool = True,
    size: int = 1024,
    workers: int | None = None,
    note: str = "",
) -> bool:
    """Write the page (``note``: what to say under the map); log (and return
    False on) a failure."""
    try:
        where = write_report(
            out_dir, refresh=refresh, map_size=size, num_workers=workers, map_note=note
        )
    except Exception as exc:  # the page is a by-product: say why, never hide it
        log.error("%s: report not written: %s", out_dir, exc)
        return False
    print(where)
    return True


def run(args: argparse.Namespace) -> int:
    ok = update(args.out_dir, refresh=not args.no_mosaic, size=args.size, workers=args.workers)
    return 0 if ok else 1


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
