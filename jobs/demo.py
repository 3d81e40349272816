"""Run the built-in demo: sample scenes, fine-tuning, segmentation, scores, COG.

    python jobs/demo.py [--out demo_out] [--train-seconds 60] [--width 0.125]
    fcnrs demo [--out demo_out]

Writes three labeled sample scenes, fine-tunes a small FCN-4s (the fine-tuning
job's default architecture) on the first with the fine-tuning code (in this
process, no Ray Train start-up), picking the best epoch on the second;
segments the third, unseen scene as the segmentation job does (the local
engine, or the Ray cluster under ``ray job submit``), prints its per-class IoU,
mean IoU and pixel accuracy, exports a COG with a quicklook and prints the
areas per class (:mod:`fcnrs.demo.run`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcnrs.demo.run import run_demo
from fcnrs.jobs.options import job_main, ray_starter
from fcnrs.jobs.segment_scenes import choose_engine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default %(default)s)")
    p.add_argument(
        "--train-seconds",
        type=float,
        default=60.0,
        help="wall time of the fine-tuning (default %(default)s)",
    )
    p.add_argument(
        "--width", type=float, default=0.125, help="the network's channel width multiplier"
    )


def run(args: argparse.Namespace) -> int:
    return run_demo(
        Path(args.out),
        train_seconds=args.train_seconds,
        width=args.width,
        engine=choose_engine("auto"),
        start_ray=ray_starter(args.verbose),
    )


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
