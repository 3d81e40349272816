"""Scores checked against a confusion matrix computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fcnrs.training.metrics import confusion_matrix, scores


def test_scores_match_a_hand_computed_confusion_matrix():
    truth = np.array([[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 9, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 0], [2, 0, 1, 255]])
    cm = confusion_matrix(truth, pred, 4)
    # By hand, pixels with a valid truth and prediction (255 and 9 left out):
    # truth 0: predicted 0, 1, 0 -> [2, 1, 0, 0]; truth 1: 1, 1, 0 -> [1, 2, 0, 0];
    # truth 2: 2, 2, 0 -> [1, 0, 2, 0]; class 3 absent everywhere.
    assert cm.tolist() == [[2, 1, 0, 0], [1, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    s = scores(cm)
    # IoU = tp / (row + col - tp): class 0: 2 / (3 + 4 - 2); class 1: 2 / (3 + 3 - 2);
    # class 2: 2 / (3 + 2 - 2); class 3: absent from both, left out of the mean.
    assert s.iou[0] == pytest.approx(2 / 5)
    assert s.iou[1] == pytest.approx(2 / 4)
    assert s.iou[2] == pytest.approx(2 / 3)
    assert s.iou[3] is None
    assert s.mean_iou == pytest.approx((2 / 5 + 2 / 4 + 2 / 3) / 3)
    assert s.pixel_accuracy == pytest.approx(6 / 9)


def test_class_predicted_but_absent_from_truth_counts_as_zero():
    s = scores(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2))
    assert s.iou == (0.5, 0.0) and s.mean_iou == pytest.approx(0.25)


def test_ignore_mask_leaves_pixels_out():
    cm = confusion_matrix(np.array([0, 1]), np.array([1, 1]), 2, ignore=np.array([True, False]))
    assert cm.tolist() == [[0, 0], [0, 1]]
