"""Segment GeoTIFF scenes into georeferenced Zarr label rasters, on Ray.

    python jobs/segment_scenes.py --model MODEL.safetensors --scenes 'scenes/*.tif' --out OUT
    ray job submit --working-dir . -- python jobs/segment_scenes.py --model ... --scenes ... --out ...

Plain ``python`` starts a local Ray; under ``ray job submit`` (RAY_ADDRESS set)
it joins the cluster. Each scene becomes ``OUT/<scene stem>.zarr`` and a row in
``OUT/manifest/``. Scenes already done with the same model and settings are
skipped; interrupted ones resume. One bad scene fails alone (recorded with its
reason); the exit status is 1 when any scene failed, 2 when the model or the
output folder is unusable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from fcn_model import FCNModelError, read_meta
from pipeline.distributed import RunReport, run_scenes
from pipeline.errors import OutputError
from pipeline.planning import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from pipeline.scenes import expand_scenes
from pipeline.segment import SegmentSettings

log = logging.getLogger("segment_scenes")


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bands takes 1-based band indexes like 4,3,2. Got {text!r}."
        ) from None
    return bands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint written by save_checkpoint")
    p.add_argument(
        "--scenes",
        required=True,
        nargs="+",
        help="GeoTIFF files, globs, or .txt/.lst files listing one scene per line",
    )
    p.add_argument("--out", required=True, help="output folder (one .zarr per scene)")
    p.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help="core edge in pixels, rounded to a multiple of 32 (default %(default)s)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help="context halo on each side in pixels, rounded up to a multiple of 32 "
        "(default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="tiles per model call")
    p.add_argument("--bands", type=parse_bands, default=None, help="e.g. 4,3,2 (1-based)")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--num-replicas",
        type=int,
        default=None,
        help="model replicas (default: one per GPU, or fit the CPUs)",
    )
    p.add_argument("--threads-per-replica", type=int, default=None, help="CPU replicas only")
    p.add_argument("--run-id", default=None, help="manifest run id (default: time + random)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def print_summary(report: RunReport, out: str) -> None:
    """The table an operator reads at the end of a run (the manifest has it all)."""
    print(f"\nrun {report.run_id}: outputs and manifest in {out}")
    print(f"{'status':<8} {'tiles':>6} {'predicted':>9} {'valid MP':>9} {'seconds':>8}  scene")
    for r in report.rows:
        print(
            f"{r.status:<8} {r.tiles:>6} {r.tiles_predicted:>9} {r.valid_pixels / 1e6:>9.2f} "
            f"{r.seconds:>8.1f}  {r.scene}"
        )
    for replica, batches in sorted(report.replica_batches.items()):
        print(f"replica {replica}: {batches} batches")
    counts = Counter(r.status for r in report.rows)
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    for r in report.failed:
        print(f"  failed: {r.error}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = SegmentSettings(
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        bands=args.bands,
        probabilities=args.probabilities,
        precision=args.precision,
    )
    try:
        read_meta(args.model)
        report = run_scenes(
            expand_scenes(args.scenes),
            model=args.model,
            out_dir=args.out,
            settings=settings,
            replicas=args.num_replicas,
            threads=args.threads_per_replica,
            run_id=args.run_id,
        )
    except (FCNModelError, OutputError) as exc:
        log.error("%s", exc)
        return 2
    print_summary(report, args.out)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
