"""The learning rule: the training crops a dataset needs before its validation defect Dice leaves the floor.

A pure function of the fingerprint, the training crop and the policy (its constants are
``PlanPolicy.learn_*``, their provenance stated there, their fit in ``benchmarks/learning_curves.py``).
The folds (:func:`sever.planning.sizing.plan_folds`) and the crop
(:func:`sever.planning.sizing.learning_crop`) are planned to reach it, and
:mod:`sever.planning.learning` tells the steps the budget gives against it before training.
"""

from __future__ import annotations

import math

from sever.planning.fingerprint import ClassStats, Fingerprint
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy


def crop_cover(c: ClassStats, fp: Fingerprint, crop: tuple[int, int]) -> float:
    """The share of a training crop class ``c`` covers where it is shown: its median defect pixels per image
    over the pixels of a crop (of a median image, when the image is smaller than the crop)."""
    seen = min(crop[0] * crop[1], fp.heights[1] * fp.widths[1])
    return min(1.0, c.area[1] / seen)


def class_difficulty(c: ClassStats, fp: Fingerprint, crop: tuple[int, int],
                     policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """How many times the reference's crops class ``c`` needs (at least 1): rarer or smaller needs more."""
    share, cover = max(c.frequency, 1e-6), max(crop_cover(c, fp, crop), 1e-6)
    return (max(1.0, policy.learn_frequency / share) ** policy.learn_rarity_power
            * max(1.0, policy.learn_cover / cover) ** policy.learn_size_power)


def crops_needed(fp: Fingerprint, crop: tuple[int, int], policy: PlanPolicy = DEFAULT_POLICY
                 ) -> tuple[float, ClassStats | None]:
    """Training crops a run should see before its validation defect Dice leaves the floor, and the class that
    sets it (the hardest of the classes shown in some image; None without any)."""
    shown = [c for c in fp.classes if c.images > 0]
    if not shown:
        return policy.learn_crops, None
    hardest = max(shown, key=lambda c: class_difficulty(c, fp, crop, policy))
    return policy.learn_crops * class_difficulty(hardest, fp, crop, policy), hardest


def steps_needed(fp: Fingerprint, crop: tuple[int, int], batch: int, policy: PlanPolicy = DEFAULT_POLICY) -> int:
    """Optimiser steps of ``batch`` crops a run needs before it leaves the floor (:func:`crops_needed`)."""
    return math.ceil(crops_needed(fp, crop, policy)[0] / batch)
