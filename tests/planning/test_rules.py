"""The planning rules: registered in order, one function and one line each; the sampler that sees every class,
the run that never ends on a useless cut epoch, the crop widened along the right axis."""

import dataclasses

import numpy as np
import pytest
from plan_datasets import EPOCHS_ONLY, fake_fp, fake_target

from sever.experiment import prepare_config
from sever.planning.fingerprint import Fingerprint
from sever.planning.plan import PlanError, make_plan
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.planning.rules import PLAN_RULES, PlanContext, balance_groups, plan_crop, plan_sampler
from sever.planning.sizing import epoch_estimate, fold_overhead
from sever.registries import SAMPLERS


# ----------------------------------------------------------------------------- the registry


def test_a_rule_registered_with_one_line_changes_the_plan_and_its_reason(tmp_path):
    fp = fake_fp(tmp_path)
    before = make_plan(fp, fake_target(), 3600, "fake")
    assert "ema_decay" not in before.config["trainer"]

    @PLAN_RULES.rule("trainer.ema_decay")
    def plan_ema(ctx: PlanContext):
        return 0.999 if ctx.epochs >= 4 else None, f"an EMA of the weights over the {ctx.epochs} estimated epochs"

    @PLAN_RULES.rule("loss")
    def plan_loss(ctx: PlanContext):
        return {"type": "BCEDiceLoss", "args": {"bce_weight": 0.5, "dice_weight": 0.5}}, "equal BCE and Dice"

    try:
        after = make_plan(fp, fake_target(), 3600, "fake")
    finally:
        PLAN_RULES.remove(plan_ema)
        PLAN_RULES.remove(plan_loss)
    assert after.config["trainer"]["ema_decay"] == 0.999
    assert after.reasons["trainer.ema_decay"].startswith("an EMA of the weights over the")
    assert after.config["loss"]["args"] == {"bce_weight": 0.5, "dice_weight": 0.5}  # a later rule replaces a value
    assert after.reasons["loss"] == "equal BCE and Dice"
    lines = after.text().splitlines()
    at = lines.index("  ema_decay: 0.999")
    assert lines[at - 1].startswith("  # an EMA of the weights")
    assert list(after.config) == list(before.config)  # the file's order is the rules' order
    assert prepare_config(after.config)["trainer"]["ema_decay"] == 0.999
    assert "ema_decay" not in make_plan(fp, fake_target(), 3600, "fake").config["trainer"]  # removed again


def test_the_policy_is_data_a_plan_follows(tmp_path):
    fp = fake_fp(tmp_path, images=3000, counts=(900, 800, 700, 600))
    assert make_plan(fp, fake_target(), 4 * 3600, "fake").folds == 5
    fewer = make_plan(fp, fake_target(), 4 * 3600, "fake", policy=dataclasses.replace(DEFAULT_POLICY, max_folds=3))
    assert fewer.folds == 3 and fewer.config["data_loader"]["args"]["folds"] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICY.max_folds = 2


# ----------------------------------------------------------------------------- a sampler that sees every class


def real_sampler(fp: Fingerprint, spec: dict, batch: int):
    """The sampler ``spec`` builds over groups of :func:`balance_groups`' sizes, as training builds it."""
    sizes = [size for _, size in balance_groups(fp)]
    starts = np.cumsum([0] + sizes)
    groups = [np.arange(start, start + size) for start, size in zip(starts, sizes)]
    sampler = SAMPLERS.build(spec, "data_loader.args.sampler", groups=groups, batch_size=batch, seed=0)
    return sampler, groups


def groups_seen(sampler, groups) -> set[int]:
    sampler.set_epoch(0)
    drawn = np.concatenate([np.asarray(batch) for batch in sampler])
    return {g for g, group in enumerate(groups) if np.isin(group, drawn).any()}


def test_a_batch_smaller_than_the_balancing_groups_gets_a_sampler_that_still_sees_every_class(tmp_path):
    fp = fake_fp(tmp_path)  # 4 classes and defect-free images: 5 groups; class4 is rare (2 of 40)
    assert len(balance_groups(fp)) == 5
    fixed = {"type": "WeightedFixedBatchSampler", "args": {"alpha": 0.5}}
    starved, _ = real_sampler(fp, fixed, 4)
    assert (starved.counts == 0).any()  # what the old plan did: a fixed share of a batch of 4 misses a group
    spec, why = plan_sampler(fp, 4)
    assert spec == {"type": "WeightedRandomBatchSampler", "args": {"alpha": 0.5}}
    assert "a batch of 4 has no fixed place for" in why and "every class is trained on" in why
    sampler, groups = real_sampler(fp, spec, 4)
    assert groups_seen(sampler, groups) == set(range(5))


def test_a_batch_that_holds_every_group_keeps_fixed_shares(tmp_path):
    fp = fake_fp(tmp_path)
    spec, why = plan_sampler(fp, 16)
    assert spec["type"] == "WeightedFixedBatchSampler" and "every batch of 16 holds each of the 5 groups" in why
    sampler, _ = real_sampler(fp, spec, 16)
    assert (sampler.counts > 0).all()
    assert plan_sampler(fake_fp(tmp_path, counts=(40, 30, 20, 20)), 4)[0] is None  # no rare class: shuffling


def test_the_plan_switches_the_sampler_when_a_short_budget_lowers_the_batch(tmp_path):
    fp = fake_fp(tmp_path, images=400, counts=(160, 120, 80, 8))
    short = make_plan(fp, fake_target(step=0.4, per_image=True), 120, "fake", policy=EPOCHS_ONLY)
    long = make_plan(fp, fake_target(step=0.4, per_image=True), 3600, "fake", policy=EPOCHS_ONLY)
    assert short.config["data_loader"]["args"]["batch_size"] == 4
    assert short.config["data_loader"]["args"]["sampler"]["type"] == "WeightedRandomBatchSampler"
    assert "no fixed place" in short.reasons["data_loader.args.sampler"]
    assert long.config["data_loader"]["args"]["batch_size"] == 8  # the CPU rule's batch of 256x256 crops
    assert long.config["data_loader"]["args"]["sampler"]["type"] == "WeightedFixedBatchSampler"


# ----------------------------------------------------------------------------- no useless cut epoch


def single_run_budget(fp, target, policy, epochs: float) -> tuple[float, float]:
    """A budget whose single run holds ``epochs`` epochs, and one epoch's seconds."""
    ctx = PlanContext(fp, target, 3600, "probe", policy=policy)
    sizing = ctx.sizing
    epoch = epoch_estimate(fp, 1, sizing.batch, ctx.crop, sizing.step, policy)
    overhead = fold_overhead(fp, 1, sizing.batch, ctx.crop, sizing.step, policy)
    return overhead + epochs * epoch, epoch


def test_a_single_run_ends_before_an_epoch_it_could_train_only_a_sliver_of(tmp_path):
    fp = fake_fp(tmp_path)
    policy = dataclasses.replace(EPOCHS_ONLY, min_updates=0)  # keep the CPU batch: the epoch stays the same
    target = fake_target(step=1.0)
    budget, epoch = single_run_budget(fp, target, policy, 3.1)
    cut = make_plan(fp, target, budget, "fake", policy=policy)
    assert cut.folds == 1
    assert cut.config["trainer"]["time_budget"] == f"{int(3 * epoch)}s"
    assert "ending after epoch 3: the" in cut.reasons["trainer.time_budget"]
    assert "would cut epoch 4 to 10% of its batches (under 25%)" in cut.reasons["trainer.time_budget"]
    budget, epoch = single_run_budget(fp, target, policy, 3.5)
    kept = make_plan(fp, target, budget, "fake", policy=policy)
    assert kept.folds == 1 and kept.config["trainer"]["time_budget"] == f"{int(3.5 * epoch)}s"
    assert "ending after" not in kept.reasons["trainer.time_budget"]


def test_a_study_whose_fold_runs_cannot_train_one_epoch_is_refused_naming_the_time_needed(tmp_path):
    fp = fake_fp(tmp_path)
    target = fake_target(step=1.0)
    policy = dataclasses.replace(EPOCHS_ONLY, min_updates=0)  # keep the CPU batch: the epoch stays the same
    ctx = PlanContext(fp, target, 3600, "probe", unlabelled=str(tmp_path), policy=policy)
    sizing = ctx.sizing
    epoch = epoch_estimate(fp, 2, sizing.batch, ctx.crop, sizing.step, policy)
    overhead = fold_overhead(fp, 2, sizing.batch, ctx.crop, sizing.step, policy)
    budget = 2 * (overhead + 1.5 * epoch) / (1 - policy.reserve)  # 1.5 epochs a fold: 0.75 of one a round
    with pytest.raises(PlanError, match=r"each of the study's 4 fold runs would train 75% of one epoch") as caught:
        make_plan(fp, target, budget, "fake", unlabelled=str(tmp_path), policy=policy)
    needed = int(str(caught.value).rsplit("--time ", 1)[1].rstrip("s"))
    assert make_plan(fp, target, needed, "fake", unlabelled=str(tmp_path), policy=policy).folds == 2


# ----------------------------------------------------------------------------- the crop


def test_the_crop_is_widened_along_the_axis_of_the_defects_extent(tmp_path):
    """Tall narrow defects widen the crop's height, wide flat ones its width (never the other side)."""
    sides = {"heights": [96, 96, 256], "widths": [200, 200, 256]}  # median crop 96x192, images up to 256
    tall = fake_fp(tmp_path, extent=(150, 20), **sides)
    crop, why = plan_crop(tall, "cpu")
    assert crop == (160, 192) and "widened to the 95th-percentile defect height 150" in why
    wide = fake_fp(tmp_path, extent=(20, 240), **sides)
    crop, why = plan_crop(wide, "cpu")
    assert crop == (96, 256) and "widened to the 95th-percentile defect width 240" in why
    assert plan_crop(fake_fp(tmp_path, extent=(20, 20), **sides), "cpu")[0] == (96, 192)


def test_the_crop_is_not_widened_past_the_device_cap(tmp_path):
    policy = PlanPolicy(max_crop_cpu=128)
    crop, why = plan_crop(fake_fp(tmp_path, extent=(150, 20), heights=[96, 96, 256], widths=[200, 200, 256]),
                          "cpu", policy)
    assert crop == (96, 128) and "capped at 128 on cpu" in why and "widened" not in why
