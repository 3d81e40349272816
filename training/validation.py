"""Validation on whole val scenes, through the segmentation job's tiled path.

A val scene is cut with :func:`~fcnrs.pipeline.planning.plan_tiles`, read with
:class:`~fcnrs.pipeline.reading.TileReader` and batched with
:func:`~fcnrs.pipeline.reading.read_batch` exactly as inference does, and each
tile's core is scored against the label raster. The tiling is the validation
tiling (:data:`~fcnrs.training.settings.VAL_TILE_SIZE`-px tiles with a
:data:`~fcnrs.training.settings.VAL_OVERLAP`-px overlap by default), not the
segmentation job's (1536-px cores with the halo the checkpoint records): the
score is that of the network at this tiling, the same for every epoch and every
checkpoint scored here.
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
from .settings import VAL_OVERLAP, VAL_TILE_SIZE, TrainSettings
from .windows import read_targets

#: Tiles per forward pass while validating.
VAL_BATCH = 4


def validate(
    network: torch.nn.Module, settings: TrainSettings, *, device: torch.device
) -> dict[str, Any]:
    """Segment every val scene through the tiled path and score it against its labels.

    Parameters
    ----------
    network
        Scored in eval mode, and left in training mode.
    settings
        The val scenes, classes, bands, normalisation and the validation tiling.
    device
        Where the network runs.

    Returns
    -------
    dict
        ``mean_iou``, ``pixel_accuracy``, ``iou`` (per class name; None for a
        class absent from labels and predictions) and ``confusion`` (rows: truth).
    """
    n = len(settings.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    network.eval()
    for scene in settings.val_scenes:
        cm += scene_confusion(network, settings, scene, device=device)
    network.train()
    s = scores(cm)
    return {
        "mean_iou": s.mean_iou,
        "pixel_accuracy": s.pixel_accuracy,
        "iou": {c: v for c, v in zip(settings.classes, s.iou, strict=True)},
        "confusion": [list(r) for r in s.confusion],
    }


def scene_confusion(
    network: torch.nn.Module,
    settings: TrainSettings,
    scene: LabeledScene,
    *,
    device: torch.device,
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
                logits = network(torch.from_numpy(batch["image"]).to(device))
            pred = logits.argmax(1).cpu().numpy()
            for k, tile in enumerate(tiles):
                cm += tile_confusion(
                    label, tile, pred=pred[k], valid=batch["valid"][k], settings=settings
                )
    return cm


def tile_confusion(
    label: rasterio.io.DatasetReader,
    tile: Tile,
    *,
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
    model: str,
    *,
    image: str,
    label: str,
    ignore_value: int | None = None,
    tile_size: int = VAL_TILE_SIZE,
    overlap: int = VAL_OVERLAP,
) -> dict[str, Any]:
    """Score a checkpoint on a labeled scene through the segmentation job's tiled
    path, at the validation tiling unless told otherwise, so any two models are
    scored the same way.

    Parameters
    ----------
    model
        The checkpoint file; its own classes, bands and normalisation are used.
    image, label
        The scene and its label raster (sharing a grid).
    ignore_value
        A label value left out of the scores (beyond the label file's nodata).
    tile_size, overlap
        The tiling.

    Returns
    -------
    dict
        :func:`validate`'s result for that one scene.
    """
    from fcnrs.fcn_model import load_checkpoint

    network, meta = load_checkpoint(model)
    settings = TrainSettings(
        scenes=(LabeledScene(image, label, "val"),),
        classes=tuple(meta.classes),
        colors=meta.colors,
        bands=tuple(meta.bands),
        out="",
        ignore_value=ignore_value,
        val_tile_size=tile_size,
        val_overlap=overlap,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
    )
    return validate(network, settings, device=torch.device("cpu"))
