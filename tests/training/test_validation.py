"""Validation: the tiled path scores every valid pixel of a val scene exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from fcnrs.synthetic.scenes import CLASSES
from fcnrs.training.settings import TrainSettings
from fcnrs.training.validation import val_metrics, validate


class Constant(torch.nn.Module):
    """Predicts one class everywhere."""

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        self.num_classes, self.label = num_classes, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        out[:, self.label] = 1
        return out


@pytest.mark.parametrize("tile_size", [64, 512])
def test_every_valid_pixel_is_scored_once(labeled, tile_size):
    _, scenes = labeled
    s = TrainSettings(
        scenes=tuple(scenes), classes=CLASSES, colors=((0, 0, 0),) * 4, bands=(1, 2, 3, 4),
        out="", mean=(1000.0,) * 4, std=(800.0,) * 4, val_tile_size=tile_size, val_overlap=32,
    )  # fmt: skip
    model = Constant(4, 2)
    val = validate(model, s, device=torch.device("cpu"))
    with rasterio.open(scenes[1].image) as src, rasterio.open(scenes[1].label) as lab:
        valid = src.dataset_mask() > 0
        labels = lab.read(1)
    truth = np.bincount(labels[valid & (labels != 255)], minlength=4)
    # Predicting class 2 everywhere: column 2 is the labels' histogram, the rest is 0.
    cm = np.array(val["confusion"])
    assert cm[:, 2].tolist() == truth.tolist() and cm.sum() == truth.sum()
    assert val["pixel_accuracy"] == pytest.approx(truth[2] / truth.sum())
    assert val["iou"]["bare soil"] == pytest.approx(truth[2] / truth.sum())
    assert val["iou"]["water"] == 0.0
    assert model.training  # left as it was found for the next epoch
    metrics = val_metrics(val)
    assert metrics["val_mean_iou"] == val["mean_iou"] and metrics["val_iou_water"] == 0.0
