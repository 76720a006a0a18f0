"""Precision-recall curves of the report, against values worked out by hand."""

import numpy as np
import pytest
import torch

from sever.report.precision import BINS, PixelCounts, presence_curve, presence_scores, score_curve


def test_presence_score_is_the_min_pixels_th_largest_probability():
    probs = torch.zeros(2, 2, 2, 3)
    probs[0, 0] = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.3]])
    probs[1, 1] = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = presence_scores(probs, [3, 0])
    assert scores[0, 0] == pytest.approx(0.7)  # three pixels above any threshold below 0.7
    assert scores[1, 1] == pytest.approx(0.6)  # min_pixels 0 behaves as 1: the largest
    assert scores[1, 0] == 0.0


def test_image_curve_matches_a_hand_count():
    # scores 0.9 (true), 0.8 (false), 0.7 (true), 0.7 (false), 0.1 (true)
    scores = np.array([0.7, 0.9, 0.1, 0.8, 0.7])
    truth = np.array([True, True, True, False, False])
    curve = presence_curve(scores, truth, np.array([True, True, False, True, False]))
    # thresholds: above 0.8 -> {0.9}; above 0.7 -> {0.9, 0.8}; above 0.1 -> + both 0.7; above -inf -> all
    assert curve.thresholds.tolist() == [0.8, 0.7, 0.1, -np.inf]
    assert curve.precision == pytest.approx([1, 1 / 2, 2 / 4, 3 / 5])
    assert curve.recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1])
    # predicted present: images 0, 1, 3 -> 2 of 3 right, 2 of the 3 true found
    assert curve.operating == pytest.approx((2 / 3, 2 / 3))


def test_score_curve_of_nothing_true_has_no_recall():
    curve = score_curve(np.array([0.2, 0.4]), np.array([False, False]))
    assert np.isnan(curve.recall).all() and curve.precision.tolist() == [0.0, 0.0]


def test_pixel_curve_counts_every_pixel_and_the_operating_point_uses_the_masks():
    probs = torch.tensor([[[[0.95, 0.55], [0.30, 0.05]]]])  # (1, 1, 2, 2)
    truth = torch.tensor([[[[1, 0], [1, 0]]]], dtype=torch.uint8)
    masks = torch.tensor([[[[1, 1], [0, 0]]]], dtype=torch.uint8)
    counts = PixelCounts(1)
    counts.update(probs, truth, masks)
    curve = counts.curve(0)
    at = {t: i for i, t in enumerate(curve.thresholds.tolist())}
    half = at[128 / BINS]  # pixels at 0.5 or above: 0.95 (true) and 0.55 (false)
    assert (curve.precision[half], curve.recall[half]) == (0.5, 0.5)
    quarter = at[64 / BINS]  # 0.25 or above adds 0.30 (true)
    assert curve.precision[quarter] == pytest.approx(2 / 3) and curve.recall[quarter] == 1.0
    assert curve.recall[0] == 1.0 and curve.precision[0] == 0.5  # every pixel predicted
    assert curve.operating == (0.5, 0.5)  # the masks: one of two predicted pixels true, one of two true found
