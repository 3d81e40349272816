"""Built-in demo: the whole path on scenes the project makes itself.

1. writes three labeled sample scenes (:func:`fcnrs.synthetic.scenes.make_sample_scene`:
   4 bands, 4 land-cover classes, nodata border): one to train on, a small one
   to pick the best epoch on, one unseen;
2. fine-tunes a small network of the fine-tuning job's default architecture
   (FCN-4s) on the first for about a minute of CPU, with the fine-tuning job's
   own sampler, loop and best export (:mod:`fcnrs.training`), run in this
   process because Ray Train's start-up would take a good part of the minute;
3. segments the third, unseen scene with the library call the segmentation job
   makes (:func:`fcnrs.pipeline.distributed.run_scenes`), into ``OUT/labels/``;
4. scores the label raster against the unseen scene's labels;
5. exports it as a COG with a quicklook, prints its areas per class and how to
   open it in GDAL / QGIS / xarray.

The command line is ``jobs/demo.py`` (``fcnrs demo``), which depends on this
module and never the other way round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fcnrs.fcn_model import FCNModelError
from fcnrs.gis.areas import query_areas
from fcnrs.gis.cog import export_cog
from fcnrs.pipeline.distributed import print_summary, run_scenes
from fcnrs.pipeline.distributed.engines import EngineName
from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.memory import keep_freed_memory
from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.synthetic.scenes import CLASSES, COLORS, make_sample_scene
from fcnrs.training.data import LabeledScene
from fcnrs.training.metrics import Scores, confusion_matrix, scores
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.trainer import with_statistics, write_report

log = logging.getLogger("fcnrs.demo")

#: The bands the network reads: all four of the sample scenes'.
BANDS = (1, 2, 3, 4)
#: The core edge of the demo's tiles (the segmentation job's ``--tile-size``).
TILE_SIZE = 512
#: Steps between validations (and progress lines): a few per minute, as a
#: validation segments the whole validation scene.
STEPS_PER_EPOCH = 100


def write_scenes(out: Path) -> tuple[tuple[LabeledScene, ...], tuple[Path, Path]]:
    """Write the sample scenes into ``out/scenes/``.

    Returns
    -------
    tuple
        The training and validation scenes, and the unseen test scene's image
        and labels.
    """
    labeled = []
    for name, split, seed, size in (
        ("train", "train", 1, (1000, 1200)),
        ("val", "val", 3, (512, 512)),
    ):
        image, labels = make_sample_scene(
            out / f"scenes/{name}.tif",
            out / f"scenes/{name}_labels.tif",
            seed=seed,
            height=size[0],
            width=size[1],
        )
        labeled.append(LabeledScene(str(image), str(labels), split))
    test = make_sample_scene(
        out / "scenes/test.tif", out / "scenes/test_labels.tif", seed=2, height=900, width=1333
    )
    return tuple(labeled), test


def demo_settings(
    scenes: tuple[LabeledScene, ...], out: Path, *, seconds: float, width: float
) -> TrainSettings:
    """The demo's fine-tuning settings.

    ``jobs/finetune.py``'s defaults (network, windows, schedule, precision, class
    weights) for ``seconds``; the best epoch is picked on the validation scene,
    the test scene stays unseen.

    Parameters
    ----------
    scenes
        The training and validation scenes (:func:`write_scenes`).
    out
        The fine-tuning run's folder.
    seconds
        Its wall time: the time limit, not a number of epochs, ends it.
    width
        The network's channel width multiplier.

    Returns
    -------
    TrainSettings
        The settings, with the training scenes' band statistics and class weights.
    """
    settings = TrainSettings(
        scenes=scenes,
        classes=CLASSES,
        colors=COLORS,
        bands=BANDS,
        out=str(out),
        width=width,
        epochs=10**6,  # the time limit ends the run
        steps_per_epoch=STEPS_PER_EPOCH,
        time_limit_minutes=seconds / 60,
        trained_by="jobs/demo.py",
    )
    return with_statistics(settings)


def progress_printer() -> Callable[[dict[str, Any], Path | None], None]:
    """A ``report`` for :func:`train_in_process`: one line per epoch."""
    start = time.perf_counter()
    steps = 0

    def report(metrics: dict[str, Any], _checkpoint: Path | None) -> None:
        nonlocal steps
        steps += metrics["steps"]
        val = metrics.get("val_mean_iou")
        scored = f"  mean IoU on the validation scene {val:.3f}" if val is not None else ""
        print(
            f"  step {steps:5d}  loss {metrics['loss']:.3f}{scored}  "
            f"({metrics['steps_per_s']:.1f} steps/s, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    return report


def train(settings: TrainSettings) -> Path:
    """Fine-tune in this process, printing a line per epoch.

    Returns
    -------
    pathlib.Path
        The best checkpoint, ``<settings.out>/best``.
    """
    progress = train_in_process(settings, report=progress_printer())
    best = write_report(settings.out, progress.history)
    print(f"   best: epoch {best['epoch']}, {sum(h['steps'] for h in progress.history)} steps")
    return Path(settings.out) / "best"


def segment(
    model: Path,
    scene: Path,
    out: Path,
    *,
    engine: EngineName = "local",
    start_ray: Callable[[], None] | None = None,
) -> int:
    """Segment ``scene`` into ``out`` as the segmentation job does with
    ``--tile-size 512`` and its other defaults, and print the run's summary.

    Returns
    -------
    int
        The segmentation job's exit status: 0 done, 1 a scene failed, 2 the
        model or the output folder is unusable, 130 or 143 stopped.
    """
    keep_freed_memory()
    try:
        report = run_scenes(
            [str(scene)],
            model=str(model),
            out_dir=str(out),
            settings=SegmentSettings(tile_size=TILE_SIZE),
            engine=engine,
            start_ray=start_ray,
        )
    except (FCNModelError, OutputError) as exc:
        log.error("%s", exc)
        return 2
    print_summary(report, str(out))
    return report.exit_code()


def score(labels_zarr: Path, truth_path: Path) -> tuple[Scores, bool]:
    """Score a label raster against the truth.

    Parameters
    ----------
    labels_zarr
        The published label raster.
    truth_path
        The scene's label GeoTIFF, on the same grid.

    Returns
    -------
    tuple
        The scores (per-class IoU, mean IoU, pixel accuracy) and whether the
        label raster's nodata pixels are exactly the truth's.
    """
    pred = np.asarray(zarr.open_array(str(labels_zarr), path="labels", mode="r")[:])
    with open_raster(truth_path) as lab:
        truth = lab.read(1)
    s = scores(confusion_matrix(truth, pred, len(CLASSES)))
    return s, bool(np.array_equal(pred == NODATA, truth == NODATA))


def print_scores(s: Scores, nodata_agrees: bool) -> None:
    """Print the IoU of every class, the mean IoU and the pixel accuracy."""
    for name, iou in zip(CLASSES, s.iou, strict=True):
        print(f"   IoU {name:<10} {iou:.3f}")
    print(f"   mean IoU {s.mean_iou:.3f}   pixel accuracy {s.pixel_accuracy:.3f}")
    print(f"   nodata agrees with the source mask: {nodata_agrees}")


def print_how_to_open(zpath: Path, cog: str) -> None:
    """Print the commands that open the label raster and its COG."""
    print("Open the label raster with:")
    print(f"   gdalinfo 'ZARR:\"{zpath.resolve()}\":/labels'    (or the COG: gdalinfo {cog})")
    print(
        f"   python -c \"import xarray as xr; print(xr.open_zarr('{zpath}', mask_and_scale=False).labels)\""
    )


def run_demo(
    out: Path,
    *,
    train_seconds: float,
    width: float,
    engine: EngineName = "local",
    start_ray: Callable[[], None] | None = None,
) -> int:
    """Run the demo's steps in order, into the output folder ``out``.

    Parameters
    ----------
    out
        The demo's folder: ``scenes/``, ``finetune/`` (the fine-tuning run and
        its best checkpoint), ``labels/`` (the label raster) and ``cogs/``.
    train_seconds
        The fine-tuning's wall time.
    width
        The network's channel width multiplier.
    engine, start_ray
        The engine that segments the unseen scene, and how it starts Ray when
        ``engine`` is ``"ray"`` (see :func:`fcnrs.pipeline.distributed.run_scenes`).

    Returns
    -------
    int
        0, or the segmentation's exit status when it is not 0 (the steps after it
        are then skipped).
    """
    print("1. sample scenes")
    scenes, (test_image, test_labels) = write_scenes(out)
    settings = demo_settings(scenes, out / "finetune", seconds=train_seconds, width=width)
    print(
        f"2. fine-tuning {settings.variant.upper()} width={width} for {train_seconds:.0f} s "
        f"on {scenes[0].image}"
    )
    model = train(settings)
    print(f"3. segmenting {test_image} with {model}")
    status = segment(model, test_image, out / "labels", engine=engine, start_ray=start_ray)
    if status != 0:
        return status
    zpath = out / "labels" / "test.zarr"
    print("4. scores on the unseen scene (against its labels)")
    print_scores(*score(zpath, test_labels))
    done = export_cog(zpath, out / "cogs", quicklook=512)
    print(f"5. exported {done.labels} (COG) and the quicklook {done.quicklook}")
    print(query_areas([zpath]).drop(columns="output").to_string(index=False))
    print_how_to_open(zpath, str(done.labels))
    return 0
