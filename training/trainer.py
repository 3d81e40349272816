"""The fine-tuning job's driver side: settings, the Ray Train run and its report.

:func:`finetune` builds :class:`~fcnrs.training.settings.TrainSettings` from the
job's arguments (scene table, classes, bands, band statistics), runs
:func:`~fcnrs.training.runners.train_loop_per_worker` under a ``TorchTrainer``
(workers, failures and checkpoints kept under ``OUT/ray_results``) and writes
every epoch's record to ``OUT/report.json``. Re-running with the same ``OUT``
continues from the last checkpoint Ray Train registered. ``OUT`` may be an
``s3://`` prefix: Ray Train then keeps its state there too, through a pyarrow
S3 filesystem built from the same AWS variables
(:func:`~fcnrs.pipeline.storage.arrow_filesystem`). Last, the halo the best
network needs is measured and recorded in ``OUT/best`` (:mod:`fcnrs.training.context`).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.storage import Location, arrow_filesystem

from .context import record_best_halo
from .data import LabeledScene, parse_classes, read_scene_table
from .runners import train_loop_per_worker
from .settings import TrainSettings, setting_default
from .state import load_state
from .statistics import (
    DEFAULT_WEIGHTING,
    WEIGHTING_POWERS,
    Weighting,
    band_statistics,
    class_counts,
    class_weights,
)
from .steps import Budget

log = logging.getLogger("fcnrs.finetune")

#: Checkpoints Ray Train keeps under ``OUT/ray_results`` (the last two epochs').
CHECKPOINTS_KEPT = 2


def default_bands(scenes: tuple[LabeledScene, ...]) -> tuple[int, ...]:
    """Every band of the first scene, in file order."""
    with open_raster(scenes[0].image) as src:
        return tuple(range(1, src.count + 1))


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The run's settings from the job's arguments, with band statistics and class
    weights measured on the training scenes (:func:`with_statistics`).

    Raises
    ------
    SceneError
        When the scene table or a raster it lists is unusable.
    ValueError
        When ``--classes`` is, or a band has no valid value in the sampled windows.
    """
    out = Location(args.out)
    scenes = tuple(read_scene_table(args.scenes))
    classes = parse_classes(args.classes)
    bands = tuple(args.bands) if args.bands else default_bands(scenes)
    settings = TrainSettings(
        scenes=scenes,
        classes=classes.names,
        colors=classes.colors,
        bands=bands,
        out=str(out if out.remote else out.path.resolve()),
        variant=args.variant,
        width=args.width,
        window=args.window,
        batch_size=args.batch_size,
        epochs=args.epochs or (UNLIMITED_EPOCHS if args.time_limit else setting_default("epochs")),
        steps_per_epoch=args.steps_per_epoch,
        time_limit_minutes=args.time_limit,
        optimizer=args.optimizer,
        lr=args.lr,
        ignore_value=args.ignore_value,
        rare_class_oversampling=args.oversample_rare,
        brightness=args.brightness,
        init_vgg16=args.init_vgg16,
        init=args.init,
        seed=args.seed,
        precision=args.precision,
        schedule=args.schedule,
        weight_init=args.weight_init,
        memory_budget_mb=args.memory_budget,
        val_share=args.val_share,
    )
    return with_statistics(settings, weighting=args.class_weighting)


def with_statistics(
    settings: TrainSettings, *, weighting: Weighting = DEFAULT_WEIGHTING
) -> TrainSettings:
    """``settings`` with the band statistics and the loss's class weights measured
    on its training scenes (sampled windows; ``weighting`` is a
    :data:`~fcnrs.training.statistics.WEIGHTING_POWERS` key)."""
    scenes, seed = settings.scenes, settings.seed
    mean, std = band_statistics(scenes, settings.bands, seed=seed)
    log.info("band mean %s, std %s", [round(v, 1) for v in mean], [round(v, 1) for v in std])
    counts = class_counts(scenes, settings, seed=seed)
    weights = class_weights(counts, WEIGHTING_POWERS[weighting])
    log.info(
        "labelled pixels per class (sampled) %s; loss weights %s",
        counts.tolist(),
        [round(w, 2) for w in weights],
    )
    return replace(settings, mean=mean, std=std, class_weights=weights)


#: Epochs of a time-limited run without ``--epochs``: the time limit ends it.
UNLIMITED_EPOCHS = 1_000_000


def cpus_per_worker(args: argparse.Namespace) -> float:
    """``--cpus-per-worker``, or by default the most CPUs per worker with which all
    ``--num-workers`` workers fit on the cluster's live nodes (:func:`pack_cpus`);
    torch's threads follow it."""
    if args.cpus_per_worker:
        return args.cpus_per_worker
    import ray

    nodes = [
        (n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
        for n in ray.nodes()
        if n["Alive"]
    ]
    return pack_cpus(nodes, args.num_workers, use_gpu=args.use_gpu)


def pack_cpus(nodes: list[tuple[float, float]], workers: int, *, use_gpu: bool) -> float:
    """The largest whole number of CPUs per worker such that ``workers`` workers
    (each with a GPU when ``use_gpu``) fit on ``nodes`` of (CPUs, GPUs); at least 1."""
    for cpus in range(int(max((c for c, _ in nodes), default=1)), 0, -1):
        fit = sum(min(c // cpus, g) if use_gpu else c // cpus for c, g in nodes)
        if fit >= workers:
            return float(cpus)
    return 1.0


def make_trainer(settings: TrainSettings, args: argparse.Namespace, *, budget: Budget) -> Any:
    """A ``TorchTrainer`` running the per-worker loop on ``args.num_workers`` workers,
    restarting the group up to ``args.max_failures`` times from its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    results = Location(settings.out) / "ray_results"
    storage_filesystem = None
    if results.remote:  # the path inside the bucket, on a filesystem that reaches it
        storage_path = f"{results.bucket}/{results.key}"
        storage_filesystem = arrow_filesystem()
    else:
        storage_path = str(results)

    return TorchTrainer(
        train_loop_per_worker,
        # The budget is set once, from the job's start: restarted workers keep it.
        train_loop_config={"settings": settings, "budget": budget},
        scaling_config=ScalingConfig(
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            resources_per_worker={
                "CPU": cpus_per_worker(args),
                **({"GPU": 1} if args.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name="finetune",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
    )


def write_report(out: str | Path | Location, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Write every epoch's record to ``out/report.json``; return the best export's
    report (``out/best_report.json``, empty when nothing was exported)."""
    out = Location(out)
    (out / "report.json").write_bytes(json.dumps(history, indent=2).encode("utf-8"))
    best = out / "best_report.json"
    return json.loads(best.read_bytes()) if best.is_file() else {}


def finetune(args: argparse.Namespace, *, settings: TrainSettings | None = None) -> int:
    """The whole job (Ray must be initialised): train on Ray Train, measure the
    best network's halo, write the reports.

    ``--time-limit`` counts from this process's start, so Ray's and Ray Train's
    start-up, the band statistics, training, validation and the export all fit in it.

    Parameters
    ----------
    args
        The job's parsed arguments (``jobs/finetune.py``).
    settings
        :func:`settings_from_args`'s, when the caller made them already.

    Returns
    -------
    int
        The exit status: 0 once ``OUT/best`` exists, else 1.
    """
    import psutil

    budget = Budget.minutes(args.time_limit, start=psutil.Process().create_time())
    settings = settings or settings_from_args(args)
    out = Location(settings.out)
    if not out.remote:
        out.path.mkdir(parents=True, exist_ok=True)
    result = make_trainer(settings, args, budget=budget).fit()
    history: list[dict[str, Any]] = []
    if result.checkpoint:
        with result.checkpoint.as_directory() as d:
            history = load_state(d).training.history
    halo = record_best_halo(settings)
    best = write_report(out, history)
    print(
        f"epochs run: {len(history)}; best mean IoU {best.get('mean_iou', float('nan')):.4f} "
        f"at epoch {best.get('epoch')}; per class {best.get('iou')}"
    )
    print(f"best checkpoint: {out / 'best'}")
    if halo is not None:
        print(f"its halo (recorded in it): {halo.describe()}")
    return 0 if (out / "best").is_file() else 1
