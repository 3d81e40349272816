"""Measure the halo a checkpoint needs and record it in the checkpoint.

    fcnrs context MODEL [SCENE ...] [--bands 4,3,2] [--dry-run]
    python jobs/context.py MODEL [SCENE ...]

For a checkpoint made elsewhere (fine-tuning records its own): labels the central
region (at most 1024 px a side) of each SCENE once whole and then in 256-px
tiles at halos of 0, 32, 64, ... px, finds the smallest halo at which every
scene agrees with the whole pass on at least 99.9% of its valid pixels, and
records it plus a margin of one stride (32 px) for scenes unlike these.
Without SCENE, a scene generated with the checkpoint's bands and normalisation
is used; a scene like the ones the model will label is the better measure.
``jobs/segment_scenes.py`` then uses that halo unless ``--overlap`` is given.

The checkpoint is rewritten atomically (a new file beside it, renamed over it),
weights unchanged; its digest changes, so outputs made with it are recomputed
by the next run. ``--dry-run`` measures and writes nothing. Exit status: 0
recorded (or measured, with --dry-run); 1 the measurement failed (a scene
unreadable, no halo up to 512 px agrees); 2 the checkpoint is unusable.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.fcn_model import FCNModelError, read_meta, record_halo
from fcnrs.jobs.options import add_bands, at_least, job_main
from fcnrs.pipeline.context import (
    MARGIN,
    MEASURE_MAX_SIDE,
    MEASURE_TILE_SIZE,
    THRESHOLD,
    measure_halo,
)
from fcnrs.pipeline.planning import DEFAULT_TILE_SIZE, plan_tiles
from fcnrs.pipeline.storage import is_url

log = logging.getLogger("fcnrs.context")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint (a local file: the halo is written into it)")
    p.add_argument(
        "scenes",
        nargs="*",
        metavar="SCENE",
        help="GeoTIFFs like the ones the model will label (default: a generated scene)",
    )
    add_bands(p, "1-based bands to read from SCENE (default: the checkpoint's)")
    p.add_argument(
        "--tile-size",
        type=at_least(1),
        default=MEASURE_TILE_SIZE,
        help="core edge while measuring: small cores, many seams (default %(default)s)",
    )
    p.add_argument(
        "--max-side",
        type=at_least(32),
        default=MEASURE_MAX_SIDE,
        help="edge of each scene's central region measured (default %(default)s)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="the model's precision while measuring (default %(default)s)",
    )
    p.add_argument("--dry-run", action="store_true", help="measure only; leave MODEL as it is")


def run(args: argparse.Namespace) -> int:
    if is_url(args.model):
        log.error("%s: give a local checkpoint file; the halo is written into it", args.model)
        return 2
    try:
        meta = read_meta(args.model)
    except FCNModelError as exc:
        log.error("%s", exc)
        return 2
    if meta.halo is not None:
        log.info("%s: recorded so far: %s", args.model, meta.halo.describe())
    try:
        measured = measure_halo(
            args.model,
            args.scenes,
            bands=args.bands,
            tile_size=args.tile_size,
            precision=args.precision,
            max_side=args.max_side,
        )
    except (ValueError, OSError) as exc:  # SceneError is a ValueError naming the file
        log.error("the halo was not measured: %s", exc)
        return 1
    for halo, agreement in measured.tried:
        print(f"halo {halo:>3} px: {agreement:.4%} of valid pixels agree")
    cost = plan_tiles(4096, 4096, tile_size=DEFAULT_TILE_SIZE, overlap=measured.halo)
    print(
        f"needs {measured.needed} px for {THRESHOLD:.1%} here; with a margin of {MARGIN} px "
        f"for other scenes, {measured.halo} px: {cost.computed_per_written():.2f} pixels "
        f"computed per pixel written at {DEFAULT_TILE_SIZE}-px cores on a 4096 x 4096 scene"
    )
    if args.dry_run:
        return 0
    try:
        record_halo(args.model, measured)
    except (FCNModelError, OSError) as exc:
        log.error("%s: the halo was not recorded: %s", args.model, exc)
        return 2
    print(f"recorded in {args.model}: {measured.describe()}")
    return 0


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
