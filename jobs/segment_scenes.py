"""Segment GeoTIFF scenes into georeferenced Zarr label rasters, on Ray or in one process.

    python jobs/segment_scenes.py --model MODEL.safetensors --scenes 'scenes/*.tif' --out OUT
    ray job submit --working-dir . -- python jobs/segment_scenes.py --model ... --scenes ... --out ...
    fcnrs segment --model ... --scenes ... --out ...

Plain ``python`` runs the local engine (this process and one worker process,
every core, no Ray; ``--engine ray`` starts a local Ray instead); under ``ray
job submit`` (RAY_ADDRESS set) it joins the cluster. Each scene becomes ``OUT/<scene stem>.zarr`` and a row in
``OUT/manifest/``. Scenes already done with the same model and settings are
skipped; interrupted ones resume. One bad scene fails alone (recorded with its
reason) and the others finish. Exit status: 0 when every scene is done or
skipped; 1 when a scene failed; 2 when a flag, the model or the output folder
is unusable (nothing was done); 130 or 143 when stopped by SIGINT or SIGTERM
(``ray job stop``), unfinished scenes recorded as interrupted.

``--vectors [parquet|gpkg|fgb]``: after the run, every scene done or already
done also gets its polygons, in ``OUT/vectors/<name>.parquet`` (the default),
``OUT/vectors_gpkg/<name>.gpkg`` or ``OUT/vectors_fgb/<name>.fgb`` (see
jobs/vectorize.py; a current file is kept), and the night gets one layer of
them all, ``OUT/mosaic/polygons.<ext>``, where each ground pixel belongs to one
scene (the mosaic's rule). A scene whose polygons fail keeps its labels; the
exit status is then 1.
``--catalog`` then brings the STAC catalogue ``OUT/stac/`` up to date (``fcnrs
catalog``, after the polygons; not after a stopped run); a catalogue that could
not be written turns exit 0 into 1.
``--report`` brings the mosaic up to date (before the catalogue, so that its
Items link the COGs) and writes the night's page ``OUT/report.html`` last
(``fcnrs report``; not after a stopped run); a page that could not be written
turns exit 0 into 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import get_args

from fcnrs.fcn_model import FCNModelError
from fcnrs.gis.night_polygons import write_night_polygons
from fcnrs.gis.rasters import list_outputs
from fcnrs.gis.report import refresh_mosaic
from fcnrs.gis.vector_files import FORMATS, Format
from fcnrs.gis.vectors import Vectorized, vectorize
from fcnrs.jobs import catalog
from fcnrs.jobs import report as night_report
from fcnrs.jobs.inputs import for_each_input
from fcnrs.jobs.options import (
    add_bands,
    at_least,
    job_main,
    model_meta,
    output_folder,
    ray_starter,
    run_id,
    stop_on_sigterm,
)
from fcnrs.pipeline.distributed import print_summary, run_scenes
from fcnrs.pipeline.distributed.driver import EngineName, RunReport
from fcnrs.pipeline.distributed.retries import DEFAULT_RETRIES
from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.memory import keep_freed_memory
from fcnrs.pipeline.planning import DEFAULT_TILE_SIZE
from fcnrs.pipeline.precision import Precision
from fcnrs.pipeline.scenes import SegmentSettings, expand_scenes
from fcnrs.pipeline.tta import TTA_MODES

log = logging.getLogger("fcnrs.segment")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The job's options, in the groups ``--help`` shows."""
    _add_inputs(p.add_argument_group("inputs and output"))
    _add_output_settings(p.add_argument_group("what decides the labels (recorded in each output)"))
    _add_execution(p.add_argument_group("how the run goes"))
    _add_after_the_run(p.add_argument_group("after the run"))


def _add_inputs(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--model", required=True, help="checkpoint written by save_checkpoint (path or s3:// URL)"
    )
    p.add_argument(
        "--scenes",
        required=True,
        nargs="+",
        help="GeoTIFF files, globs, or .txt/.lst files listing one scene per line",
    )
    p.add_argument(
        "--out", required=True, type=output_folder, help="output folder (one .zarr per scene)"
    )


def _add_output_settings(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--tile-size",
        type=at_least(1),
        default=DEFAULT_TILE_SIZE,
        help="core edge in pixels, rounded to a multiple of 32 (default %(default)s)",
    )
    p.add_argument(
        "--overlap",
        type=at_least(0),
        default=None,
        help="context halo on each side in pixels, rounded up to a multiple of 32 "
        "(default: the halo recorded in the checkpoint by fine-tuning or fcnrs context, "
        "else a conservative one for its architecture; the choice is logged)",
    )
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="tiles per model call (default: 4 on a CPU; on a GPU as many as half "
        "its free memory holds, measured by the replica)",
    )
    add_bands(p, "e.g. 4,3,2 (1-based; default: the checkpoint's)")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument(
        "--precision",
        choices=list(get_args(Precision)),
        default="auto",
        help="auto: bf16 where the hardware runs it fast (CPU with AVX512-BF16 or AMX, "
        "CUDA with bf16), fp32 elsewhere; the choice is logged and recorded",
    )
    p.add_argument(
        "--tta",
        choices=list(TTA_MODES),
        default="none",
        help="test-time augmentation: average class probabilities over 4 flips (flips) or "
        "every flip and 90-degree turn (d4), on the stride grid; 4x or 8x the model's "
        "work (default %(default)s: see the README for what it gains)",
    )


def _add_execution(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", *get_args(EngineName)],
        default="auto",
        help="ray: a Ray cluster (joined under ray job submit, else started locally); "
        "local: this process on every core, no Ray; auto (default): ray under "
        "ray job submit (RAY_ADDRESS set), local otherwise",
    )
    p.add_argument(
        "--num-replicas",
        type=at_least(1),
        default=None,
        help="model replicas (default: one per GPU, or fit the CPUs)",
    )
    p.add_argument(
        "--threads-per-replica", type=at_least(1), default=None, help="CPU replicas only"
    )
    p.add_argument(
        "--retries",
        type=at_least(0),
        default=DEFAULT_RETRIES,
        help="retries of a failed batch (an exception, or its process dying) before its "
        "scene fails; a failure that looks like memory splits the batch (default %(default)s)",
    )
    p.add_argument(
        "--run-id",
        type=run_id,
        default=None,
        help="manifest run id: letters, digits, '.', '_', '-' (default: time + random)",
    )


def _add_after_the_run(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--vectors",
        nargs="?",
        const="parquet",
        default=None,
        choices=sorted(FORMATS),
        metavar="FORMAT",
        help="after the run, write each done or skipped scene's polygons (kept when current) "
        "and the night's layer OUT/mosaic/polygons.<ext>; FORMAT parquet (the default: "
        "OUT/vectors/<name>.parquet), gpkg or fgb (OUT/vectors_gpkg/, OUT/vectors_fgb/: "
        "what GDAL < 3.8, QGIS on Debian 12 included, opens)",
    )
    p.add_argument(
        "--catalog",
        action="store_true",
        help="after the run, update the STAC catalogue OUT/stac/ (as fcnrs catalog OUT)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="after the run, bring the mosaic up to date and write the night's page "
        "OUT/report.html (as fcnrs report OUT)",
    )


def run(args: argparse.Namespace) -> int:
    keep_freed_memory()  # before any thread: every batch buffer is then reused
    settings = SegmentSettings(
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        bands=args.bands,
        probabilities=args.probabilities,
        precision=args.precision,
        tta=args.tta,
    )
    engine, start_ray = choose_engine(args.engine), ray_starter(args.verbose)
    try:
        model_meta(args.model)  # a local file or an s3:// URL
        if engine == "ray":
            start_ray()  # first: ray.init installs its own SIGTERM handler (sys.exit)
        with stop_on_sigterm():
            report = run_scenes(
                expand_scenes(args.scenes),
                model=args.model,
                out_dir=args.out,
                settings=settings,
                replicas=args.num_replicas,
                threads=args.threads_per_replica,
                run_id=args.run_id,
                start_ray=start_ray,
                engine=engine,
                retries=args.retries,
            )
    except (FCNModelError, OutputError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the run had started
        log.error("stopped by SIGINT before any scene started")
        return 128 + signal.SIGINT
    print_summary(report, args.out)
    code = report.exit_code()
    if report.interrupted:  # stop promptly: the scheduler may not wait
        return code
    # Each step runs whatever came before: a failed scene must not cost the others
    # their polygons, catalogue or page.
    if args.vectors and write_polygons(report, args.out, fmt=args.vectors):
        code = code or 1
    mosaic_note = refresh_mosaic(args.out) if args.report else ""
    if args.catalog and not catalog.update(args.out):
        code = code or 1
    if args.report and not night_report.update(args.out, refresh=False, note=mosaic_note):
        code = code or 1
    return code


def write_polygons(report: RunReport, out: str, *, fmt: Format = "parquet") -> int:
    """Polygons of every scene done or skipped as done, then the night's layer
    of every published scene of ``out``; returns how many failed (logged, the
    label rasters untouched)."""

    def report_one(done: Vectorized) -> None:
        log.info(
            "%s: %s", done.path, "kept (current)" if done.kept else f"{done.features} polygons"
        )

    published = [row.output for row in report.rows if row.status in ("done", "skipped")]
    failed = for_each_input(
        published,
        lambda output: vectorize(output, fmt=fmt),
        done=report_one,
        failure="polygons failed (its labels are kept)",
        log=log,
    )
    try:
        outputs = list_outputs(out)
        if outputs:
            night = write_night_polygons(outputs, fmt=fmt)
            what = "kept (current)" if night.kept else f"{night.features} polygons"
            log.info("%s: the night's polygons, %s", night.path, what)
    except Exception as exc:
        failed += 1
        log.error("%s: the night's polygons failed: %s", out, exc)
    return failed


def choose_engine(engine: str) -> EngineName:
    """``auto``: the Ray cluster a ``ray job submit`` runs in, else this process."""
    if engine == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"
    return engine  # type: ignore[return-value]


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
