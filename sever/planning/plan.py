"""``sever plan``: an experiment file planned from a dataset's fingerprint, each value with its reason.

:func:`make_plan` turns a :class:`~sever.planning.fingerprint.Fingerprint`, a target
device and a time budget into a complete segmentation experiment (the config dict) and
one reason per planned value (dotted config keys); :meth:`Plan.write` writes it as YAML
with each reason as a comment above its key, and ``fingerprint.json`` beside it. The
written file validates like any experiment (:func:`sever.experiment.prepare_config`) and
trains as it is: ``sever train -c FILE`` trains fold 0, ``--folds K`` (K from
``data_loader.args.folds``) all of them, ``sever auto`` the study. When the budget is too
short for two folds to train :data:`MIN_EPOCHS_PER_FOLD` epochs each, the plan is one run
with a validation split instead (no ``folds``): ``sever train -c FILE`` trains it.

Two values are measured rather than derived, on the target device: the batch size on
CUDA (the largest that fits with a memory margin, by trial forward/backward steps:
:func:`sever.utils.device.largest_batch`) and the seconds of one training step, from
which the epochs a budget holds are estimated. The decision rules are pure functions of
their inputs (the fingerprint, :class:`~sever.utils.device.Capabilities`, a step-time
probe), so they are tested on CPU with fake devices and probes.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from sever.exceptions import ConfigError
from sever.model.model import build_model
from sever.planning.fingerprint import Fingerprint
from sever.utils.config import parse_duration
from sever.utils.device import Capabilities, autocast, choose_amp, cpu_batch_size, largest_batch

logger = logging.getLogger(__name__)

MAX_FOLDS = 5
MIN_EPOCHS_PER_FOLD = 3  # fewer folds when a fold could not train this many epochs; one run below 2 folds
SEEKING_COVER = 0.5  # crops covering less of a median image than this are sent onto defects half the time
SINGLE_VALIDATION = 0.15  # share of the images validating a single planned run
MIN_UPDATES = 400  # optimiser steps a plan aims for: below, a CPU batch is halved and the rate kept up epoch by epoch
MIN_CPU_BATCH = 4  # the CPU batch is not halved below this (batch-norm statistics of fewer images are noisy)
RESERVE = 0.15  # share of the budget left for out-of-fold prediction, tuning and the report
MEMORY_MARGIN = 0.8  # a CUDA batch fits when its trial step peaks below this share of the memory
VALID_COST = 1 / 3  # a validation image costs about a third of a training one per pixel (forward only)
FOLD_PASSES = 3  # after training, a fold predicts its validation images 3 times: tuning, report, out-of-fold
FOLD_SETUP = 20.0  # seconds per fold for reading the data, building the model and drawing the report
EMPTY_PAIRS_MONITOR = 0.5  # from this share of empty image-class pairs on, the defect Dice is monitored
RARE_CLASS = 1 / 3  # a class seen in under this share of the commonest class's images is balanced
SMALL_DATA = 1000  # fewer images than this: stronger augmentation and dropout
LARGE_DATA = 2000  # at least this many images (and a long enough fold budget on CUDA): a larger encoder
LARGE_FOLD_BUDGET = 30 * 60  # seconds per fold for the larger encoder
CROP_SIDE = {"cpu": 256, "cuda": 512}  # the largest crop side planned per device kind


@dataclass
class Plan:
    """A planned experiment: the config, a reason per dotted key, and what was planned around."""

    config: dict
    reasons: dict[str, str]
    fingerprint: Fingerprint
    notes: list[str] = field(default_factory=list)
    fold_overhead: float = 0.0  # estimated seconds a fold takes beyond its training (set-up, tuning, report, OOF)

    @property
    def folds(self) -> int:
        """The study's folds; 1 for a single run with a validation split."""
        return int(self.config["data_loader"]["args"].get("folds", 1))

    def text(self) -> str:
        """The experiment file: YAML with each reason as a comment above its key."""
        header = [f"# Planned by `sever plan {self.fingerprint.data_dir}` from its fingerprint "
                  "(fingerprint.json beside this file).",
                  f"#   sever train -c THIS_FILE{f' --folds {self.folds}' if self.folds > 1 else ''}    # or: sever "
                  "auto, which also tunes and predicts"]
        header += [f"# note: {line}" for note in self.notes for line in _wrapped(note)]
        return "\n".join(header + _emit(self.config, self.reasons, "", "")) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the experiment file and ``fingerprint.json`` beside it; returns the file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text(), encoding="utf-8")
        self.fingerprint.save(path.parent / "fingerprint.json")
        return path


def _wrapped(text: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


def _emit(node: dict, reasons: dict[str, str], prefix: str, indent: str) -> list[str]:
    """YAML lines of ``node``: a mapping with reasons below it as a block, anything else in flow style."""
    lines = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in reasons:
            lines += [f"{indent}# {line}" for line in _wrapped(reasons[dotted])]
        nested = isinstance(value, dict) and value and any(r.startswith(dotted + ".") for r in reasons)
        if nested:
            lines.append(f"{indent}{key}:")
            lines += _emit(value, reasons, dotted + ".", indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_flow(value)}")
    return lines


# ----------------------------------------------------------------------------- decisions


def floor32(value: float) -> int:
    return max(32, int(value) // 32 * 32)


def ceil32(value: float) -> int:
    return max(32, math.ceil(value / 32) * 32)


def plan_crop(fp: Fingerprint, kind: str) -> tuple[tuple[int, int], str]:
    """The training crop ``(h, w)``, multiples of 32, and why.

    Each side is the median image side rounded down to 32 (so most images are cropped,
    not padded), capped at :data:`CROP_SIDE` for the device, and widened to hold the 95th
    percentile defect extent when that fits the cap and the largest image (images smaller
    than the crop are padded, and padding is left out of the loss).
    """
    cap = CROP_SIDE[kind]
    sides, why = [], []
    for axis, (name, sizes) in enumerate((("height", fp.heights), ("width", fp.widths))):
        extent = max((c.extent[axis] for c in fp.classes), default=0)
        side = min(floor32(sizes[1]), cap)
        reason = f"median image {name} {sizes[1]}"
        if sizes[1] > cap:
            reason += f" capped at {cap} on {kind}"
        if extent > side and ceil32(extent) <= min(cap, sizes[2]):
            side = ceil32(extent)
            reason += f", widened to the 95th-percentile defect {name} {extent}"
        sides.append(side)
        why.append(f"{side} ({reason})")
    crop = (sides[0], sides[1])
    padded = fp.heights[0] < crop[0] or fp.widths[0] < crop[1]
    tail = "; smaller images are padded to it (padding is left out of the loss)" if padded else ""
    return crop, f"crop {crop[0]}x{crop[1]}: height {why[0]}, width {why[1]}; multiples of 32{tail}"


def plan_architecture(fp: Fingerprint, kind: str, per_fold: float, allow_large: bool = True) -> tuple[dict, str]:
    """The ``arch`` block (an FPN or a Unet from the registered ones, without pretrained weights) and why.

    Args:
        per_fold: seconds of training per fold.
        allow_large: False when the larger model was measured too slow for the budget.
    """
    large = allow_large and kind == "cuda" and fp.images >= LARGE_DATA and per_fold >= LARGE_FOLD_BUDGET
    dropout = 0.1 if fp.images < SMALL_DATA else 0.0
    if large:
        arch = {"type": "Unet", "args": {"encoder_name": "resnet34", "encoder_weights": None, "in_channels": "g",
                                         "dropout": dropout}}
        why = (f"Unet over resnet34: {fp.images} images and {per_fold / 60:.0f} min per fold on CUDA carry a "
               f"larger encoder (>= {LARGE_DATA} images, >= {LARGE_FOLD_BUDGET // 60} min)")
    else:
        arch = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None, "in_channels": "g",
                                        "dropout": dropout,
                                        "decoder_args": {"decoder_pyramid_channels": 64,
                                                         "decoder_segmentation_channels": 32}}}
        why = (f"FPN over resnet18 with a light decoder: {fp.images} images, {per_fold / 60:.0f} min per fold on "
               f"{kind}; a larger encoder needs CUDA, >= {LARGE_DATA} images and >= {LARGE_FOLD_BUDGET // 60} "
               f"min per fold to train enough epochs")
    why += (f"; dropout {dropout} ({'under' if dropout else 'at least'} {SMALL_DATA} images); encoder_weights null: "
            "nothing is downloaded (imagenet when online converges faster)")
    return arch, why


def plan_augmentation(fp: Fingerprint, crop: tuple[int, int]) -> tuple[str, str]:
    """The transform set and why: defect-seeking crops when crops cover under half of an image and most
    pairs are empty; stronger photometric/geometric augmentation on small data; flips otherwise."""
    covered = min(1.0, crop[0] * crop[1] / (fp.heights[1] * fp.widths[1]))
    if covered < SEEKING_COVER and fp.empty_pairs >= EMPTY_PAIRS_MONITOR:
        return "HeavyCropTransforms", (f"HeavyCropTransforms: crops cover {covered:.0%} of a median image and "
                                       f"{fp.empty_pairs:.0%} of image-class pairs are empty, so half the crops are "
                                       f"taken onto a defect (plus CLAHE/blur/sharpen and flips)")
    if fp.images < SMALL_DATA:
        return "MediumTransforms", (f"MediumTransforms: {fp.images} images (< {SMALL_DATA}): flips, brightness/"
                                    "contrast and small shift/scale against overfitting")
    return "LightTransforms", f"LightTransforms: {fp.images} images (>= {SMALL_DATA}): crops and flips suffice"


def plan_sampler(fp: Fingerprint) -> tuple[dict | None, str]:
    """A class-balancing sampler when some class is rare next to the commonest, else None."""
    counts = [c.images for c in fp.classes]
    rarest = min(range(len(counts)), key=counts.__getitem__)
    if max(counts) and counts[rarest] < RARE_CLASS * max(counts):
        return ({"type": "WeightedFixedBatchSampler", "args": {"alpha": 0.5}},
                f"class balancing: {fp.classes[rarest].name} is in {counts[rarest]} images against {max(counts)} "
                f"for the commonest class (< {RARE_CLASS:.2f} of it); alpha 0.5 blends natural and equal group "
                "weights")
    return None, f"plain shuffling: the rarest class has at least {RARE_CLASS:.2f} of the commonest class's images"


def plan_min_pixels(fp: Fingerprint) -> tuple[list[int], str]:
    """Per-class ``min_pixels`` priors: half the 5th-percentile defect area per image, rounded down to 10.

    A prediction smaller than nearly every true defect is more likely noise; the run tunes
    the final values on its validation split (and ``sever auto`` on the out-of-fold maps).
    """
    priors = [int(c.area[0] / 2) // 10 * 10 for c in fp.classes]
    return priors, ("min_pixels priors " + ", ".join(f"{c.name} {p}" for c, p in zip(fp.classes, priors))
                    + ": half the 5th-percentile defect area per image; tuned after training")


def plan_folds(fp: Fingerprint, epochs_fitting: Callable[[int], float],
               study_needed: bool = False) -> tuple[int, str, list[str]]:
    """The number of folds, why, and notes on what was planned around.

    Up to :data:`MAX_FOLDS`; no more than the rarest class's images (each fold should
    validate on it), and fewer when a fold's share of the budget holds under
    :data:`MIN_EPOCHS_PER_FOLD` epochs. When even 2 folds would, 1: a single run validated
    on :data:`SINGLE_VALIDATION` of the images, unless ``study_needed`` (pseudo-label
    rounds are a study's). At equal time, folds that each train a few epochs lose to one
    model trained longer on more images (measured on NEU-Seg: a 3-fold study 0.776, one
    self-tuned run 0.820 on 400 held-out images, 5 minutes each).

    Args:
        epochs_fitting: ``folds`` -> the epochs each fold's share of the budget holds.
    """
    notes = []
    rarest = min(fp.classes, key=lambda c: c.images)
    folds = MAX_FOLDS
    why = f"{MAX_FOLDS} folds"
    if rarest.images < folds:
        folds = max(2, rarest.images)
        why = f"{folds} folds: {rarest.name} is in only {rarest.images} images"
        notes.append(f"folds reduced to {folds}: {rarest.name} is in only {rarest.images} image(s)"
                     + ("; some folds validate without it" if rarest.images < 2 else ""))
    while folds > 2 and epochs_fitting(folds) < MIN_EPOCHS_PER_FOLD:
        folds -= 1
        why = f"{folds} folds: more would leave under {MIN_EPOCHS_PER_FOLD} epochs per fold in the budget"
    if folds == 2 and not study_needed and epochs_fitting(2) < MIN_EPOCHS_PER_FOLD and epochs_fitting(1) >= 1:
        return 1, (f"one run validated on {SINGLE_VALIDATION:.0%} of the images, not a study: two folds would "
                   f"each train under {MIN_EPOCHS_PER_FOLD} epochs in the budget, and at equal time one model "
                   "trained longer on more images beats undertrained folds"), notes
    return folds, why + "; every labelled image is validated once, by a model that never saw it", notes


def plan_monitor(fp: Fingerprint) -> tuple[str, str]:
    """What selects the best checkpoint, and why: the balanced Dice when most pairs are empty."""
    if fp.empty_pairs >= EMPTY_PAIRS_MONITOR:
        return "max val_dice_balanced", (
            f"{fp.empty_pairs:.0%} of image-class pairs are empty: the competition Dice would keep a checkpoint "
            "that predicts nothing, so the best checkpoint is chosen by the Dice balanced between defect and "
            "empty pairs (DefectDice: predicting nothing, or everything everywhere, scores 0.5)")
    return "max val_dice_mean", (f"{fp.empty_pairs:.0%} of image-class pairs are empty (< "
                                 f"{EMPTY_PAIRS_MONITOR:.0%}): the competition Dice cannot be won by predicting "
                                 "nothing")


class PlanError(ConfigError):
    """No plan fits: the time budget is too short for one epoch of the smallest plan."""


@dataclass(frozen=True)
class Target:
    """Where the planned experiment will train.

    Attributes:
        device: the config's ``device`` (``cpu`` or ``cuda``).
        caps: what the device offers.
        step_seconds: ``(arch, crop, batch) -> seconds`` of one training step, measured.
        fits: ``(arch, crop, batch) -> bool``, whether a step of that batch fits (CUDA).
        image_seconds: ``crop -> seconds`` one loader process takes to read and augment one
            training image, measured on the dataset's images; None: loading is not measured.
    """

    device: str
    caps: Capabilities
    step_seconds: Callable[[dict, tuple[int, int], int], float]
    fits: Callable[[dict, tuple[int, int], int], bool] | None = None
    image_seconds: Callable[[tuple[int, int]], float] | None = None


def plan_batch(target: Target, arch: dict, crop: tuple[int, int], images: int) -> tuple[int, str]:
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
               f"{MEMORY_MARGIN:.0%} of its memory")
    fold_images = max(1, images // 2)
    if batch > fold_images:
        return fold_images, why + f", lowered to {fold_images}: the training images of a 2-fold split"
    return batch, why


def validation_share(folds: int) -> float:
    """The share of the images a fold (or, for ``folds`` 1, the single run) validates on."""
    return SINGLE_VALIDATION if folds == 1 else 1 / folds


def validation_seconds(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float) -> float:
    """Seconds of one pass over a fold's validation images, whole, at the training batch's pixels."""
    image_pixels = fp.heights[1] * fp.widths[1]
    return fp.images * validation_share(folds) / batch * step * VALID_COST * image_pixels / (crop[0] * crop[1])


def epoch_steps(fp: Fingerprint, folds: int, batch: int) -> int:
    """Optimiser steps of one epoch of one fold (``folds`` 1: of the single run)."""
    return math.ceil(fp.images * (1 - validation_share(folds)) / batch)


def epoch_estimate(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float) -> float:
    """Seconds of one epoch of one fold: its training steps plus validation on whole images."""
    return epoch_steps(fp, folds, batch) * step + validation_seconds(fp, folds, batch, crop, step)


def fold_overhead(fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float) -> float:
    """Seconds a fold spends outside its training budget: set-up and the passes after training
    (a single run has no out-of-fold pass)."""
    passes = FOLD_PASSES - (folds == 1)
    return FOLD_SETUP + passes * validation_seconds(fp, folds, batch, crop, step)


def fold_budget(budget: float, fp: Fingerprint, folds: int, batch: int, crop: tuple[int, int], step: float) -> float:
    """The training seconds of each of ``folds`` folds in ``budget`` seconds for the whole study
    (``folds`` 1: of the single run).

    :data:`RESERVE` of the budget is kept for a study's out-of-fold tuning (a single run has
    none); each fold's :func:`fold_overhead` comes out of its share.
    """
    reserve = 0.0 if folds == 1 else RESERVE
    return budget * (1 - reserve) / folds - fold_overhead(fp, folds, batch, crop, step)


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


def check_budget(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float, kind: str,
                 study_needed: bool = False) -> None:
    """PlanError unless the smallest plan (``batch``, ``step`` seconds) fits one epoch: of a single run, or of
    each of two folds when a study is needed."""
    folds = 2 if study_needed else 1
    smallest_epoch = epoch_estimate(fp, folds, batch, crop, step)
    if fold_budget(budget, fp, folds, batch, crop, step) >= smallest_epoch:
        return
    overhead = fold_overhead(fp, folds, batch, crop, step)
    if study_needed:
        needed = 2 * (smallest_epoch + overhead) / (1 - RESERVE)
        what = f"per fold on {kind}, a study trains at least 2 folds, and {RESERVE:.0%} is kept for tuning"
    else:
        needed = smallest_epoch + overhead
        what = f"on {kind}, and about {overhead:.0f} s more go to reading the data, self-tuning and the report"
    raise PlanError(
        f"--time {budget:.0f} s: too short; one epoch of the smallest plan (FPN over resnet18, batch {batch} of "
        f"{crop[0]}x{crop[1]} crops) takes about {smallest_epoch:.0f} s {what}: give at least --time "
        f"{math.ceil(needed)}s")


def loader_workers(kind: str) -> int:
    """Loader processes of a planned run: on CUDA every CPU core but two (at most 16), the GPU
    trains; on CPU half the cores (at most 4), the rest train."""
    cores = os.cpu_count() or 2
    return max(1, min(16, cores - 2)) if kind == "cuda" else max(1, min(4, cores // 2))


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


def single_run_updates(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float) -> float:
    """Optimiser steps one run would take in ``budget`` seconds at ``batch`` and ``step`` seconds a step."""
    epochs = fold_budget(budget, fp, 1, batch, crop, step) / epoch_estimate(fp, 1, batch, crop, step)
    return max(0.0, epochs) * epoch_steps(fp, 1, batch)


def cpu_batch_for_budget(fp: Fingerprint, target: Target, arch: dict, crop: tuple[int, int], budget: float,
                         batch: int, why: str) -> tuple[int, str]:
    """``batch`` and ``why``, the batch halved while one run would take fewer than :data:`MIN_UPDATES`
    optimiser steps, down to :data:`MIN_CPU_BATCH` (each step measured; the target caches them).

    A CPU step costs about the same per image whatever the batch, so half the batch is about
    twice the updates in the same time: what a short budget on a small dataset lacks most
    (on demo-sized data a one-minute budget gave 8-crop batches about 50 updates).
    """
    planned = batch
    updates = single_run_updates(fp, budget, batch, crop, training_step(target, arch, crop, batch)[0])
    while batch > MIN_CPU_BATCH and updates < MIN_UPDATES:
        batch = max(MIN_CPU_BATCH, batch // 2)
        updates = single_run_updates(fp, budget, batch, crop, training_step(target, arch, crop, batch)[0])
    if batch == planned:
        return batch, why
    return batch, (why + f", lowered to {batch} for more optimiser steps: the budget gives about {updates:.0f}, "
                         f"under {MIN_UPDATES} at larger batches")


def size_plan(fp: Fingerprint, target: Target, budget: float, crop: tuple[int, int],
              study_needed: bool = False) -> Sizing:
    """Measure the smallest plan, refuse a budget too short for it, choose the folds, then the model.

    The larger model is kept only when its measured steps still give each fold
    :data:`MIN_EPOCHS_PER_FOLD` epochs.
    """
    kind = target.caps.kind
    small, _ = plan_architecture(fp, kind, 0.0, allow_large=False)
    batch, batch_reason = plan_batch(target, small, crop, fp.images)
    if kind == "cpu":
        batch, batch_reason = cpu_batch_for_budget(fp, target, small, crop, budget, batch, batch_reason)
    step, notes = training_step(target, small, crop, batch)
    check_budget(fp, budget, batch, crop, step, kind, study_needed)
    folds, folds_reason, fold_notes = plan_folds(
        fp, lambda k: fold_budget(budget, fp, k, batch, crop, step) / epoch_estimate(fp, k, batch, crop, step),
        study_needed)
    notes += fold_notes
    per_fold = fold_budget(budget, fp, folds, batch, crop, step)
    arch, arch_reason = plan_architecture(fp, kind, per_fold)
    if arch != small:
        large_batch, large_reason = plan_batch(target, arch, crop, fp.images)
        large_step, large_notes = training_step(target, arch, crop, large_batch)
        large_fold = fold_budget(budget, fp, folds, large_batch, crop, large_step)
        if large_fold >= MIN_EPOCHS_PER_FOLD * epoch_estimate(fp, folds, large_batch, crop, large_step):
            return Sizing(arch, arch_reason, large_batch, large_reason, large_step, folds, folds_reason, large_fold,
                          fold_notes + large_notes)
        arch, arch_reason = small, (plan_architecture(fp, kind, per_fold, allow_large=False)[1]
                                    + "; Unet over resnet34 was measured too slow for the budget")
    return Sizing(arch, arch_reason, batch, batch_reason, step, folds, folds_reason, per_fold, notes)


def make_plan(fp: Fingerprint, target: Target, budget: float, name: str, seed: int = 42,
              unlabelled: str | None = None) -> Plan:
    """Plan the experiment of ``fp`` for ``target`` and ``budget`` seconds (see the module docstring).

    Raises:
        PlanError: the budget is too short for one epoch of the smallest plan on two folds.
    """
    reasons: dict[str, str] = {}
    crop, reasons["augmentation.args.height"] = plan_crop(fp, target.caps.kind)
    sizing = size_plan(fp, target, budget, crop, study_needed=unlabelled is not None)
    split_key = "folds" if sizing.folds > 1 else "validation_split"
    reasons.update({"arch": sizing.arch_reason, "data_loader.args.batch_size": sizing.batch_reason,
                    f"data_loader.args.{split_key}": sizing.folds_reason})
    transforms, reasons["augmentation.type"] = plan_augmentation(fp, crop)
    sampler, reasons["data_loader.args.sampler"] = plan_sampler(fp)
    min_pixels, reasons["metrics"] = plan_min_pixels(fp)
    monitor, reasons["trainer.monitor"] = plan_monitor(fp)
    amp = choose_amp(target.caps)
    epoch = epoch_estimate(fp, sizing.folds, sizing.batch, crop, sizing.step)
    rounds = 0 if unlabelled is None else 1
    epochs = max(1, int(sizing.per_fold / (rounds + 1) // epoch))
    valid_batch = max(1, sizing.batch * crop[0] * crop[1] // (fp.heights[2] * fp.widths[2]))
    schedule, reasons["lr_scheduler"] = plan_schedule(epochs, epochs * epoch_steps(fp, sizing.folds, sizing.batch))
    config = {
        "name": name,
        "seed": seed,
        "device": target.device,
        "amp": amp,
        "classes": len(fp.classes),
        "class_names": fp.class_names,
        "arch": sizing.arch,
        "data_loader": {"type": "SteelDataLoader", "args": {
            "data_dir": str(Path(fp.data_dir).resolve()),
            **_layout_args(fp.layout),
            "batch_size": sizing.batch,
            "valid_batch_size": valid_batch,
            split_key: sizing.folds if sizing.folds > 1 else SINGLE_VALIDATION,
            "num_workers": loader_workers(target.caps.kind),
            "sampler": sampler,
        }},
        "augmentation": {"type": transforms, "args": {"height": crop[0], "width": crop[1],
                                                       "mean": round(fp.grey_mean, 4),
                                                       "std": round(max(fp.grey_std, 1e-3), 4)}},
        "loss": {"type": "BCEDiceLoss", "args": {"bce_weight": 0.6, "dice_weight": 0.4}},
        "metrics": [{"type": metric, "args": {"min_pixels": list(min_pixels)}} for metric in ("Dice", "DefectDice",
                                                                                          "Presence")],
        "optimizer": {"type": "RAdam", "encoder": {"lr": 1.0e-3, "weight_decay": 3.0e-5},
                      "decoder": {"lr": 3.0e-3, "weight_decay": 3.0e-4}},
        "lr_scheduler": schedule,
        "trainer": {"epochs": 2 * epochs + 2, "time_budget": f"{max(1, int(run_budget(budget, sizing)))}s",
                    "save_period": max(1, epochs // 4), "monitor": monitor, "tensorboard": True},
    }
    if unlabelled is not None:
        config["pseudo"] = {"images": str(Path(unlabelled).resolve()), "rounds": 1}
        reasons["pseudo"] = "unlabelled images given: one pseudo-label round on them"
    reasons.update(_settled_reasons(fp, target, amp, budget, sizing, epochs, epoch, rounds))
    return Plan(config, reasons, fp, sizing.notes, fold_overhead(fp, sizing.folds, sizing.batch, crop, sizing.step))


def _settled_reasons(fp: Fingerprint, target: Target, amp: str, budget: float, sizing: Sizing, epochs: int,
                     epoch: float, rounds: int) -> dict[str, str]:
    """The reasons of the values that follow from the fingerprint, the device and the sizing."""
    return {
        "device": f"training device ({target.caps.name})",
        "amp": (f"{amp}: " + {"bf16": "the CUDA device computes in bfloat16",
                              "fp16": "the CUDA device lacks bfloat16: float16 with loss scaling",
                              "off": "float32 on CPU"}[amp]),
        "classes": "classes found in the labels: " + ", ".join(f"{c.name} ({c.images} images)" for c in fp.classes),
        "data_loader.args.valid_batch_size": "validation sees whole images: about as many pixels as a training "
                                             f"batch ({fp.heights[2]}x{fp.widths[2]} at most)",
        "data_loader.args.num_workers": ("every CPU core but two loads images while the GPU trains"
                                         if target.caps.kind == "cuda" else
                                         "half the CPU cores load images, the rest train"),
        "augmentation.args.mean": f"grey mean and std of the images ({fp.grey_mean:.4f}, {fp.grey_std:.4f})",
        "loss": "BCE + Dice (0.6/0.4, the write-up's): the Dice term keeps pulling towards small defects",
        "optimizer": "RAdam with the decoder at 3x the encoder's rate, as the shipped experiments without "
                     "pretrained weights",
        "trainer.epochs": f"an upper bound, twice the {epochs} estimated: the time budget ends training",
        "trainer.time_budget": (_budget_reason(budget, sizing, rounds) + f"; one epoch estimated at {epoch:.0f} s "
                                f"({sizing.step:.2f} s per measured step of {sizing.batch})"),
        "trainer.save_period": "about four checkpoints over the estimated epochs, for resuming",
    }


def plan_schedule(epochs: int, updates: int) -> tuple[dict, str]:
    """The learning-rate schedule of ``epochs`` estimated epochs of ``updates`` optimiser steps, and why.

    From :data:`MIN_UPDATES` steps on, a flat quarter then a cosine moved at every step, which
    ends at a zero rate with the budget (NEU-Seg, about 1,200 steps: held-out Dice 0.829-0.837
    over three seeds, 0.80 epoch by epoch). Below, the model is far from settled when the budget
    ends, and keeping the rate up pays more: a flat half, epoch by epoch (demo data, about 100
    steps: 0.80 that way, 0.66 per step).
    """
    if updates >= MIN_UPDATES:
        return ({"type": "FlatCosineAnnealing", "args": {"start_anneal": epochs // 4, "n_epochs": max(1, epochs),
                                                         "per_step": True}},
                f"flat for a quarter, then cosine over the {epochs} epochs estimated to fit (about {updates} "
                "steps), moved at every step so the rate reaches 0 as training ends (epoch by epoch, the last "
                "epoch of a short run would train at half the rate); trainer.time_budget re-lays it over the "
                "epochs that really fit")
    return ({"type": "FlatCosineAnnealing", "args": {"start_anneal": max(1, epochs // 2), "n_epochs": max(2, epochs)}},
            f"flat for half, then cosine epoch by epoch over the {epochs} epochs estimated to fit: about {updates} "
            f"steps, under {MIN_UPDATES}, leave the model far from settled, and a high rate for longer pays more "
            "than annealing; trainer.time_budget re-lays it over the epochs that really fit")


def run_budget(budget: float, sizing: Sizing) -> float:
    """``trainer.time_budget`` in seconds: a study's is the whole study's (it shares it between its
    folds, each fold's overhead included); a single run's counts only its training."""
    return sizing.per_fold if sizing.folds == 1 else budget * (1 - RESERVE)


def _budget_reason(budget: float, sizing: Sizing, rounds: int) -> str:
    if sizing.folds == 1:
        return (f"{budget:.0f} s less the run's estimated set-up, self-tuning and report: the training time of "
                "the single run")
    return (f"{budget:.0f} s less {RESERVE:.0%} for the study's tuning: the study shares it between its "
            f"{sizing.folds * (rounds + 1)} fold runs" + (" (2 rounds)" if rounds else "")
            + f", each fold's set-up, self-tuning, report and out-of-fold prediction included (about "
            f"{sizing.per_fold / (rounds + 1):.0f} s of training each)")


def _layout_args(layout: dict) -> dict:
    keys = ("format", "images", "csv") if layout["format"] == "kaggle" else ("format", "images", "masks")
    return {key: layout[key] for key in keys}


# ----------------------------------------------------------------------------- measuring


def _trial_step(arch: dict, classes: int, crop: tuple[int, int], batch: int, device: torch.device,
                amp: str) -> tuple[float, int]:
    """One forward/backward step on random ``(batch, 1, h, w)`` input: ``(seconds, peak CUDA bytes)``.

    The first step warms up (cuDNN algorithm choice, allocation); the median of the next three is
    the step time, so one step slowed by other work on a shared machine does not set the plan.
    """
    model = build_model(arch, classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    images = torch.randn(batch, 1, *crop, device=device)
    target = torch.rand(batch, classes, *crop, device=device).round()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(4):
        started = time.perf_counter()
        with autocast(amp, device):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(seconds[1:]), peak


LOADING_SAMPLES = 12  # images read and augmented to time the loader


def loading_seconds(fp: Fingerprint) -> Callable[[tuple[int, int]], float]:
    """``crop -> seconds`` one process takes to read and augment one of ``fp``'s images
    (the median over :data:`LOADING_SAMPLES` images spread over the folder, with the
    augmentation the plan chooses for that crop)."""
    from sever.data_loader.datasets import list_images, read_grey
    from sever.registries import TRANSFORMS

    folder = Path(fp.data_dir) / fp.layout["images"]
    names = list_images(folder)
    sample = [folder / names[i] for i in range(0, len(names), max(1, len(names) // LOADING_SAMPLES))]
    cache: dict[tuple[int, int], float] = {}

    def seconds(crop: tuple[int, int]) -> float:
        if crop not in cache:
            transforms, _ = plan_augmentation(fp, crop)
            pipeline = TRANSFORMS.build({"type": transforms, "args": {"height": crop[0], "width": crop[1]}},
                                        "augmentation").build(train=True)
            times = []
            for path in sample[:LOADING_SAMPLES]:
                started = time.perf_counter()
                image = read_grey(path)
                pipeline(image=image, mask=np.zeros((*image.shape, len(fp.classes)), np.uint8))
                times.append(time.perf_counter() - started)
            cache[crop] = statistics.median(times)
        return cache[crop]

    return seconds


def device_target(device: str, classes: int, fp: Fingerprint | None = None) -> Target:
    """The :class:`Target` of a real device (``auto``, ``cpu``, ``cuda``), measuring on it (and the
    loading of ``fp``'s images, when given)."""
    from sever.utils.device import capabilities, resolve_device

    resolved = resolve_device(device)
    caps = capabilities(resolved)
    amp = choose_amp(caps)
    cache: dict[tuple, tuple[float, int] | None] = {}

    def measure(arch: dict, crop: tuple[int, int], batch: int) -> tuple[float, int] | None:
        key = (repr(arch), crop, batch)
        if key not in cache:
            try:
                cache[key] = _trial_step(arch, classes, crop, batch, resolved, amp)
            except torch.cuda.OutOfMemoryError:
                cache[key] = None
            finally:
                if resolved.type == "cuda":
                    torch.cuda.empty_cache()
        return cache[key]

    def fits(arch: dict, crop: tuple[int, int], batch: int) -> bool:
        result = measure(arch, crop, batch)
        return result is not None and result[1] <= MEMORY_MARGIN * (caps.memory or 0)

    def step_seconds(arch: dict, crop: tuple[int, int], batch: int) -> float:
        result = measure(arch, crop, batch)
        if result is None:
            raise PlanError(f"--device {device}: a batch of {batch} {crop[0]}x{crop[1]} crops does not fit")
        return result[0]

    return Target(resolved.type, caps, step_seconds, fits if resolved.type == "cuda" else None,
                  loading_seconds(fp) if fp is not None else None)


def parse_budget(text: str) -> float:
    """``--time`` as seconds (``2h``, ``45m``, ``90s``)."""
    return parse_duration(text, "--time")
