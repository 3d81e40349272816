"""Fine-tune an FCN on labeled scenes with Ray Train.

    python jobs/finetune.py --scenes scenes.csv --out runs/water --classes land,water \\
        [--variant fcn8s] [--width 0.25] [--num-workers 2] [--use-gpu] \\
        [--init-vgg16 vgg16.pth | --init model.safetensors] [--epochs 10] \\
        [--steps-per-epoch 100] [--time-limit 10] [--ignore-value -1]
    fcnrs finetune --scenes ... --out ... --classes ...

``--scenes`` is a CSV with columns image,label,split. The best model by mean IoU
on the val scenes is written to ``OUT/best`` (a checkpoint ``jobs/segment_scenes.py
--model OUT/best`` takes as it is), with ``OUT/best_report.json`` and every
epoch's metrics in ``OUT/report.json``. Re-running with the same ``--out``
continues from the last checkpoint. Plain ``python`` starts a local Ray; under
``ray job submit`` (RAY_ADDRESS set) it joins the cluster.

Every path may be an s3:// URL: the scene table (its relative lines then name
objects beside it), the rasters it lists, ``--classes`` as a file,
``--init``/``--init-vgg16`` (fetched once per version) and ``--out`` (the best
checkpoint, the reports and Ray Train's own state). Exit status 2 when an input
or ``--out`` is unusable (named, with the reason), before any training.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcnrs.fcn_model import VARIANTS, FCNModelError
from fcnrs.jobs.options import add_bands, job_main, model_meta, output_folder, ray_starter
from fcnrs.pipeline.errors import PipelineError
from fcnrs.pipeline.storage import Location, local_copy
from fcnrs.training.trainer import finetune, settings_from_args

log = logging.getLogger("fcnrs.finetune")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", required=True, help="CSV with columns image,label,split")
    p.add_argument(
        "--out",
        required=True,
        type=output_folder,
        help="output folder or s3:// prefix (best checkpoint, reports, Ray state)",
    )
    p.add_argument("--classes", required=True, help="names (land,water) or a JSON/YAML file")
    add_bands(p, "1-based bands, e.g. 4,3,2 (default: all)")
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="fcn4s",
        help="fcn4s (default) adds a pool2 skip to the paper's fcn8s: thin classes and "
        "edges, same speed on CPU; fcn2s adds pool1",
    )
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="torch threads follow it (default: the most CPUs per worker with which "
        "every worker fits on the cluster's nodes)",
    )
    p.add_argument("--init-vgg16", default=None, help="ImageNet VGG16 weights (torchvision layout)")
    p.add_argument("--init", default=None, help="start from this checkpoint")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None, help="peak rate (adam 2e-3, sgd 1e-4)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 10, or as many as --time-limit allows",
    )
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4, help="windows per step per worker")
    p.add_argument("--window", type=int, default=256, help="training window edge in pixels")
    p.add_argument("--time-limit", type=float, default=None, help="minutes; stops cleanly")
    p.add_argument("--ignore-value", type=int, default=None, help="label value the loss ignores")
    p.add_argument(
        "--oversample-rare",
        type=float,
        default=0.0,
        help="0-1, redraw windows without rare classes",
    )
    p.add_argument(
        "--brightness",
        type=float,
        default=0.0,
        help="augment: scale each window's bands by a gain in [1-b, 1+b] (0 = off)",
    )
    p.add_argument(
        "--class-weighting",
        choices=["none", "sqrt", "inverse"],
        default="sqrt",
        help="loss weights (1/class frequency)**0.5 or **1, measured on the training scenes",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast where the CPU/GPU runs it fast; weights stay fp32",
    )
    p.add_argument(
        "--schedule",
        choices=["wsd", "cosine", "constant"],
        default="wsd",
        help="learning rate after a 50-step warm-up: wsd holds it, then decays it to 0 "
        "over the last 30%% of the steps or --time-limit",
    )
    p.add_argument(
        "--weight-init",
        choices=["pytorch", "he"],
        default="pytorch",
        help="layers not loaded from --init/--init-vgg16: torch's defaults or He-normal",
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        default=2048,
        help="MiB per worker: training scenes that fit are read once and held in memory",
    )
    p.add_argument(
        "--val-share",
        type=float,
        default=0.1,
        help="validation and checkpoints after the first take at most this share of the time",
    )
    p.add_argument("--max-failures", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:  # every input and the output, before Ray starts: exit 2 naming what is wrong
        out = Location(args.out)
        if out.remote:  # a missing bucket or a refused listing fails here, in seconds
            next(out.list(), None)
        if args.init:
            model_meta(args.init)
        if args.init_vgg16:
            local_copy(args.init_vgg16)
        settings = settings_from_args(args)
    except (FCNModelError, PipelineError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    ray_starter(args.verbose)()  # a local Ray unless one is running or RAY_ADDRESS is set
    return finetune(args, settings)


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main())
