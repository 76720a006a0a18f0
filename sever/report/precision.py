"""Per-class precision-recall of the validation probabilities: image-level presence and pixel level.

Image level: a class is predicted *present* in an image when at least ``min_pixels`` of its
pixels (at least one) have a probability above the threshold, so the image's presence score
for the threshold sweep is its ``max(1, min_pixels)``-th largest probability of that class
(:func:`presence_scores`). Pixel level: every pixel of a class is a decision; the
probabilities are counted in :data:`BINS` bins per class and truth (:class:`PixelCounts`), so
thousands of images need no memory beyond the counts. The operating point of the run's
post-processing (threshold, min_pixels, one class per pixel, components) is measured on the
post-processed masks themselves, so it is the point the run really works at, which may lie off
the curve when post-processing does more than threshold and size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

BINS = 256  # probability bins of the pixel-level curve: thresholds k/256


@dataclass
class Curve:
    """One precision-recall curve, highest threshold first.

    Attributes:
        thresholds: ``(K,)`` the decision is ``score > threshold``.
        precision, recall: ``(K,)``; precision is NaN where nothing is predicted, recall NaN
            where nothing is true.
        operating: ``(precision, recall)`` of the post-processed predictions (NaN where undefined).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    operating: tuple[float, float] = (float("nan"), float("nan"))


def _ratio(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), np.nan)


def presence_scores(probs: Tensor, min_pixels) -> np.ndarray:
    """``(B, C)`` float: each image's ``max(1, min_pixels[c])``-th largest probability of class c.

    The class is present at threshold t (``min_pixels`` pixels above t) exactly when this score
    exceeds t. ``probs``: ``(B, C, H, W)`` in [0, 1].
    """
    flat = probs.flatten(2).float()
    scores = np.zeros(flat.shape[:2])
    for c in range(flat.shape[1]):
        rank = min(max(1, int(min_pixels[c])), flat.shape[2])
        scores[:, c] = torch.topk(flat[:, c], rank, dim=1).values[:, -1].numpy()
    return scores


def score_curve(scores: np.ndarray, truth: np.ndarray) -> Curve:
    """Precision and recall of ``scores (N,) > t`` against ``truth (N,)`` bool at every distinct score t
    (the thresholds are the scores themselves, highest first, so each point adds the items above it)."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order].astype(np.int64)
    # the points where the score changes: every item scoring above the next threshold is predicted
    last = np.r_[np.nonzero(np.diff(ranked))[0], len(ranked) - 1] if len(ranked) else np.array([], int)
    true_pos = np.cumsum(hits)[last] if len(ranked) else np.array([])
    predicted = last + 1
    thresholds = np.r_[ranked[last[1:]], -np.inf][:len(last)] if len(ranked) else np.array([])
    return Curve(thresholds, _ratio(true_pos, predicted), _ratio(true_pos, hits.sum()))


@dataclass
class PixelCounts:
    """Probability histograms of the pixels of each class, split by truth, and the post-processed pixel counts.

    Attributes:
        histogram: int64 ``(C, 2, BINS)``: ``[c, 1, k]`` true pixels of class c whose probability falls in bin k.
        operating: int64 ``(C, 3)``: predicted-and-true, predicted, true pixels of the post-processed masks.
    """

    classes: int
    histogram: np.ndarray = field(init=False)
    operating: np.ndarray = field(init=False)

    def __post_init__(self):
        self.histogram = np.zeros((self.classes, 2, BINS), np.int64)
        self.operating = np.zeros((self.classes, 3), np.int64)

    def update(self, probs: Tensor, truth: Tensor, masks: Tensor) -> None:
        """Add a batch: ``probs`` float ``(B, C, H, W)`` in [0, 1], ``truth`` and post-processed ``masks``
        ``(B, C, H, W)`` (nonzero = defect)."""
        bins = (probs.float() * BINS).long().clamp_(0, BINS - 1)
        true, pred = truth != 0, masks != 0
        for c in range(self.classes):
            for label in (0, 1):
                chosen = bins[:, c][true[:, c] == bool(label)]
                self.histogram[c, label] += torch.bincount(chosen, minlength=BINS).numpy()
            self.operating[c] += [int((pred[:, c] & true[:, c]).sum()), int(pred[:, c].sum()), int(true[:, c].sum())]

    def curve(self, c: int) -> Curve:
        """Class ``c``'s pixel curve at thresholds ``k / BINS`` (a pixel in bin k or above is predicted)."""
        above = self.histogram[c, :, ::-1].cumsum(axis=1)[:, ::-1]  # pixels in bin k or higher
        negatives, positives = above[0], above[1]
        both, predicted, true = self.operating[c]
        return Curve(np.arange(BINS) / BINS, _ratio(positives, positives + negatives),
                     _ratio(positives, self.histogram[c, 1].sum()),
                     (float(_ratio(both, predicted)), float(_ratio(both, true))))


def presence_curve(scores: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> Curve:
    """Image-level curve of one class from :func:`presence_scores` ``(N,)``, true presence ``(N,)`` and the
    post-processed presence ``(N,)`` (the operating point)."""
    curve = score_curve(scores, truth)
    both = int((truth & predicted).sum())
    curve.operating = (float(_ratio(both, predicted.sum())), float(_ratio(both, truth.sum())))
    return curve
