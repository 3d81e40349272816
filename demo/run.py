"""Built-in demo: the whole path on scenes the project makes itself.

1. writes three labeled sample scenes (4 bands, 4 land-cover classes, nodata
   border): one to train on, a small one to pick the best epoch on, one unseen;
2. fine-tunes a small FCN-8s on the first for about a minute of CPU, with the
   fine-tuning job's own sampler, loop and best export (:mod:`fcnrs.training`),
   run in this process because Ray Train's start-up would take a good part of
   the minute;
3. runs the nightly job (``jobs/segment_scenes.py``) on the second, unseen scene;
4. scores the label raster against the second scene's labels, exports it as a
   COG with a quicklook, prints its areas per class and how to open it in
   GDAL / QGIS / xarray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fcnrs.demo.scenes import CLASSES, COLORS, make_sample_scene
from fcnrs.gis.areas import query_areas
from fcnrs.gis.cog import export_cog
from fcnrs.jobs import segment_scenes
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.reading import open_raster
from fcnrs.training.data import LabeledScene
from fcnrs.training.metrics import Scores, confusion_matrix, scores
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.trainer import with_statistics, write_report

BANDS = (1, 2, 3, 4)
#: Steps between validations (and progress lines): a few per minute, as a
#: validation segments the whole validation scene.
STEPS_PER_EPOCH = 100


def write_scenes(out: Path) -> tuple[tuple[LabeledScene, ...], tuple[Path, Path]]:
    """The training and validation scenes, and the unseen test scene's image and labels."""
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
    # make_sample_scene returns the label path it is given: never None here.
    return tuple(labeled), test  # type: ignore[return-value]


def demo_settings(
    scenes: tuple[LabeledScene, ...], out: Path, *, seconds: float, width: float
) -> TrainSettings:
    """Fine-tuning settings: ``jobs/finetune.py``'s defaults (network, windows,
    schedule, precision, class weights) for ``seconds``; the best epoch is picked
    on the validation scene, the test scene stays unseen."""
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
    """Fine-tune in this process; returns the best checkpoint (``<out>/best``)."""
    progress = train_in_process(settings, report=progress_printer())
    best = write_report(settings.out, progress.history)
    print(f"   best: epoch {best['epoch']}, {sum(h['steps'] for h in progress.history)} steps")
    return Path(settings.out) / "best"


def segment(model: Path, scene: Path, out: Path, *, verbose: bool) -> int:
    """The nightly job on ``scene``, as a user would run it."""
    argv = ["--model", str(model), "--scenes", str(scene), "--out", str(out), "--tile-size", "512"]
    return segment_scenes.main([*argv, *(["-v"] if verbose else [])])


def score(labels_zarr: Path, truth_path: Path) -> tuple[Scores, bool]:
    """Scores of a label raster against the truth, and whether nodata agrees."""
    pred = zarr.open_group(str(labels_zarr), mode="r")["labels"][:]
    with open_raster(truth_path) as lab:
        truth = lab.read(1)
    s = scores(confusion_matrix(truth, pred, len(CLASSES)))
    return s, bool(np.array_equal(pred == NODATA, truth == NODATA))


def print_scores(s: Scores, nodata_agrees: bool) -> None:
    for name, iou in zip(CLASSES, s.iou, strict=True):
        print(f"   IoU {name:<10} {iou:.3f}")
    print(f"   mean IoU {s.mean_iou:.3f}   pixel accuracy {s.pixel_accuracy:.3f}")
    print(f"   nodata agrees with the source mask: {nodata_agrees}")


def print_how_to_open(zpath: Path, cog: Path) -> None:
    print("Open the label raster with:")
    print(f"   gdalinfo 'ZARR:\"{zpath.resolve()}\":/labels'    (or the COG: gdalinfo {cog})")
    print(
        f"   python -c \"import xarray as xr; print(xr.open_zarr('{zpath}', mask_and_scale=False).labels)\""
    )


def run_demo(out: Path, *, train_seconds: float, width: float, verbose: bool = False) -> int:
    """The demo's steps in order; the nightly job's exit status if it fails."""
    print("1. sample scenes")
    scenes, (test_image, test_labels) = write_scenes(out)
    settings = demo_settings(scenes, out / "finetune", seconds=train_seconds, width=width)
    print(
        f"2. fine-tuning {settings.variant.upper()} width={width} for {train_seconds:.0f} s "
        f"on {scenes[0].image}"
    )
    model = train(settings)
    print(f"3. segmenting {test_image} with {model}")
    status = segment(model, test_image, out / "labels", verbose=verbose)
    if status != 0:
        return status
    zpath = out / "labels" / "test.zarr"
    print("4. scores on the unseen scene (against its labels)")
    print_scores(*score(zpath, test_labels))
    done = export_cog(zpath, out / "cogs", quicklook=512)
    print(f"5. exported {done.labels} (COG) and the quicklook {done.quicklook}")
    print(query_areas([zpath]).drop(columns="output").to_string(index=False))
    print_how_to_open(zpath, done.labels)
    return 0
