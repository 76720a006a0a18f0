"""The measured part of a plan: the model, its batch and step time, the folds and each fold's seconds.

Estimates of the seconds an epoch, a fold's overhead and a fold's training take, from the
fingerprint and one measured step (:mod:`sever.planning.probe`); the time budget's own
arithmetic (reserve, shares, overhead deduction) is :mod:`sever.utils.time_budget`'s.
:func:`size_plan` measures the smallest plan, refuses a budget too short for it, chooses
the folds, then the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

from sever.planning.fingerprint import Fingerprint
from sever.planning.need import steps_needed
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.planning.probe import PlanError, Target
from sever.utils import time_budget
from sever.utils.device import cpu_batch_size, largest_batch


# ----------------------------------------------------------------------------- estimates


def floor32(value: float) -> int:
    """``value`` rounded down to a multiple of 32 (smp's input sides), at least 32."""
    return max(32, int(value) // 32 * 32)


def ceil32(value: float) -> int:
    """``value`` rounded up to a multiple of 32, at least 32."""
    return max(32, math.ceil(value / 32) * 32)


def validation_share(folds: int, policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """The share of the images a fold (or, for ``folds`` 1, the single run) validates on."""
    return policy.single_validation if folds == 1 else 1 / folds


def validation_seconds(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float,
                       policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """Seconds of one pass over a fold's validation images, whole, at the training batch's pixels."""
    image_pixels = fp.heights[1] * fp.widths[1]
    return (fp.images * validation_share(folds, policy) / batch * step * policy.valid_cost * image_pixels
            / (crop[0] * crop[1]))


def epoch_steps(fp: Fingerprint, folds: int, batch: int, policy: PlanPolicy = DEFAULT_POLICY) -> int:
    """Optimiser steps of one epoch of one fold (``folds`` 1: of the single run)."""
    return math.ceil(fp.images * (1 - validation_share(folds, policy)) / batch)


def epoch_estimate(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float,
                   policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """Seconds of one epoch of one fold: its training steps plus validation on whole images."""
    return (epoch_steps(fp, folds, batch, policy) * step
            + validation_seconds(fp, folds, batch, crop, step, policy))


def fold_overhead(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float,
                  policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """Seconds a fold spends outside its training budget: set-up and the passes after training
    (a single run has no out-of-fold pass)."""
    passes = policy.fold_passes - (folds == 1)
    return policy.fold_setup + passes * validation_seconds(fp, folds, batch, crop, step, policy)


def fold_budget(budget: float, fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float,
                policy: PlanPolicy = DEFAULT_POLICY, final: bool = False) -> float:
    """The training seconds of each of ``folds`` folds in ``budget`` seconds for the whole study
    (``folds`` 1: of the single run): its share (:func:`~sever.utils.time_budget.fold_share`, the
    study's reserve kept; with ``final``, shared with a final model too) less its :func:`fold_overhead`."""
    share = time_budget.fold_share(budget, folds, policy.reserve) * folds / (folds + final)
    return time_budget.fold_training(share, fold_overhead(fp, folds, batch, crop, step, policy))


def single_run_updates(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float,
                       policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """Optimiser steps one run would take in ``budget`` seconds at ``batch`` and ``step`` seconds a step."""
    epochs = (fold_budget(budget, fp, 1, batch, crop, step, policy)
              / epoch_estimate(fp, 1, batch, crop, step, policy))
    return max(0.0, epochs) * epoch_steps(fp, 1, batch, policy)


def loader_workers(kind: str) -> int:
    """Loader processes of a planned run: on CUDA every CPU core but two (at most 16), the GPU
    trains; on CPU half the cores (at most 4), the rest train."""
    cores = os.cpu_count() or 2
    return max(1, min(16, cores - 2)) if kind == "cuda" else max(1, min(4, cores // 2))


# ----------------------------------------------------------------------------- the model, batch and folds


def plan_architecture(fp: Fingerprint, kind: str, per_fold: float, allow_large: bool = True,
                      policy: PlanPolicy = DEFAULT_POLICY) -> tuple[dict, str]:
    """The ``arch`` block (an FPN or a Unet from the registered ones, without pretrained weights) and why.

    Args:
        per_fold: seconds of training per fold.
        allow_large: False when the larger model was measured too slow for the budget.
    """
    large = (allow_large and kind == "cuda" and fp.images >= policy.large_data
             and per_fold >= policy.large_fold_budget)
    dropout = 0.1 if fp.images < policy.small_data else 0.0
    minutes = policy.large_fold_budget // 60
    if large:
        arch = {"type": "Unet", "args": {"encoder_name": "resnet34", "encoder_weights": None, "in_channels": "g",
                                         "dropout": dropout}}
        why = (f"Unet over resnet34: {fp.images} images and {per_fold / 60:.0f} min per fold on CUDA carry a "
               f"larger encoder (>= {policy.large_data} images, >= {minutes:.0f} min)")
    else:
        arch = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None, "in_channels": "g",
                                        "dropout": dropout,
                                        "decoder_args": {"decoder_pyramid_channels": 64,
                                                         "decoder_segmentation_channels": 32}}}
        why = (f"FPN over resnet18 with a light decoder: {fp.images} images, {per_fold / 60:.0f} min per fold on "
               f"{kind}; a larger encoder needs CUDA, >= {policy.large_data} images and >= {minutes:.0f} "
               f"min per fold to train enough epochs")
    why += (f"; dropout {dropout} ({'under' if dropout else 'at least'} {policy.small_data} images); "
            "encoder_weights null: nothing is downloaded (imagenet when online converges faster)")
    return arch, why


def plan_batch(target: Target, arch: dict, crop: tuple[int, int], images: int,
               policy: PlanPolicy = DEFAULT_POLICY) -> tuple[int, str]:
    """The training batch size and why: measured on CUDA, the CPU rule otherwise; never more than the
    training images of a 2-fold split (``images`` // 2), so every fold forms a complete batch.

    Raises:
        PlanError: not even one image fits on the CUDA device.
    """
    if target.caps.kind != "cuda" or target.fits is None:
        batch = cpu_batch_size(crop)
        why = f"CPU rule: a batch of about 0.5 megapixel ({crop[0]}x{crop[1]} crops), a power of two in 2..16"
    else:
        batch = largest_batch(lambda b: target.fits(arch, crop, b))
        if batch == 0:
            raise PlanError(f"--device {target.device}: not even one {crop[0]}x{crop[1]} crop fits on "
                            f"{target.caps.name}")
        why = (f"measured on {target.caps.name}: the largest batch whose trial step peaks under "
               f"{policy.memory_margin:.0%} of its memory")
    fold_images = max(1, images // 2)
    if batch > fold_images:
        return fold_images, why + f", lowered to {fold_images}: the training images of a 2-fold split"
    return batch, why


def plan_folds(fp: Fingerprint, epochs_fitting: Callable[[int], float], study_needed: bool = False,
               policy: PlanPolicy = DEFAULT_POLICY, needed: float = 0.0,
               steps_fitting: Callable[[int], float] | None = None) -> tuple[int, str, list[str]]:
    """The number of folds, why, and notes on what was planned around.

    Up to :attr:`PlanPolicy.max_folds`; no more than the rarest class's images (each fold should
    validate on it), and fewer when a fold's share of the budget holds under
    :attr:`PlanPolicy.min_epochs_per_fold` epochs or, with :attr:`PlanPolicy.plan_to_learn`, under
    the ``needed`` optimiser steps the data is expected to need before it learns
    (:func:`sever.planning.need.steps_needed`): a run learns first, folds come when each can. When
    even 2 folds would fall short, 1: a single run validated on :attr:`PlanPolicy.single_validation`
    of the images, unless ``study_needed`` (pseudo-label rounds are a study's). At equal time, folds
    that each train a few epochs lose to one model trained longer on more images (measured on
    NEU-Seg: a 3-fold study 0.776, one self-tuned run 0.820 on 400 held-out images, 5 minutes each).

    Args:
        epochs_fitting: ``folds`` -> the epochs each fold's share of the budget holds.
        needed: optimiser steps a run should take; 0 plans for epochs only.
        steps_fitting: ``folds`` -> the optimiser steps each fold's share holds (needed with ``needed``).
    """
    notes = []
    least = policy.min_epochs_per_fold
    learn = policy.plan_to_learn and needed > 0 and steps_fitting is not None

    def short(folds: int) -> str | None:
        """Why ``folds`` folds are too many for the budget, or None."""
        if epochs_fitting(folds) < least:
            return f"under {least} epochs in the budget"
        if learn and steps_fitting(folds) < needed:
            return (f"about {steps_fitting(folds):.0f} optimiser steps in the budget, under the {needed:.0f} this data "
                    "is expected to need before it learns (sever.planning.need)")
        return None

    rarest = min(fp.classes, key=lambda c: c.images)
    folds = policy.max_folds
    why = f"{folds} folds"
    if rarest.images < folds:
        folds = max(2, rarest.images)
        why = f"{folds} folds: {rarest.name} is in only {rarest.images} images"
        notes.append(f"folds reduced to {folds}: {rarest.name} is in only {rarest.images} image(s)"
                     + ("; some folds validate without it" if rarest.images < 2 else ""))
    while folds > 2 and (reason := short(folds)) is not None:
        folds -= 1
        why = f"{folds} folds: more would each train {reason}"
    if folds == 2 and not study_needed and (reason := short(2)) is not None and epochs_fitting(1) >= 1:
        return 1, (f"one run validated on {policy.single_validation:.0%} of the images, not a study: two folds "
                   f"would each train {reason}, and at equal time one model trained longer on more images beats "
                   "undertrained folds"), notes
    return folds, why + "; every labelled image is validated once, by a model that never saw it", notes


@dataclass(frozen=True)
class Sizing:
    """The measured part of a plan: the model, its batch and step time, the folds and each fold's seconds."""

    arch: dict
    arch_reason: str
    batch: int
    batch_reason: str
    step: float
    folds: int
    folds_reason: str
    per_fold: float
    notes: list[str]
    final: bool = False  # the study shares its budget with a final model on every image (one more run)


def final_epochs(fp: Fingerprint, sizing: Sizing, crop: tuple[int, int], policy: PlanPolicy = DEFAULT_POLICY) -> float:
    """Epochs over all ``fp``'s images a study's final model trains in a fold's share of ``sizing``: counted at
    the optimiser steps a fold takes in it (the final model, validating nothing, takes a few more)."""
    epochs = sizing.per_fold / epoch_estimate(fp, sizing.folds, sizing.batch, crop, sizing.step, policy)
    return epochs * epoch_steps(fp, sizing.folds, sizing.batch, policy) * sizing.batch / fp.images


def check_budget(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float, kind: str,
                 study_needed: bool = False, policy: PlanPolicy = DEFAULT_POLICY) -> None:
    """PlanError unless the smallest plan (``batch``, ``step`` seconds) fits one epoch: of a single run, or of
    each of two folds when a study is needed."""
    folds = 2 if study_needed else 1
    smallest_epoch = epoch_estimate(fp, folds, batch, crop, step, policy)
    if fold_budget(budget, fp, folds, batch, crop, step, policy) >= smallest_epoch:
        return
    overhead = fold_overhead(fp, folds, batch, crop, step, policy)
    if study_needed:
        needed = 2 * (smallest_epoch + overhead) / (1 - policy.reserve)
        what = f"per fold on {kind}, a study trains at least 2 folds, and {policy.reserve:.0%} is kept for tuning"
    else:
        needed = smallest_epoch + overhead
        what = f"on {kind}, and about {overhead:.0f} s more go to reading the data, self-tuning and the report"
    raise PlanError(
        f"--time {budget:.0f} s: too short; one epoch of the smallest plan (FPN over resnet18, batch {batch} of "
        f"{crop[0]}x{crop[1]} crops) takes about {smallest_epoch:.0f} s {what}: give at least --time "
        f"{math.ceil(needed)}s")


def training_step(target: Target, arch: dict, crop: tuple[int, int], batch: int) -> tuple[float, list[str]]:
    """Seconds of one training step and a note when loading, not the device, sets them.

    The device's measured step, unless the loader processes take longer to read and augment
    the batch: on a fast GPU (an H200 trained 271 crops/s of 256x512 from 256x1600 images with
    4 workers, far below its trial steps) the epochs would otherwise be over-estimated.
    """
    step = target.step_seconds(arch, crop, batch)
    if target.image_seconds is None:
        return step, []
    workers = loader_workers(target.caps.kind)
    loading = batch * target.image_seconds(crop) / workers
    if loading <= step:
        return step, []
    return loading, [f"loading sets the pace: {workers} loader process(es) need {loading:.2f} s per batch of "
                     f"{batch} {crop[0]}x{crop[1]} crops, the device {step:.2f} s"]


def cpu_batch_for_budget(fp: Fingerprint, target: Target, arch: dict, crop: tuple[int, int], budget: float,
                         batch: int, why: str, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[int, str]:
    """``batch`` and ``why``, the batch halved while one run would take fewer than
    :attr:`PlanPolicy.min_updates` optimiser steps, down to :attr:`PlanPolicy.min_cpu_batch`
    (each step measured; the target caches them).

    A CPU step costs about the same per image whatever the batch, so half the batch is about
    twice the updates in the same time: what a short budget on a small dataset lacks most
    (on demo-sized data a one-minute budget gave 8-crop batches about 50 updates).
    """
    def updates_at(size: int) -> float:
        return single_run_updates(fp, budget, size, crop, training_step(target, arch, crop, size)[0], policy)

    planned = batch
    updates = updates_at(batch)
    while batch > policy.min_cpu_batch and updates < policy.min_updates:
        batch = max(policy.min_cpu_batch, batch // 2)
        updates = updates_at(batch)
    if batch == planned:
        return batch, why
    return batch, (why + f", lowered to {batch} for more optimiser steps: the budget gives about {updates:.0f}, "
                         f"under {policy.min_updates} at larger batches")


def _small_batch_and_step(fp: Fingerprint, target: Target, budget: float, crop: tuple[int, int],
                          policy: PlanPolicy) -> tuple[dict, int, str, float, list[str]]:
    """The smallest plan's model, batch (and why), measured step seconds and notes at ``crop``."""
    small, _ = plan_architecture(fp, target.caps.kind, 0.0, allow_large=False, policy=policy)
    batch, batch_reason = plan_batch(target, small, crop, fp.images, policy)
    if target.caps.kind == "cpu":
        batch, batch_reason = cpu_batch_for_budget(fp, target, small, crop, budget, batch, batch_reason, policy)
    step, notes = training_step(target, small, crop, batch)
    return small, batch, batch_reason, step, notes


def smaller_crops(fp: Fingerprint, crop: tuple[int, int], policy: PlanPolicy = DEFAULT_POLICY) -> list[tuple[int, int]]:
    """Crops of about half the pixels of the one before, from ``crop`` down: each side times 0.7, in
    multiples of 32, never under :attr:`PlanPolicy.min_learning_crop` nor under the 95th-percentile
    defect extent along its axis (a crop still holds a whole defect)."""
    floors = [max(policy.min_learning_crop, ceil32(max((c.extent[axis] for c in fp.classes), default=0)))
              for axis in (0, 1)]
    crops = []
    while True:
        smaller = tuple(max(min(side, floor), side * 7 // 10 // 32 * 32) for side, floor in zip(crop, floors))
        if smaller == crop:
            return crops
        crops.append(crop := (smaller[0], smaller[1]))


def learning_crop(fp: Fingerprint, target: Target, budget: float, crop: tuple[int, int],
                  policy: PlanPolicy = DEFAULT_POLICY) -> tuple[tuple[int, int], str | None]:
    """``crop``, or a smaller one (:func:`smaller_crops`) when a single run at ``crop`` would take fewer
    optimiser steps than the data needs (:func:`sever.planning.need.steps_needed`); and why (None: kept).

    Fewer pixels per step buy the need twice: each step costs less (measured on the target), and
    a defect covers more of a smaller crop, so fewer crops are needed. The first smaller crop
    that reaches the need is chosen, else the one that comes closest, if it comes at least
    :attr:`PlanPolicy.learning_crop_gain` times closer than ``crop``.
    """
    if not policy.plan_to_learn:
        return crop, None

    def reach(candidate: tuple[int, int]) -> tuple[float, float]:
        _, batch, _, step, _ = _small_batch_and_step(fp, target, budget, candidate, policy)
        return single_run_updates(fp, budget, batch, candidate, step, policy), steps_needed(fp, candidate, batch,
                                                                                              policy)

    given, needed = reach(crop)
    if given >= needed:
        return crop, None
    best, best_reach = crop, (given, needed)
    for candidate in smaller_crops(fp, crop, policy):
        reached = reach(candidate)
        if reached[0] / reached[1] > best_reach[0] / best_reach[1]:
            best, best_reach = candidate, reached
        if reached[0] >= reached[1]:
            break
    if best == crop or best_reach[0] / best_reach[1] < policy.learning_crop_gain * given / needed:
        return crop, None
    return best, (f"shrunk from {crop[0]}x{crop[1]}, where a single run would take about {given:.0f} optimiser steps "
                  f"of the {needed:.0f} this data needs before it learns, to {best[0]}x{best[1]}: about "
                  f"{best_reach[0]:.0f} of {best_reach[1]:.0f} (cheaper steps, and each defect covers more of a crop)")


def size_plan(fp: Fingerprint, target: Target, budget: float, crop: tuple[int, int], study_needed: bool = False,
              policy: PlanPolicy = DEFAULT_POLICY, final: bool = False) -> Sizing:
    """Measure the smallest plan, refuse a budget too short for it, choose the folds, then the model.

    The folds are planned to give each run the steps the data needs (:func:`plan_folds`); with
    ``final``, the study shares its budget with a final model as one more run. The
    larger model is kept only when its measured steps still give each fold
    :attr:`PlanPolicy.min_epochs_per_fold` epochs.
    """
    kind = target.caps.kind
    small, batch, batch_reason, step, notes = _small_batch_and_step(fp, target, budget, crop, policy)
    check_budget(fp, budget, batch, crop, step, kind, study_needed, policy)

    def fold_epochs(folds: int) -> float:
        return (fold_budget(budget, fp, folds, batch, crop, step, policy, final and folds > 1)
                / epoch_estimate(fp, folds, batch, crop, step, policy))

    folds, folds_reason, fold_notes = plan_folds(
        fp, fold_epochs, study_needed, policy, steps_needed(fp, crop, batch, policy),
        lambda folds: fold_epochs(folds) / (1 + study_needed) * epoch_steps(fp, folds, batch, policy))
    notes += fold_notes
    final = final and folds > 1
    per_fold = fold_budget(budget, fp, folds, batch, crop, step, policy, final)
    arch, arch_reason = plan_architecture(fp, kind, per_fold, policy=policy)
    if arch != small:
        large_batch, large_reason = plan_batch(target, arch, crop, fp.images, policy)
        large_step, large_notes = training_step(target, arch, crop, large_batch)
        large_fold = fold_budget(budget, fp, folds, large_batch, crop, large_step, policy, final)
        large_epoch = epoch_estimate(fp, folds, large_batch, crop, large_step, policy)
        if large_fold >= policy.min_epochs_per_fold * large_epoch:
            return Sizing(arch, arch_reason, large_batch, large_reason, large_step, folds, folds_reason, large_fold,
                          fold_notes + large_notes, final)
        arch, arch_reason = small, (plan_architecture(fp, kind, per_fold, allow_large=False, policy=policy)[1]
                                    + "; Unet over resnet34 was measured too slow for the budget")
    return Sizing(arch, arch_reason, batch, batch_reason, step, folds, folds_reason, per_fold, notes, final)
