"""Validation on whole val scenes, through the nightly job's tiled path.

A val scene is cut with :func:`~fcnrs.pipeline.planning.plan_tiles`, read with
:class:`~fcnrs.pipeline.reading.TileReader` and batched with
:func:`~fcnrs.pipeline.reading.read_batch` exactly as inference does, so the
score of a checkpoint here is the score the nightly job would get with it; each
tile's core is scored against the label raster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import rasterio
import torch

from fcnrs.pipeline.planning import Tile, plan_batches, plan_tiles
from fcnrs.pipeline.reading import TileReader, core_box, open_raster, read_batch

from .data import LabeledScene
from .metrics import confusion_matrix, scores
from .sampling import read_targets
from .settings import TrainSettings

#: Tiles per forward pass while validating.
VAL_BATCH = 4


def validate(model: torch.nn.Module, settings: TrainSettings, device: torch.device) -> dict:
    """Segment every val scene through the tiled path and score it against its labels.

    Returns ``mean_iou``, ``pixel_accuracy``, ``iou`` (per class name; None for a
    class absent from labels and predictions) and ``confusion`` (rows: truth).
    The model is left in training mode.
    """
    n = len(settings.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    model.eval()
    for scene in settings.val_scenes:
        cm += scene_confusion(model, settings, scene, device)
    model.train()
    s = scores(cm)
    return {
        "mean_iou": s.mean_iou,
        "pixel_accuracy": s.pixel_accuracy,
        "iou": {c: v for c, v in zip(settings.classes, s.iou, strict=True)},
        "confusion": [list(r) for r in s.confusion],
    }


def scene_confusion(
    model: torch.nn.Module, settings: TrainSettings, scene: LabeledScene, device: torch.device
) -> np.ndarray:
    """Confusion matrix of one val scene; pixels inference labels nodata are left out."""
    n = len(settings.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    with (
        open_raster(scene.label) as label,
        TileReader(scene.image, settings.bands, mean=settings.mean, std=settings.std) as reader,
    ):
        # The label raster shares the image's grid (checked by read_scene_table).
        grid = plan_tiles(
            label.height,
            label.width,
            tile_size=settings.val_tile_size,
            overlap=settings.val_overlap,
        )
        for planned in plan_batches(grid, VAL_BATCH):
            _, tiles, batch = read_batch(reader, planned)
            if batch is None:  # no valid pixel in these cores
                continue
            with torch.inference_mode():
                logits = model(torch.from_numpy(batch["image"]).to(device))
            pred = logits.argmax(1).cpu().numpy()
            for k, tile in enumerate(tiles):
                cm += tile_confusion(label, tile, pred[k], batch["valid"][k], settings)
    return cm


def tile_confusion(
    label: rasterio.io.DatasetReader,
    tile: Tile,
    pred: np.ndarray,
    valid: np.ndarray,
    settings: TrainSettings,
) -> np.ndarray:
    """Confusion matrix of a tile's core: ``pred`` and ``valid`` cover its read window."""
    r, c, h, w = core_box(tile)
    core_pred = np.where(valid[r : r + h, c : c + w], pred[r : r + h, c : c + w], -1)
    # The image is already read: only the labels are needed here.
    target = read_targets(
        label, tile.core, num_classes=len(settings.classes), ignore_value=settings.ignore_value
    )
    return confusion_matrix(target, core_pred, len(settings.classes))


def val_metrics(val: dict[str, Any]) -> dict[str, float]:
    """A :func:`validate` result as flat metrics (NaN for a class without IoU)."""
    return {
        "val_mean_iou": val["mean_iou"],
        "val_pixel_accuracy": val["pixel_accuracy"],
        **{f"val_iou_{c}": (v if v is not None else float("nan")) for c, v in val["iou"].items()},
    }


def score_checkpoint(
    model_path: str,
    image: str,
    label: str,
    *,
    ignore_value: int | None = None,
    tile_size: int = 512,
    overlap: int = 192,
) -> dict:
    """Score a checkpoint on a labeled scene through the nightly job's tiled path:
    :func:`validate`'s result for that one scene (the checkpoint's own classes,
    bands and normalisation), so any two models are scored the same way."""
    from fcnrs.fcn_model import load_checkpoint

    from .settings import TrainSettings

    model, meta = load_checkpoint(model_path)
    settings = TrainSettings(
        scenes=(LabeledScene(image, label, "val"),),
        classes=tuple(meta.classes),
        colors=tuple(tuple(c) for c in meta.colors),
        bands=tuple(meta.bands),
        out="",
        ignore_value=ignore_value,
        val_tile_size=tile_size,
        val_overlap=overlap,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
    )
    return validate(model, settings, torch.device("cpu"))
