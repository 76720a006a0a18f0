"""Post-processing of predicted masks, shared by validation and prediction."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_min_pixels(min_pixels: int | Sequence[int] | None) -> None:
    """Raise ValueError unless ``min_pixels`` is None, a count, or a list of counts (all >= 0)."""
    if min_pixels is None:
        return
    values = [min_pixels] if isinstance(min_pixels, int) else min_pixels
    if not isinstance(values, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values
    ):
        raise ValueError(f"min_pixels: expected a non-negative integer or a list of them, got {min_pixels!r}")


def min_pixels_per_class(min_pixels: int | Sequence[int] | None, classes: int) -> Tensor | None:
    """``min_pixels`` as a ``(C,)`` int64 tensor (one value for every class, or one per class).

    Raises:
        ValueError: invalid values, or a per-class list of the wrong length.
    """
    check_min_pixels(min_pixels)
    if min_pixels is None:
        return None
    values = [min_pixels] * classes if isinstance(min_pixels, int) else list(min_pixels)
    if len(values) != classes:
        raise ValueError(f"min_pixels: {len(values)} values given for {classes} classes")
    return torch.tensor(values, dtype=torch.int64)


def wipe_small_masks(pred: Tensor, min_pixels: Tensor | None) -> Tensor:
    """Clear every class mask with fewer positive pixels than its minimum.

    The write-up's defect pixel thresholds (600, 600, 1000, 2000 on 256x1600):
    a class predicted on fewer pixels than that is wiped from the image.

    Args:
        pred: ``(N, C, H, W)`` bool predicted masks.
        min_pixels: ``(C,)`` minimum pixel count per class, or None (no change).

    Returns:
        ``(N, C, H, W)`` bool masks.
    """
    if min_pixels is None:
        return pred
    counts = pred.flatten(2).sum(-1)  # (N, C)
    keep = counts >= min_pixels.to(pred.device)
    return pred & keep[:, :, None, None]
