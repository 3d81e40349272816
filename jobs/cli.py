"""``fcnrs``: one command with a subcommand for every job.

    fcnrs segment  --model M --scenes 'scenes/*.tif' --out OUT     (jobs/segment_scenes.py)
    fcnrs finetune --scenes scenes.csv --classes land,water --out RUN   (jobs/finetune.py)
    fcnrs context  MODEL [SCENE ...]                               (jobs/context.py)
    fcnrs export   OUT/*.zarr --out cogs                           (jobs/export_cog.py)
    fcnrs areas    OUT [--bbox ...]                                (jobs/query_areas.py)
    fcnrs vectorize OUT/*.zarr [--format parquet|fgb|gpkg]         (jobs/vectorize.py)
    fcnrs mosaic   OUT [--cogs DIR] [--crs EPSG:n]                 (jobs/mosaic.py)
    fcnrs catalog  OUT                                             (jobs/catalog.py)
    fcnrs report   OUT                                             (jobs/report.py)
    fcnrs demo     [--out demo_out]                                (jobs/demo.py)

``python jobs/<job>.py ...`` runs the same code with the same options; that is
the form ``ray job submit -- python jobs/segment_scenes.py ...`` uses.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import (
    catalog,
    context,
    demo,
    export_cog,
    finetune,
    mosaic,
    query_areas,
    report,
    segment_scenes,
    vectorize,
)
from .options import add_verbosity, setup_logging

SUBCOMMANDS = {
    "segment": segment_scenes,
    "finetune": finetune,
    "context": context,
    "export": export_cog,
    "areas": query_areas,
    "vectorize": vectorize,
    "mosaic": mosaic,
    "catalog": catalog,
    "report": report,
    "demo": demo,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcnrs", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, job in SUBCOMMANDS.items():
        sp = sub.add_parser(
            name,
            help=(job.__doc__ or name).strip().splitlines()[0],
            description=job.__doc__,
            formatter_class=argparse.RawTextHelpFormatter,
        )
        job.add_arguments(sp)
        add_verbosity(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return int(SUBCOMMANDS[args.command].run(args))
