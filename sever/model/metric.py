"""Evaluation metrics: the competition Dice (the only implementation in sever) and friends.

Functional core, for any caller (trainer, evaluation, threshold tuning):

- :func:`dice_per_image` and :func:`iou_per_image` score binary masks ``(N, C, H, W)``
  per image and class, with the competition rule that a pair of empty masks scores 1.

Accumulating metrics, built by name from ``METRICS``, share the :class:`Metric` interface:
``reset()``, ``update(logits, target)`` once per batch, ``compute() -> dict[str, float]``
and ``reduce_(fn)`` to combine the state of several processes before ``compute``. Each
batch is reduced at once to a few per-class sums, so no masks are kept. Names returned are
plain (``dice_0``, ``dice_mean``); the trainer adds ``train_``/``val_`` prefixes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from sever.model.postprocess import check_min_pixels, min_pixels_per_class, wipe_small_masks
from sever.registries import METRICS


def _overlap(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``|A ∩ B|`` and ``|A| + |B|`` per image and class, each float64 ``(N, C)``.

    ``pred`` and ``target`` are masks ``(N, C, H, W)`` of equal shape, bool or numbers with
    nonzero meaning foreground.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 3:
        raise ValueError(f"expected masks (N, C, H, W), got {tuple(pred.shape)}")
    pred, target = pred != 0, target != 0
    dims = tuple(range(2, pred.ndim))
    intersection = (pred & target).sum(dims)
    areas = pred.sum(dims) + target.sum(dims)
    return intersection.double(), areas.double()


def _ratio_empty_one(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 1.0 where the denominator is 0 (both masks empty)."""
    return torch.where(denominator == 0, 1.0, numerator / denominator.clamp_min(1))


def dice_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """Competition Dice ``2|A ∩ B| / (|A| + |B|)`` of each image and class.

    Args:
        pred: predicted masks ``(N, C, H, W)``, bool or 0/1 (nonzero is foreground), on
            any device; numpy arrays go through ``torch.from_numpy`` first.
        target: true masks, same shape and conventions.

    Returns:
        float64 ``(N, C)`` on the input's device: 1.0 where both masks are empty, 0.0 where
        exactly one is.
    """
    intersection, areas = _overlap(pred, target)
    return _ratio_empty_one(2 * intersection, areas)


def iou_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """Jaccard index ``|A ∩ B| / |A ∪ B|`` of each image and class.

    Args and returns as :func:`dice_per_image`: float64 ``(N, C)``, 1.0 where both masks
    are empty, 0.0 where exactly one is.
    """
    intersection, areas = _overlap(pred, target)
    return _ratio_empty_one(intersection, areas - intersection)


class Metric:
    """Base class of accumulating metrics.

    The state is the tensors named in ``state_names``, all float64 on the device of the
    first batch, created by the first :meth:`update` (which also fixes the number of
    classes ``C``) and only ever summed, so that the state of several processes combines
    by :meth:`reduce_` with a sum all-reduce. Subclasses set ``state_names`` and ``ndim``
    (the number of dimensions of the inputs) and implement :meth:`batch_state` and
    :meth:`compute_state`.

    Args:
        threshold: a probability in ``(0, 1)``; a logit counts as positive when
            ``sigmoid(logit) > threshold``.
    """

    state_names: tuple[str, ...] = ()
    ndim = 4

    def __init__(self, threshold: float = 0.5):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"threshold must be a probability strictly between 0 and 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen (and the number of classes)."""
        for name in self.state_names:
            setattr(self, name, None)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add one batch: ``logits`` and 0/1 ``target`` of equal shape, ``(B, C, ...)`` with ``ndim`` dims.

        ``valid``: optional bool ``(B, 1, H, W)``, False on padding; each image is then
        scored on its own pixels only, as if it had been given alone at its size.
        """
        kind = type(self).__name__
        if logits.shape != target.shape or logits.ndim != self.ndim:
            raise ValueError(
                f"{kind}: expected logits and target of one shape with {self.ndim} dimensions, "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        pred, target = torch.sigmoid(logits.float()) > self.threshold, target != 0
        if valid is not None:
            if valid.shape != (logits.shape[0], 1, *logits.shape[2:]):
                raise ValueError(f"{kind}: valid {tuple(valid.shape)} must be (B, 1, ...) for {tuple(logits.shape)}")
            pred, target = pred & valid, target & valid
        batch = self.batch_state(pred, target)
        for name, value in zip(self.state_names, batch):
            value = value.to(torch.float64)
            current = getattr(self, name)
            if current is None:
                setattr(self, name, value)
            elif current.shape != value.shape:
                shapes = f"{tuple(current.shape)} then {tuple(value.shape)}"
                raise ValueError(f"{kind}: the number of classes changed between batches ({name} {shapes})")
            else:
                current += value

    @property
    def empty(self) -> bool:
        """True until the first :meth:`update` after a reset."""
        return any(getattr(self, name) is None for name in self.state_names)

    def reduce_(self, fn: Callable[[Tensor], object]) -> None:
        """Apply ``fn`` in place to each state tensor, e.g. ``torch.distributed.all_reduce`` (a sum)."""
        for name in self.state_names:
            fn(self._state(name))

    def compute(self) -> dict[str, float]:
        """The metric values from the accumulated state."""
        return self.compute_state(*(self._state(name) for name in self.state_names))

    def _state(self, name: str) -> Tensor:
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}: no batch has been added since the last reset")
        return value

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        """One batch's contribution to each state tensor, in ``state_names`` order.

        ``pred`` and ``target`` are bool tensors of the input shape.
        """
        raise NotImplementedError

    def compute_state(self, *state: Tensor) -> dict[str, float]:
        """Metric values from the state tensors, given in ``state_names`` order."""
        raise NotImplementedError


def _per_class(prefix: str, values: Tensor) -> dict[str, float]:
    """``{prefix_0: values[0], ...}`` for a ``(C,)`` tensor."""
    return {f"{prefix}_{index}": value for index, value in enumerate(values.tolist())}


class _MaskMetric(Metric):
    """Base of the metrics of masks ``(B, C, H, W)`` scored after small predictions are wiped.

    Args:
        threshold: probability above which a pixel is predicted as defect.
        min_pixels: as for :class:`Dice`.
    """

    def __init__(self, threshold: float = 0.5, min_pixels: int | list[int] | None = None):
        super().__init__(threshold)
        self.min_pixels = min_pixels
        check_min_pixels(min_pixels)

    def _wiped(self, pred: Tensor) -> Tensor:
        return wipe_small_masks(pred, min_pixels_per_class(self.min_pixels, pred.shape[1]))


class _PerImageScore(_MaskMetric):
    """Mean of a per-image score over every image, per class and overall.

    Inputs: logits and masks ``(B, C, H, W)``. State: the sum of the scores per class
    ``(C,)`` and the number of images ``()``.
    """

    state_names = ("score_sum", "images")
    name: str  # prefix of the returned keys
    score: Callable[[Tensor, Tensor], Tensor]  # bool masks (N, C, H, W) -> float64 (N, C)

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        images = torch.full((), float(len(pred)), device=pred.device)  # a fill: no host-to-device copy to wait for
        return self.score(self._wiped(pred), target).sum(0), images

    def compute_state(self, score_sum: Tensor, images: Tensor) -> dict[str, float]:
        per_class = score_sum / images
        return {**_per_class(self.name, per_class), f"{self.name}_mean": per_class.mean().item()}


@METRICS.register
class Dice(_PerImageScore):
    """Competition Dice of thresholded sigmoid masks ``(B, C, H, W)``.

    Returns ``dice_0 .. dice_{C-1}`` (mean over images of each class channel, 0-indexed) and
    ``dice_mean`` (mean over every image-class pair, the competition score). Empty prediction
    and empty target score 1.

    Args:
        threshold: probability above which a pixel is predicted as defect.
        min_pixels: optional minimum predicted pixels per class (one number or one per
            class); smaller predictions are wiped first, as the competition entries did
            (the write-up: 600, 600, 1000, 2000).
    """

    name = "dice"
    score = staticmethod(dice_per_image)


@METRICS.register
class IoU(_PerImageScore):
    """Jaccard index of thresholded sigmoid masks ``(B, C, H, W)``.

    Returns ``iou_0 .. iou_{C-1}`` and ``iou_mean`` (mean over every image-class pair);
    empty prediction and empty target score 1.

    Args:
        threshold: probability above which a pixel is predicted as defect.
        min_pixels: as for :class:`Dice`.
    """

    name = "iou"
    score = staticmethod(iou_per_image)


@METRICS.register
class Accuracy(Metric):
    """Accuracy of a multilabel classifier: logits and 0/1 targets ``(B, C)``.

    Returns ``accuracy`` (the fraction of all image-class decisions that are right) and
    ``accuracy_0 .. accuracy_{C-1}`` (per class, over images).

    Args:
        threshold: probability above which a class is predicted present.
    """

    state_names = ("correct", "images")
    ndim = 2

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        images = torch.full((), float(len(pred)), device=pred.device)  # a fill: no host-to-device copy to wait for
        return (pred == target).sum(0), images

    def compute_state(self, correct: Tensor, images: Tensor) -> dict[str, float]:
        per_class = correct / images
        return {"accuracy": per_class.mean().item(), **_per_class("accuracy", per_class)}


@METRICS.register
class PrecisionRecall(Metric):
    """Per-class precision and recall of a multilabel classifier: logits and 0/1 targets ``(B, C)``.

    Returns ``precision_0 ..``, ``recall_0 ..`` and their unweighted means over classes
    ``precision_mean``, ``recall_mean``. The 0/0 cases are defined as 1.0 (no mistake of
    that kind was possible): precision of a class never predicted present, recall of a
    class never present in the targets.

    Args:
        threshold: probability above which a class is predicted present.
    """

    state_names = ("true_pos", "false_pos", "false_neg")
    ndim = 2

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (pred & target).sum(0), (pred & ~target).sum(0), (~pred & target).sum(0)

    def compute_state(self, true_pos: Tensor, false_pos: Tensor, false_neg: Tensor) -> dict[str, float]:
        precision = _ratio_empty_one(true_pos, true_pos + false_pos)
        recall = _ratio_empty_one(true_pos, true_pos + false_neg)
        return {
            **_per_class("precision", precision),
            **_per_class("recall", recall),
            "precision_mean": precision.mean().item(),
            "recall_mean": recall.mean().item(),
        }


@METRICS.register
class DefectDice(_MaskMetric):
    """Dice over the image-class pairs that hold a defect, and a Dice balanced between defect and empty pairs.

    On data where most image-class pairs are empty, the competition Dice (:class:`Dice`)
    rewards predicting nothing. Inputs: logits and masks ``(B, C, H, W)``. State: the Dice
    sums over the defect pairs and over the empty pairs, and their counts, each ``(C,)``.

    Returns:

    - ``dice_defect_0 ..``: mean Dice over the images that have class k, and
      ``dice_defect_mean`` over every defect pair of every class (each defect counts once);
      an empty predictor scores 0;
    - ``dice_empty_mean``: the share of empty pairs predicted empty (their Dice is 1 or 0);
    - ``dice_balanced``: the mean of the two, as if defect and empty pairs were equally
      common; predicting nothing scores 0.5, and so does predicting every class everywhere.

    A score without any pair to average over is 1.0 (nothing to find, nothing to get wrong).

    Args:
        threshold, min_pixels: as for :class:`Dice`.
    """

    state_names = ("defect_sum", "defect_pairs", "empty_sum", "empty_pairs")

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        has_defect = target.flatten(2).any(2)
        score = dice_per_image(self._wiped(pred), target)
        return (torch.where(has_defect, score, 0.0).sum(0), has_defect.sum(0),
                torch.where(has_defect, 0.0, score).sum(0), (~has_defect).sum(0))

    def compute_state(self, defect_sum: Tensor, defect_pairs: Tensor, empty_sum: Tensor,
                      empty_pairs: Tensor) -> dict[str, float]:
        defect = _ratio_empty_one(defect_sum.sum(), defect_pairs.sum()).item()
        empty = _ratio_empty_one(empty_sum.sum(), empty_pairs.sum()).item()
        return {**_per_class("dice_defect", _ratio_empty_one(defect_sum, defect_pairs)), "dice_defect_mean": defect,
                "dice_empty_mean": empty, "dice_balanced": (defect + empty) / 2}


@METRICS.register
class Presence(_MaskMetric):
    """Per-class precision and recall of defect presence in each image, from segmentation masks.

    An image shows class k when its thresholded mask keeps any pixel after ``min_pixels``;
    inputs are logits and masks ``(B, C, H, W)``. An empty predictor has recall 0 on every
    class that occurs. Returns ``presence_precision_0 ..``, ``presence_recall_0 ..`` and
    their means over classes ``presence_precision_mean``, ``presence_recall_mean``; the 0/0
    cases are 1.0, as in :class:`PrecisionRecall`.

    Args:
        threshold, min_pixels: as for :class:`Dice`.
    """

    state_names = PrecisionRecall.state_names

    def batch_state(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shown, present = self._wiped(pred).flatten(2).any(2), target.flatten(2).any(2)
        return PrecisionRecall.batch_state(self, shown, present)

    def compute_state(self, true_pos: Tensor, false_pos: Tensor, false_neg: Tensor) -> dict[str, float]:
        scores = PrecisionRecall.compute_state(self, true_pos, false_pos, false_neg)
        return {f"presence_{name}": value for name, value in scores.items()}
