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
from typing import get_args

from fcnrs.fcn_model import FCNModelError
from fcnrs.jobs.options import add_bands, job_main, model_meta, output_folder, ray_starter
from fcnrs.pipeline.errors import PipelineError
from fcnrs.pipeline.storage import Location, local_copy
from fcnrs.training.settings import setting_argument, setting_default
from fcnrs.training.state import ADAM_LR, SGD_LR
from fcnrs.training.statistics import DEFAULT_WEIGHTING, Weighting
from fcnrs.training.steps import DECAY_SHARE
from fcnrs.training.trainer import finetune, settings_from_args

log = logging.getLogger("fcnrs.finetune")


#: The flags that set a training setting: (flag, ``TrainSettings`` field, help).
SETTING_FLAGS: tuple[tuple[str, str, str | None], ...] = (
    (
        "--variant",
        "variant",
        "default %(default)s; fcn4s adds a pool2 skip to the paper's fcn8s: thin classes "
        "and edges, same speed on CPU; fcn2s adds pool1",
    ),
    ("--width", "width", "channel width multiplier (default %(default)s)"),
    ("--init-vgg16", "init_vgg16", "ImageNet VGG16 weights (torchvision layout)"),
    ("--init", "init", "start from this checkpoint"),
    ("--optimizer", "optimizer", "default %(default)s"),
    ("--lr", "lr", f"peak rate (default: adam {ADAM_LR:g}, sgd {SGD_LR:g})"),
    ("--steps-per-epoch", "steps_per_epoch", "default %(default)s"),
    ("--batch-size", "batch_size", "windows per step per worker (default %(default)s)"),
    ("--window", "window", "training window edge in pixels (default %(default)s)"),
    ("--time-limit", "time_limit_minutes", "minutes; stops cleanly"),
    ("--ignore-value", "ignore_value", "label value the loss ignores"),
    ("--oversample-rare", "rare_class_oversampling", "0-1, redraw windows without rare classes"),
    (
        "--brightness",
        "brightness",
        "augment: scale each window's bands by a gain in [1-b, 1+b] (0 = off)",
    ),
    (
        "--precision",
        "precision",
        "auto: bf16 autocast where the CPU/GPU runs it fast; weights stay fp32",
    ),
    (
        "--schedule",
        "schedule",
        f"learning rate after a {setting_default('warmup_steps')}-step warm-up: wsd holds "
        f"it, then decays it to 0 over the last {round(100 * DECAY_SHARE)}%% of the steps "
        "or --time-limit",
    ),
    (
        "--weight-init",
        "weight_init",
        "layers not loaded from --init/--init-vgg16: torch's defaults or He-normal",
    ),
    (
        "--memory-budget",
        "memory_budget_mb",
        "MiB per worker: training scenes that fit are read once and held in memory",
    ),
    (
        "--val-share",
        "val_share",
        "validation and checkpoints after the first take at most this share of the time",
    ),
    ("--seed", "seed", None),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The job's flags: inputs, output and the worker group here; the training
    settings' flags take their defaults, types and choices from
    :class:`~fcnrs.training.settings.TrainSettings` (:func:`add_setting_arguments`)."""
    p.add_argument("--scenes", required=True, help="CSV with columns image,label,split")
    p.add_argument(
        "--out",
        required=True,
        type=output_folder,
        help="output folder or s3:// prefix (best checkpoint, reports, Ray state)",
    )
    p.add_argument("--classes", required=True, help="names (land,water) or a JSON/YAML file")
    add_bands(p, "1-based bands, e.g. 4,3,2 (default: all)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="torch threads follow it (default: the most CPUs per worker with which "
        "every worker fits on the cluster's nodes)",
    )
    p.add_argument(
        "--class-weighting",
        choices=get_args(Weighting),
        default=DEFAULT_WEIGHTING,
        help="loss weights (1/class frequency)**0.5 or **1, measured on the training "
        "scenes (default: %(default)s)",
    )
    p.add_argument("--max-failures", type=int, default=3)
    add_setting_arguments(p)


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of :data:`SETTING_FLAGS`: each takes its default, type and choices
    from its :class:`~fcnrs.training.settings.TrainSettings` field
    (:func:`~fcnrs.training.settings.setting_argument`), where the default is
    written once. ``--epochs`` alone has none: without it, a time limit decides."""
    for flag, name, help in SETTING_FLAGS:
        p.add_argument(flag, help=help, **setting_argument(name))
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default: {setting_default('epochs')}, or as many as --time-limit allows",
    )


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
    return finetune(args, settings=settings)


main = job_main(sys.modules[__name__])

if __name__ == "__main__":
    sys.exit(main(None))
