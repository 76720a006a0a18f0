"""The planning rules: one small function per config key (or keys), registered in order.

A rule takes the :class:`PlanContext` (the fingerprint, the target device, the budget, the
policy, and what was measured: :attr:`PlanContext.crop`, :attr:`PlanContext.sizing`, ...) and
returns ``(value, reason)`` for the dotted config key(s) it was registered with; a reason of
None writes no comment. :func:`sever.planning.plan.make_plan` runs :data:`PLAN_RULES` in
their order and builds the config from their values, so the experiment file lists the keys
in that order. Adding a rule is one function and one registration line::

    @PLAN_RULES.rule("trainer.ema_decay")
    def plan_ema(ctx: PlanContext) -> tuple[float | None, str]:
        return 0.999, "an EMA of the weights smooths the last epochs"

A rule registered for several keys returns a tuple of one value per key; :data:`UNSET` leaves a
key out of the config (``data_loader.args.csv`` of a mask folder). A rule registered later for a
key already planned replaces its value and its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

from sever.data_loader.sampling import SamplerFactory, allocate
from sever.planning.fingerprint import Fingerprint
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.planning.probe import PlanError, Target
from sever.planning.learning import LearningEstimate, learning_estimate
from sever.planning.sizing import (Sizing, ceil32, epoch_estimate, epoch_steps, final_epochs, floor32, fold_overhead,
                                   learning_crop, loader_workers, size_plan, validation_share)
from sever.utils import time_budget
from sever.utils.device import choose_amp

UNSET = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # a rule's value for a key left out of the config


@dataclass
class PlanContext:
    """What every rule may read: the inputs of a plan and what was measured from them (each computed once)."""

    fp: Fingerprint
    target: Target
    budget: float  # seconds for the whole study (or the single run)
    name: str
    seed: int = 42
    unlabelled: str | None = None
    policy: PlanPolicy = DEFAULT_POLICY
    notes: list[str] = field(default_factory=list)  # what a rule planned around, printed with the plan

    @property
    def kind(self) -> str:
        """The target device's kind: ``cpu`` or ``cuda``."""
        return self.target.caps.kind

    @property
    def rounds(self) -> int:
        """Pseudo-label rounds after the first: 1 with unlabelled images, else 0."""
        return 0 if self.unlabelled is None else 1

    @cached_property
    def crop_and_reason(self) -> tuple[tuple[int, int], str]:
        """The image-shaped crop (:func:`plan_crop`), shrunk when a run could not learn at it
        (:func:`~sever.planning.sizing.learning_crop`)."""
        crop, why = plan_crop(self.fp, self.kind, self.policy)
        smaller, shrunk = learning_crop(self.fp, self.target, self.budget, crop, self.policy)
        if shrunk is None:
            return crop, why
        return smaller, f"crop {smaller[0]}x{smaller[1]}, {shrunk}; the image's own {why}"

    @property
    def crop(self) -> tuple[int, int]:
        """The training crop ``(h, w)``, pixels."""
        return self.crop_and_reason[0]

    @cached_property
    def without_final(self) -> Sizing:
        """The model, batch, step time and folds, measured on the target (:func:`size_plan`), the fold ensemble
        predicting."""
        return size_plan(self.fp, self.target, self.budget, self.crop, self.unlabelled is not None, self.policy)

    @cached_property
    def with_final(self) -> Sizing | None:
        """The sizing with a final model sharing the budget as one more run; None where it cannot: a single
        run, pseudo-label rounds (the final model trains on the labelled images alone), or folds it would
        leave short."""
        if self.rounds or self.without_final.folds == 1:
            return None
        sizing = size_plan(self.fp, self.target, self.budget, self.crop, False, self.policy, final=True)
        return sizing if sizing.folds > 1 else None

    @property
    def final_epochs(self) -> float | None:
        """Epochs over all the images the final model of :attr:`with_final` would train (None without one)."""
        return None if self.with_final is None else final_epochs(self.fp, self.with_final, self.crop, self.policy)

    @cached_property
    def sizing(self) -> Sizing:
        """The plan's sizing: :attr:`with_final` when its final model would train
        :attr:`PlanPolicy.final_model_epochs` epochs, else :attr:`without_final`."""
        epochs = self.final_epochs
        final = epochs is not None and epochs >= self.policy.final_model_epochs
        sizing = self.with_final if final else self.without_final
        self.notes[:0] = sizing.notes
        return sizing

    @cached_property
    def epoch(self) -> float:
        """Estimated seconds of one epoch of one fold (training and validation)."""
        return epoch_estimate(self.fp, self.sizing.folds, self.sizing.batch, self.crop, self.sizing.step,
                              self.policy)

    @property
    def run_epochs(self) -> float:
        """Epochs one fold's run (one round of it) is estimated to hold, a fraction included."""
        return self.sizing.per_fold / (self.rounds + 1) / self.epoch

    @property
    def epochs(self) -> int:
        """Whole epochs one fold's run is estimated to hold (at least 1)."""
        return max(1, int(self.run_epochs))

    @cached_property
    def learning(self) -> LearningEstimate:
        """The steps each planned run gets against those the data needs (:mod:`sever.planning.learning`)."""
        return learning_estimate(self.fp, self.budget, self.sizing.batch, self.crop, self.sizing.step,
                                 self.run_epochs, self.sizing.folds, self.rounds, self.policy)

    @property
    def fold_overhead(self) -> float:
        """Estimated seconds a fold takes beyond its training (set-up, tuning, report, out-of-fold)."""
        return fold_overhead(self.fp, self.sizing.folds, self.sizing.batch, self.crop, self.sizing.step, self.policy)


Decide = Callable[[PlanContext], tuple[Any, "str | None"]]


@dataclass(frozen=True)
class Rule:
    """A registered rule: the dotted config keys it plans and the function that decides them."""

    keys: tuple[str, ...]
    decide: Decide

    def values(self, ctx: PlanContext) -> tuple[dict[str, Any], dict[str, str]]:
        """``({dotted key: value}, {dotted key: reason})`` of this rule; the reason goes to its first key set."""
        value, reason = self.decide(ctx)
        values = dict(zip(self.keys, value if len(self.keys) > 1 else (value,), strict=True))
        planned = {key: v for key, v in values.items() if v is not UNSET}
        return planned, ({next(iter(planned)): reason} if reason is not None and planned else {})


class RuleRegistry:
    """The planning rules in the order they run (see the module docstring)."""

    def __init__(self) -> None:
        self._rules: list[Rule] = []

    def rule(self, *keys: str) -> Callable[[Decide], Decide]:
        """Decorator: register ``decide(ctx) -> (value, reason)`` as the rule of ``keys``, after the others."""
        if not keys:
            raise ValueError("a planning rule plans at least one config key")

        def add(decide: Decide) -> Decide:
            self._rules.append(Rule(tuple(keys), decide))
            return decide

        return add

    def remove(self, decide: Decide) -> None:
        """Unregister the rule ``decide`` (a test's own rule)."""
        self._rules = [rule for rule in self._rules if rule.decide is not decide]

    def __iter__(self) -> Iterator[Rule]:
        return iter(list(self._rules))


PLAN_RULES = RuleRegistry()
rule = PLAN_RULES.rule


# ----------------------------------------------------------------------------- pure decisions


def plan_final_model(sizing: Sizing, epochs: float | None, images: int,
                     policy: PlanPolicy = DEFAULT_POLICY) -> tuple[bool, str]:
    """``final_model`` and why: whether a final model on every image predicts instead of the fold ensemble.

    ``epochs``: what a final model would train over the ``images`` in a fold's share, the budget
    shared with it (None: sharing it would leave the folds short). It is planned from
    :attr:`PlanPolicy.final_model_epochs` on. A run that sees its images many times is limited
    by its data, and one model on all of them beats averaging folds on part of them; a run that
    sees them a few times is limited by its steps, and averaging pays more. Measured at equal
    budgets on held-out images (``benchmarks/plan_to_learn.py --compare final``): NEU-Seg (450
    training images, 7 min), 4 folds and a final model of 2.8 epochs 0.758, 5 folds 0.791; NEU-Seg
    with a class cut to 14% (320 images, 20 min), 5 folds and a final model of 13.4 epochs 0.846,
    5 folds 0.856; demo data with mixed sizes and small defects (192 images, 20 min), 4 folds and a
    final model of 18.5 epochs 0.862, 5 folds 0.841. A threshold of 10, set from the first and the
    last, mispredicted the second; 16 separates all three and is not yet checked on a fourth.
    """
    share = (sizing.folds - 1) / sizing.folds
    if sizing.final:
        return True, (f"a final model on all {images} labelled images, trained after the {sizing.folds} folds for a "
                      f"fold's share of the budget (about {epochs:.1f} epochs), predicts instead of their ensemble: "
                      f"at {policy.final_model_epochs:g} epochs or more a run is limited by its images, not its "
                      f"steps, and one model on all of them beats folds each trained on {share:.0%} "
                      "(PlanPolicy.final_model_epochs)")
    if epochs is None:
        return False, ("the fold ensemble predicts: a final model sharing the budget as one more run would leave "
                       "the folds short of the epochs or the learning steps they are planned to reach")
    return False, (f"the fold ensemble predicts: a final model sharing the budget would train about {epochs:.1f} "
                   f"epochs over the {images} images, under {policy.final_model_epochs:g}: a run that sees its "
                   "images a few times is limited by its steps, and averaging the folds pays more "
                   "(PlanPolicy.final_model_epochs)")


def plan_crop(fp: Fingerprint, kind: str, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[tuple[int, int], str]:
    """The training crop ``(h, w)``, multiples of 32, and why.

    Each side is the median image side rounded down to 32 (so most images are cropped,
    not padded), capped at :meth:`PlanPolicy.crop_cap` for the device, and widened to hold the
    95th percentile defect extent along the same axis (the height from the defects' heights,
    the width from their widths) when that fits the cap and the largest image (images
    smaller than the crop are padded, and padding is left out of the loss).
    """
    cap = policy.crop_cap(kind)
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


def plan_augmentation(fp: Fingerprint, crop: tuple[int, int], policy: PlanPolicy = DEFAULT_POLICY) -> tuple[str, str]:
    """The transform set and why: defect-seeking crops when crops cover under half of an image and most
    pairs are empty; stronger photometric/geometric augmentation on small data; flips otherwise."""
    covered = min(1.0, crop[0] * crop[1] / (fp.heights[1] * fp.widths[1]))
    if covered < policy.seeking_cover and fp.empty_pairs >= policy.empty_pairs_monitor:
        return "HeavyCropTransforms", (f"HeavyCropTransforms: crops cover {covered:.0%} of a median image and "
                                       f"{fp.empty_pairs:.0%} of image-class pairs are empty, so half the crops are "
                                       f"taken onto a defect (plus CLAHE/blur/sharpen and flips)")
    if fp.images < policy.small_data:
        return "MediumTransforms", (f"MediumTransforms: {fp.images} images (< {policy.small_data}): flips, "
                                    "brightness/contrast and small shift/scale against overfitting")
    return "LightTransforms", f"LightTransforms: {fp.images} images (>= {policy.small_data}): crops and flips suffice"


def balance_groups(fp: Fingerprint) -> list[tuple[str, int]]:
    """The groups a class-balancing sampler draws from, as ``(name, images)``: one per class shown in some
    image, then the defect-free images (:func:`~sever.data_loader.sampling.class_balance_groups` puts each
    image in the group of its rarest class; the fingerprint's per-class counts stand in for that)."""
    groups = [(c.name, c.images) for c in fp.classes if c.images > 0]
    empty = round(fp.empty_images * fp.images)
    return groups + ([("defect-free", empty)] if empty > 0 else [])


def plan_sampler(fp: Fingerprint, batch: int, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[dict | None, str]:
    """The batch sampler and why: plain shuffling, unless some class is rare next to the commonest.

    A class-balancing sampler then draws every batch from the :func:`balance_groups` in the
    blend of natural and equal weights :attr:`PlanPolicy.sampler_alpha`. Its fixed shares
    must give each group a place in a batch of ``batch``, or that group (a class) is never
    trained on; when they do not (a batch smaller than the groups, or a share rounded to
    none), each sample's group is drawn at random with those weights instead, so every class
    is seen within a few batches.
    """
    counts = [c.images for c in fp.classes]
    rarest = min(range(len(counts)), key=counts.__getitem__)
    if not (max(counts) and counts[rarest] < policy.rare_class * max(counts)):
        return None, (f"plain shuffling: the rarest class has at least {policy.rare_class:.2f} of the commonest "
                      "class's images")
    alpha = policy.sampler_alpha
    why = (f"class balancing: {fp.classes[rarest].name} is in {counts[rarest]} images against {max(counts)} for the "
           f"commonest class (< {policy.rare_class:.2f} of it); alpha {alpha} blends natural and equal group weights")
    groups = balance_groups(fp)
    places = allocate(SamplerFactory.weights([size for _, size in groups], alpha), batch)
    starved = [name for (name, _), count in zip(groups, places) if count == 0]
    if not starved:
        return ({"type": "WeightedFixedBatchSampler", "args": {"alpha": alpha}},
                why + f"; every batch of {batch} holds each of the {len(groups)} groups (classes and defect-free "
                      f"images) at least {int(places.min())} time(s)")
    return ({"type": "WeightedRandomBatchSampler", "args": {"alpha": alpha}},
            why + f"; a batch of {batch} has no fixed place for {', '.join(starved)} among the {len(groups)} "
                  "groups (classes and defect-free images), so each sample's group is drawn at random at those "
                  "weights and every class is trained on within a few batches")


def plan_min_pixels(fp: Fingerprint) -> tuple[list[int], str]:
    """Per-class ``min_pixels`` priors: half the 5th-percentile defect area per image, rounded down to 10.

    A prediction smaller than nearly every true defect is more likely noise; the run tunes
    the final values on its validation split (and ``sever auto`` on the out-of-fold maps).
    """
    priors = [int(c.area[0] / 2) // 10 * 10 for c in fp.classes]
    return priors, ("min_pixels priors " + ", ".join(f"{c.name} {p}" for c, p in zip(fp.classes, priors))
                    + ": half the 5th-percentile defect area per image; tuned after training")


def plan_monitor(fp: Fingerprint, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[str, str]:
    """What selects the best checkpoint, and why: the balanced Dice when most pairs are empty."""
    if fp.empty_pairs >= policy.empty_pairs_monitor:
        return "max val_dice_balanced", (
            f"{fp.empty_pairs:.0%} of image-class pairs are empty: the competition Dice would keep a checkpoint "
            "that predicts nothing, so the best checkpoint is chosen by the Dice balanced between defect and "
            "empty pairs (DefectDice: predicting nothing, or everything everywhere, scores 0.5)")
    return "max val_dice_mean", (f"{fp.empty_pairs:.0%} of image-class pairs are empty (< "
                                 f"{policy.empty_pairs_monitor:.0%}): the competition Dice cannot be won by "
                                 "predicting nothing")


def plan_schedule(epochs: int, updates: int, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[dict, str]:
    """The learning-rate schedule of ``epochs`` estimated epochs of ``updates`` optimiser steps, and why.

    From :attr:`PlanPolicy.min_updates` steps on, a flat quarter then a cosine moved at every step,
    which ends at a zero rate with the budget (NEU-Seg, about 1,200 steps: held-out Dice
    0.829-0.837 over three seeds, 0.80 epoch by epoch). Below, the model is far from settled when
    the budget ends, and keeping the rate up pays more: a flat half, epoch by epoch (demo data,
    about 100 steps: 0.80 that way, 0.66 per step).
    """
    if updates >= policy.min_updates:
        return ({"type": "FlatCosineAnnealing", "args": {"start_anneal": epochs // 4, "n_epochs": max(1, epochs),
                                                         "per_step": True}},
                f"flat for a quarter, then cosine over the {epochs} epochs estimated to fit (about {updates} "
                "steps), moved at every step so the rate reaches 0 as training ends (epoch by epoch, the last "
                "epoch of a short run would train at half the rate); trainer.time_budget re-lays it over the "
                "epochs that really fit")
    return ({"type": "FlatCosineAnnealing", "args": {"start_anneal": max(1, epochs // 2), "n_epochs": max(2, epochs)}},
            f"flat for half, then cosine epoch by epoch over the {epochs} epochs estimated to fit: about {updates} "
            f"steps, under {policy.min_updates}, leave the model far from settled, and a high rate for longer pays "
            "more than annealing; trainer.time_budget re-lays it over the epochs that really fit")


def plan_run_budget(ctx: PlanContext) -> tuple[float, str]:
    """``trainer.time_budget`` in seconds and why, never planning an epoch cut short of a useful share.

    A study's is the whole study's less its reserve (it shares it between its folds, each fold's
    overhead included); a single run's counts only its training, and ends on a whole epoch or
    on at least :attr:`PlanPolicy.useful_epoch_share` of one: a shorter last epoch would pay a
    whole validation for a few batches, so the run ends before it instead.

    Raises:
        PlanError: a study's fold run (one round of it) would not hold one whole epoch.
    """
    sizing, epoch, share = ctx.sizing, ctx.epoch, ctx.policy.useful_epoch_share
    estimate = f"; one epoch estimated at {epoch:.0f} s ({sizing.step:.2f} s per measured step of {sizing.batch})"
    whole, part = time_budget.useful_epochs(ctx.run_epochs, share)
    if whole == 0:
        runs = sizing.folds * (ctx.rounds + 1)
        needed = math.ceil(ctx.budget / ctx.run_epochs)
        raise PlanError(f"--time {ctx.budget:.0f} s: too short; each of the study's {runs} fold runs would train "
                        f"{ctx.run_epochs:.0%} of one epoch of {epoch:.0f} s: give at least --time {needed}s")
    if sizing.folds > 1:
        seconds = time_budget.study_training(ctx.budget, ctx.policy.reserve)
        return seconds, (f"{ctx.budget:.0f} s less {ctx.policy.reserve:.0%} for the study's tuning: the study "
                         f"shares it between its {sizing.folds * (ctx.rounds + 1)} fold runs"
                         + (" (2 rounds)" if ctx.rounds else "") + (" and its final model" if sizing.final else "")
                         + f", each fold's set-up, self-tuning, report and out-of-fold prediction included (about "
                           f"{sizing.per_fold / (ctx.rounds + 1):.0f} s of training each)" + estimate)
    why = (f"{ctx.budget:.0f} s less the run's estimated set-up, self-tuning and report: the training time of the "
           "single run")
    if whole + part < ctx.run_epochs:
        dropped = ctx.run_epochs - whole
        why += (f", ending after epoch {whole}: the {sizing.per_fold:.0f} s left would cut epoch {whole + 1} to "
                f"{dropped:.0%} of its batches (under {share:.0%}), not worth its validation")
        return whole * epoch, why + estimate
    return sizing.per_fold, why + estimate


# ----------------------------------------------------------------------------- the rules, in the file's order


@rule("name")
def _name(ctx: PlanContext) -> tuple[str, None]:
    return ctx.name, None


@rule("seed")
def _seed(ctx: PlanContext) -> tuple[int, None]:
    return ctx.seed, None


@rule("device")
def _device(ctx: PlanContext) -> tuple[str, str]:
    return ctx.target.device, f"training device ({ctx.target.caps.name})"


@rule("amp")
def _amp(ctx: PlanContext) -> tuple[str, str]:
    amp = choose_amp(ctx.target.caps)
    return amp, f"{amp}: " + {"bf16": "the CUDA device computes in bfloat16",
                              "fp16": "the CUDA device lacks bfloat16: float16 with loss scaling",
                              "off": "float32 on CPU"}[amp]


@rule("classes", "class_names")
def _classes(ctx: PlanContext) -> tuple[tuple[int, list[str]], str]:
    fp = ctx.fp
    return (len(fp.classes), fp.class_names), ("classes found in the labels: "
                                               + ", ".join(f"{c.name} ({c.images} images)" for c in fp.classes))


@rule("arch")
def _arch(ctx: PlanContext) -> tuple[dict, str]:
    return ctx.sizing.arch, ctx.sizing.arch_reason


@rule("data_loader.type", "data_loader.args.data_dir")
def _data_loader(ctx: PlanContext) -> tuple[tuple[str, str], None]:
    return ("SteelDataLoader", str(Path(ctx.fp.data_dir).resolve())), None


LAYOUT_KEYS = ("format", "images", "csv", "masks")


@rule(*(f"data_loader.args.{key}" for key in LAYOUT_KEYS))
def _layout(ctx: PlanContext) -> tuple[tuple, None]:
    """Where the labels are: the CSV of ``kaggle``, the masks of ``mask_folder``, both for another source
    (it reads the fields it needs)."""
    layout = ctx.fp.layout
    unused = {"kaggle": "masks", "mask_folder": "csv"}.get(layout["format"])
    return tuple(UNSET if key == unused else layout[key] for key in LAYOUT_KEYS), None


@rule("data_loader.args.batch_size")
def _batch(ctx: PlanContext) -> tuple[int, str]:
    return ctx.sizing.batch, ctx.sizing.batch_reason


@rule("data_loader.args.valid_batch_size")
def _valid_batch(ctx: PlanContext) -> tuple[int, str]:
    fp = ctx.fp
    pixels = ctx.sizing.batch * ctx.crop[0] * ctx.crop[1]
    return max(1, pixels // (fp.heights[2] * fp.widths[2])), (
        f"validation sees whole images: about as many pixels as a training batch ({fp.heights[2]}x{fp.widths[2]} "
        "at most)")


@rule("data_loader.args.folds", "data_loader.args.validation_split")
def _split(ctx: PlanContext) -> tuple[tuple, str]:
    folds = ctx.sizing.folds
    value = (folds, UNSET) if folds > 1 else (UNSET, validation_share(1, ctx.policy))
    return value, ctx.sizing.folds_reason


@rule("data_loader.args.num_workers")
def _workers(ctx: PlanContext) -> tuple[int, str]:
    return loader_workers(ctx.kind), ("every CPU core but two loads images while the GPU trains"
                                      if ctx.kind == "cuda" else "half the CPU cores load images, the rest train")


@rule("data_loader.args.sampler")
def _sampler(ctx: PlanContext) -> tuple[dict | None, str]:
    return plan_sampler(ctx.fp, ctx.sizing.batch, ctx.policy)


@rule("augmentation.type")
def _augmentation(ctx: PlanContext) -> tuple[str, str]:
    return plan_augmentation(ctx.fp, ctx.crop, ctx.policy)


@rule("augmentation.args.height", "augmentation.args.width")
def _crop(ctx: PlanContext) -> tuple[tuple[int, int], str]:
    return ctx.crop_and_reason


@rule("augmentation.args.mean", "augmentation.args.std")
def _normalisation(ctx: PlanContext) -> tuple[tuple[float, float], str]:
    fp = ctx.fp
    return ((round(fp.grey_mean, 4), round(max(fp.grey_std, 1e-3), 4)),
            f"grey mean and std of the images ({fp.grey_mean:.4f}, {fp.grey_std:.4f})")


@rule("loss")
def _loss(ctx: PlanContext) -> tuple[dict, str]:
    return ({"type": "BCEDiceLoss", "args": {"bce_weight": 0.6, "dice_weight": 0.4}},
            "BCE + Dice (0.6/0.4, the write-up's): the Dice term keeps pulling towards small defects")


@rule("metrics")
def _metrics(ctx: PlanContext) -> tuple[list[dict], str]:
    priors, why = plan_min_pixels(ctx.fp)
    return [{"type": metric, "args": {"min_pixels": list(priors)}} for metric in ("Dice", "DefectDice", "Presence")], why


@rule("optimizer")
def _optimizer(ctx: PlanContext) -> tuple[dict, str]:
    return ({"type": "RAdam", "encoder": {"lr": 1.0e-3, "weight_decay": 3.0e-5},
             "decoder": {"lr": 3.0e-3, "weight_decay": 3.0e-4}},
            "RAdam with the decoder at 3x the encoder's rate, as the shipped experiments without pretrained weights")


@rule("lr_scheduler")
def _schedule(ctx: PlanContext) -> tuple[dict, str]:
    return plan_schedule(ctx.epochs, ctx.epochs * epoch_steps(ctx.fp, ctx.sizing.folds, ctx.sizing.batch, ctx.policy),
                         ctx.policy)


@rule("trainer.epochs")
def _epochs(ctx: PlanContext) -> tuple[int, str]:
    return 2 * ctx.epochs + 2, f"an upper bound, twice the {ctx.epochs} estimated: the time budget ends training"


@rule("trainer.time_budget")
def _time_budget(ctx: PlanContext) -> tuple[str, str]:
    seconds, why = plan_run_budget(ctx)
    return f"{max(1, int(seconds))}s", why


@rule("trainer.save_period")
def _save_period(ctx: PlanContext) -> tuple[int, str]:
    return max(1, ctx.epochs // 4), "about four checkpoints over the estimated epochs, for resuming"


@rule("trainer.monitor")
def _monitor(ctx: PlanContext) -> tuple[str, str]:
    return plan_monitor(ctx.fp, ctx.policy)


@rule("trainer.tensorboard")
def _tensorboard(ctx: PlanContext) -> tuple[bool, None]:
    return True, None


@rule("final_model")
def _final_model(ctx: PlanContext) -> tuple[Any, str | None]:
    if ctx.sizing.folds == 1:
        return UNSET, None
    if ctx.rounds:
        return False, ("the chosen round's fold ensemble predicts: a final model trains on the labelled images "
                       "alone, which pseudo-label rounds add to")
    return plan_final_model(ctx.sizing, ctx.final_epochs, ctx.fp.images, ctx.policy)


@rule("pseudo")
def _pseudo(ctx: PlanContext) -> tuple[Any, str | None]:
    if ctx.unlabelled is None:
        return UNSET, None
    return ({"images": str(Path(ctx.unlabelled).resolve()), "rounds": 1},
            "unlabelled images given: one pseudo-label round on them")
