"""Segmentation scores from a confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, *, ignore: np.ndarray | None = None
) -> np.ndarray:
    """``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p``.

    Pixels whose truth or prediction is outside ``0..num_classes-1`` (nodata,
    ignore values) are left out, as are pixels where ``ignore`` is true.
    """
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore is not None:
        keep &= ~np.asarray(ignore, dtype=bool).ravel()
    flat = truth[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    iou: tuple[float | None, ...]  # None: class absent from both truth and prediction
    mean_iou: float
    pixel_accuracy: float
    confusion: tuple[tuple[int, ...], ...]


def scores(cm: np.ndarray) -> Scores:
    """Per-class IoU, mean IoU and pixel accuracy.

    A class absent from both truth and prediction has no IoU (0/0) and is left out
    of the mean, rather than counted as 0 or 1.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tuple(float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True))
    present = [v for v in iou if v is not None]
    total = cm.sum()
    return Scores(
        iou=iou,
        mean_iou=float(np.mean(present)) if present else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
    )
