"""Training losses for multilabel defect segmentation (and image classification).

Every loss takes ``forward(logits, target)``:

- ``logits``: ``(B, C, H, W)`` raw scores, one channel per defect class, no background
  channel (sigmoid per channel); any float dtype, fp16/bf16 included.
- ``target``: same shape, uint8/bool/float with values 0 or 1.
- ``valid`` (optional, segmentation shapes only): bool ``(B, 1, H, W)``, False on pixels that
  are padding rather than image (a batch of mixed sizes, a crop larger than its image).
  Those pixels count for nothing: the loss equals the loss on the images' own pixels and
  its gradient there is zero, so padding never teaches "background".

Losses marked so also accept classification shapes ``(B, C)``. The body always runs in
float32 with autocast switched off, so sums over a 256x1600 mask cannot overflow fp16.
A loss returns a scalar tensor, or for composite losses a ``dict[str, Tensor]`` whose
``"loss"`` is the total to backpropagate and whose other entries are detached parts
for logging.

Build one from a config block with ``LOSSES.build({"type": "BCEDiceLoss", "args": {...}}, "loss")``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sever.exceptions import ConfigError
from sever.registries import LOSSES


LossOutput = Tensor | dict[str, Tensor]


def _check_number(name: str, value: Any, *, positive: bool = False, at_most: float | None = None) -> float:
    """``value`` as a float; ``ValueError`` unless finite, >= 0 (> 0 if ``positive``) and <= ``at_most``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be <= {at_most:g}, got {value!r}")
    return float(value)


def _check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool; ``ValueError`` otherwise (a YAML string "false" is not False)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


class Loss(nn.Module):
    """Base class: checks shapes and runs :meth:`compute` in float32 with autocast off.

    Subclasses implement ``compute(logits, target)`` on float32 tensors of equal shape
    ``(B, C, ...)``. ``min_ndim`` is the fewest dimensions the loss accepts: 2 for losses
    that make sense on classification logits ``(B, C)``, 4 for segmentation-only ones.
    """

    min_ndim = 2

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> LossOutput:
        """Loss of ``logits`` against ``target``, both ``(B, C, ...)`` of equal shape.

        ``valid``: optional bool ``(B, 1, ...)``; only its True pixels are scored.
        """
        name = type(self).__name__
        if logits.shape != target.shape:
            raise ValueError(f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        if logits.ndim < self.min_ndim:
            shape = tuple(logits.shape)
            raise ValueError(f"{name}: expected (B, C, ...) with at least {self.min_ndim} dimensions, got {shape}")
        if valid is not None and (valid.ndim < 3 or valid.shape != (logits.shape[0], 1, *logits.shape[2:])):
            raise ValueError(f"{name}: valid {tuple(valid.shape)} must be (B, 1, H, W) for logits {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.compute(logits.float(), target.float(), valid)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> LossOutput:
        """The loss of float32 ``logits`` against float32 0/1 ``target`` on the ``valid`` pixels
        (all when None); defined by each subclass."""
        raise NotImplementedError


def _valid_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of per-element ``values (B, C, ...)`` over the elements of ``valid (B, 1, ...)`` pixels."""
    if valid is None:
        return values.mean()
    return values.mul(valid).sum() / (valid.sum() * values.shape[1]).clamp_min(1)


@LOSSES.register
class BCELoss(Loss):
    """Binary cross-entropy on logits (numerically stable), mean over every element.

    Accepts ``(B, C)`` and ``(B, C, H, W)``.

    Args:
        pos_weight: weight of the positive term; a number for all classes or a list of
            ``C`` numbers, one per class channel (all > 0). ``None`` weighs positives as 1.
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None):
        super().__init__()
        if pos_weight is not None:
            values = pos_weight if isinstance(pos_weight, (list, tuple)) else [pos_weight]
            if not values:
                raise ValueError("pos_weight must be a number or a non-empty list of numbers")
            pos_weight = torch.tensor([_check_number("pos_weight", v, positive=True) for v in values])
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        weight = None
        if self.pos_weight is not None:
            if self.pos_weight.numel() not in (1, logits.shape[1]):
                raise ValueError(f"BCELoss: {self.pos_weight.numel()} pos_weight values for {logits.shape[1]} classes")
            # one weight per class channel, broadcast over batch and spatial dimensions
            weight = self.pos_weight.view(-1, *([1] * (logits.ndim - 2)))
        if valid is None:
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        elements = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
        return _valid_mean(elements, valid)


class _OverlapLoss(Loss):
    """Base of the region losses: soft overlap counts from sigmoid probabilities.

    Args:
        smooth: added to numerator and denominator of the score (> 0), so empty masks score 1.
        per_image: score each image-class pair separately rather than each class over the batch.
    """

    def __init__(self, smooth: float = 1.0, per_image: bool = False):
        super().__init__()
        self.smooth = _check_number("smooth", smooth, positive=True)
        self.per_image = _check_flag("per_image", per_image)

    def soft_counts(self, logits: Tensor, target: Tensor,
                    valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Soft true positives ``sum(p * t)``, predicted area ``sum(p)`` and target area ``sum(t)``.

        Each ``(C,)``: summed over the batch and spatial dimensions; with ``per_image``
        each ``(B, C)``: summed over the spatial dimensions only. Only ``valid`` pixels count.
        """
        if self.per_image and logits.ndim < 3:
            raise ValueError(f"per_image needs spatial dimensions (B, C, H, W), got {tuple(logits.shape)}")
        dims = tuple(range(2, logits.ndim)) if self.per_image else (0, *range(2, logits.ndim))
        prob = torch.sigmoid(logits)
        if valid is not None:
            prob, target = prob * valid, target * valid
        return (prob * target).sum(dims), prob.sum(dims), target.sum(dims)


@LOSSES.register
class DiceLoss(_OverlapLoss):
    """Soft Dice loss on sigmoid probabilities: ``1 - mean Dice``.

    Dice per class over the whole batch, ``(2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``,
    or per image and class with ``per_image``; the mean is over classes (or image-class
    pairs). Accepts ``(B, C)`` (per class over the batch) and ``(B, C, H, W)``.

    Args:
        smooth: added to numerator and denominator (> 0), so empty masks give Dice 1.
        per_image: score each image-class pair separately rather than each class over the batch.
    """

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        true_pos, pred_area, target_area = self.soft_counts(logits, target, valid)
        dice = (2 * true_pos + self.smooth) / (pred_area + target_area + self.smooth)
        return 1 - dice.mean()


@LOSSES.register
class IoULoss(_OverlapLoss):
    """Soft Jaccard loss on sigmoid probabilities: ``1 - mean IoU``.

    IoU is ``(sum(p * t) + smooth) / (sum(p) + sum(t) - sum(p * t) + smooth)`` per class over
    the batch, or per image and class with ``per_image``. Accepts ``(B, C)`` and ``(B, C, H, W)``.

    Args:
        smooth: added to numerator and denominator (> 0).
        per_image: score each image-class pair separately.
    """

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        true_pos, pred_area, target_area = self.soft_counts(logits, target, valid)
        iou = (true_pos + self.smooth) / (pred_area + target_area - true_pos + self.smooth)
        return 1 - iou.mean()


@LOSSES.register
class TverskyLoss(_OverlapLoss):
    """Tversky loss: ``1 - mean TI`` with ``TI = (TP + s) / (TP + alpha * FP + beta * FN + s)``.

    Soft counts from sigmoid probabilities, per class over the batch (or per image and
    class with ``per_image``). ``alpha`` weighs false positives, ``beta`` false negatives:
    ``alpha = beta = 0.5`` is Dice-like, ``beta > alpha`` favours recall. Accepts ``(B, C)``
    and ``(B, C, H, W)``.

    Args:
        alpha: weight of false positives (>= 0).
        beta: weight of false negatives (>= 0); ``alpha + beta`` must be > 0.
        smooth: added to numerator and denominator (> 0).
        per_image: score each image-class pair separately.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, per_image: bool = False):
        super().__init__(smooth=smooth, per_image=per_image)
        self.alpha = _check_number("alpha", alpha)
        self.beta = _check_number("beta", beta)
        if self.alpha + self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0 (the loss would be constant)")

    def tversky_index(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        """Tversky index per class ``(C,)``, or per image and class ``(B, C)`` with ``per_image``."""
        true_pos, pred_area, target_area = self.soft_counts(logits, target, valid)
        false_pos = pred_area - true_pos
        false_neg = target_area - true_pos
        return (true_pos + self.smooth) / (true_pos + self.alpha * false_pos + self.beta * false_neg + self.smooth)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        return 1 - self.tversky_index(logits, target, valid).mean()


@LOSSES.register
class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss: ``mean((1 - TI) ** gamma)`` over classes (or image-class pairs).

    ``TI`` as in :class:`TverskyLoss`. ``gamma < 1`` strengthens the gradient of pairs
    that are already well segmented less than of poor ones (Abraham & Khan use 0.75).
    Accepts ``(B, C)`` and ``(B, C, H, W)``.

    Args:
        alpha: weight of false positives (>= 0).
        beta: weight of false negatives (>= 0).
        gamma: exponent (> 0).
        smooth: added to numerator and denominator (> 0).
        per_image: score each image-class pair separately.
    """

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0, per_image: bool = False
    ):
        super().__init__(alpha=alpha, beta=beta, smooth=smooth, per_image=per_image)
        self.gamma = _check_number("gamma", gamma, positive=True)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        # clamp: (1 - TI) ** gamma has an infinite slope at 0 when gamma < 1
        distance = (1 - self.tversky_index(logits, target, valid)).clamp_min(torch.finfo(torch.float32).tiny)
        return distance.pow(self.gamma).mean()


@LOSSES.register
class FocalLoss(Loss):
    """Sigmoid focal loss (Lin et al.), mean over every element.

    Per element ``alpha_t * (1 - p_t) ** gamma * BCE`` with ``p_t`` the probability given
    to the true label and ``alpha_t = alpha`` for positives, ``1 - alpha`` for negatives.
    Accepts ``(B, C)`` and ``(B, C, H, W)``.

    Args:
        alpha: weight of positives in ``[0, 1]``; ``None`` weighs both labels 1.
        gamma: focusing exponent (>= 0; 0 gives alpha-weighted BCE).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = None if alpha is None else _check_number("alpha", alpha, at_most=1.0)
        self.gamma = _check_number("gamma", gamma)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # 1 - p_t from sigmoid(-x) and sigmoid(x) directly, avoiding 1 - 1.0 for large |x|;
        # the clamp keeps the slope of (.) ** gamma finite when gamma < 1
        miss = target * torch.sigmoid(-logits) + (1 - target) * torch.sigmoid(logits)
        loss = miss.clamp_min(torch.finfo(torch.float32).tiny).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * target + (1 - self.alpha) * (1 - target)) * loss
        return _valid_mean(loss, valid)


_SURE_BACKGROUND = -2.0  # a logit whose hinge error against a 0 target, 1 + logit, is negative


def _lovasz_hinge_rows(logits: Tensor, target: Tensor) -> Tensor:
    """Binary Lovasz hinge of each row of ``(N, P)`` logits against 0/1 targets, shape ``(N,)``.

    The hinge errors ``1 - x * (2t - 1)`` are sorted in decreasing order and weighted by the
    increments of the Jaccard loss of the growing set of the largest errors (Berman et al.,
    2018), which is the convex Lovasz extension of the Jaccard loss.
    """
    errors = 1 - logits * (2 * target - 1)
    errors, order = torch.sort(errors, dim=1, descending=True)
    target = target.gather(1, order)
    positives = target.sum(1, keepdim=True)
    intersection = positives - target.cumsum(1)
    union = positives + (1 - target).cumsum(1)
    jaccard = 1 - intersection / union
    increments = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors) * increments).sum(1)


@LOSSES.register
class LovaszLoss(Loss):
    """Binary Lovasz hinge applied to each class channel: a convex surrogate of ``1 - IoU``.

    Input ``(B, C, H, W)``. With ``per_image`` the hinge is computed for each image-class
    pair and averaged; otherwise for each class over the whole batch and averaged over classes.
    An empty target pair scores the largest hinge error, pushing all its logits below -1.

    Args:
        per_image: score each image-class pair separately (as in the write-up's wish list).
    """

    min_ndim = 4

    def __init__(self, per_image: bool = True):
        super().__init__()
        self.per_image = _check_flag("per_image", per_image)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is not None:
            # a padded pixel becomes a sure, right background pixel: hinge error <= 0, so it sorts
            # last and adds nothing, and torch.where passes it no gradient
            logits = torch.where(valid, logits, logits.new_tensor(_SURE_BACKGROUND))
            target = target * valid
        if self.per_image:
            rows = logits.flatten(2).flatten(0, 1), target.flatten(2).flatten(0, 1)
        else:
            rows = logits.transpose(0, 1).flatten(1), target.transpose(0, 1).flatten(1)
        return _lovasz_hinge_rows(*rows).mean()


def _validated_weights(**weights: Any) -> dict[str, float]:
    """Check named loss weights: each >= 0 and not all 0."""
    checked = {name: _check_number(name, value) for name, value in weights.items()}
    if not any(checked.values()):
        raise ValueError(f"{' and '.join(checked)} cannot all be 0")
    return checked


@LOSSES.register
class BCEDiceLoss(Loss):
    """``bce_weight * BCE + dice_weight * (1 - Dice)``, the write-up's loss (0.6 / 0.4).

    Input ``(B, C, H, W)`` (or ``(B, C)``). Returns ``{"loss": total, "bce": BCE,
    "dice_loss": 1 - Dice}``, the parts unweighted and detached. Dice as :class:`DiceLoss` with
    its defaults (smooth 1, per class over the batch).

    Args:
        bce_weight: weight of the BCE term (>= 0).
        dice_weight: weight of the Dice term (>= 0); not both 0.
        pos_weight: weight of the defect pixels in the BCE term, as :class:`BCELoss`'s: a number,
            or one per class (a rare or small class weighed up).
    """

    def __init__(self, bce_weight: float = 0.6, dice_weight: float = 0.4,
                 pos_weight: float | Sequence[float] | None = None):
        super().__init__()
        weights = _validated_weights(bce_weight=bce_weight, dice_weight=dice_weight)
        self.bce_weight, self.dice_weight = weights["bce_weight"], weights["dice_weight"]
        self.bce = BCELoss(pos_weight)
        self.dice = DiceLoss()

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
        bce = self.bce.compute(logits, target, valid)
        dice = self.dice.compute(logits, target, valid)
        return {"loss": self.bce_weight * bce + self.dice_weight * dice, "bce": bce.detach(), "dice_loss": dice.detach()}


@LOSSES.register
class WeightedSumLoss(Loss):
    """A weighted sum of losses built by name, each logged as its own part.

    Config::

        type: WeightedSumLoss
        args:
          losses:
            - {type: BCELoss, weight: 0.5}
            - {type: LovaszLoss, args: {per_image: true}, weight: 0.5}

    Each entry is ``{type, args (optional), weight (>= 0, default 1), name (optional)}``;
    ``name`` defaults to ``type`` and must be unique. Returns ``{"loss": sum of
    weight * part, name: part, ...}`` with each part unweighted and detached (for a
    composite sub-loss, its total). Accepts the shapes all its parts accept; each part
    checks its own.

    Args:
        losses: the list of entries above, at least one.
    """

    def __init__(self, losses: Sequence[Mapping[str, Any]]):
        super().__init__()
        if isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence) or not losses:
            raise ValueError("losses must be a non-empty list of {type, args, weight} entries")
        self.names: list[str] = []
        self.weights: list[float] = []
        self.parts = nn.ModuleList()
        for index, entry in enumerate(losses):
            key = f"args.losses[{index}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{key}: expected a mapping with type, args, weight, got {type(entry).__name__}")
            spec = dict(entry)
            weight = _check_number(f"{key}.weight", spec.pop("weight", 1.0))
            name = spec.pop("name", spec.get("type"))
            try:
                part = LOSSES.build(spec, key)
            except ConfigError as exc:  # a plain ValueError lets the outer build name its own key
                raise ValueError(str(exc)) from exc
            if not isinstance(name, str) or name == "loss" or name in self.names:
                raise ValueError(f"{key}.name: {name!r} must be a string, not 'loss' nor another part's name")
            self.names.append(name)
            self.weights.append(weight)
            self.parts.append(part)
        if not any(self.weights):
            raise ValueError("args.losses: the weights cannot all be 0")

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
        output: dict[str, Tensor] = {}
        total = logits.new_zeros(())
        for name, weight, part in zip(self.names, self.weights, self.parts):
            value = part(logits, target, valid)
            value = value["loss"] if isinstance(value, dict) else value
            total = total + weight * value
            output[name] = value.detach()
        return {"loss": total, **output}
