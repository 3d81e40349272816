"""Segment GeoTIFF scenes into georeferenced Zarr label rasters.

    python jobs/segment_scenes.py --model MODEL.safetensors --scenes 'scenes/*.tif' --out OUT

Each scene becomes ``OUT/<scene stem>.zarr``. One bad scene fails alone: its
error (naming the file and the reason) is reported, the others finish, and the
process exits with status 1 so a scheduler notices.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from fcn_model import FCNModelError
from pipeline.errors import PipelineError
from pipeline.inference import Predictor
from pipeline.planning import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from pipeline.reading import scene_stem
from pipeline.scenes import expand_scenes
from pipeline.segment import SegmentSettings, segment_scene

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
    p.add_argument("-v", "--verbose", action="store_true")
    return p


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
    scenes = expand_scenes(args.scenes)
    stems = Counter(scene_stem(s) for s in scenes)
    try:
        predictor = Predictor(
            args.model, precision=args.precision, probabilities=args.probabilities
        )
    except (PipelineError, FCNModelError) as exc:
        log.error("%s", exc)
        return 2
    failed: list[tuple[str, str]] = []
    for scene in scenes:
        if stems[scene_stem(scene)] > 1:
            failed.append(
                (
                    scene,
                    f"another scene in this run is also named "
                    f"{scene_stem(scene)}.zarr; rename one or run them separately",
                )
            )
            continue
        try:
            segment_scene(
                scene, model=args.model, out_dir=args.out, settings=settings, predictor=predictor
            )
        except Exception as exc:
            failed.append((scene, str(exc)))
            log.error("FAILED %s (skipped, other scenes go on)", exc)
    done = len(scenes) - len(failed)
    print(f"{done} scene(s) done, {len(failed)} failed, outputs in {args.out}")
    for scene, reason in failed:
        print(f"  failed: {scene}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
