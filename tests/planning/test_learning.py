"""The learning rule: the steps a dataset is expected to need against the steps the budget gives, printed
before training, with the budget that would reach them; and the plan spending its budget to reach them first
(fewer folds, a smaller crop). Fake fingerprints and fake step probes."""

import dataclasses
import re

import pytest
from learning_datasets import demo_like, rare_small
from plan_datasets import CPU, EPOCHS_ONLY, fake_target

from sever.planning.learning import learning_estimate
from sever.planning.plan import make_plan
from sever.planning.policy import DEFAULT_POLICY
from sever.planning.probe import Target

TODAY = EPOCHS_ONLY  # today's planner: for epochs only


def test_issue_27s_dataset_planned_for_epochs_is_warned_with_the_budget_that_reaches_the_need(tmp_path):
    """Today's planner on the issue's dataset and slow CPU: its 2 folds fall short, and the warning says so."""
    fp = rare_small(tmp_path)
    plan = make_plan(fp, fake_target(step=1.2), 20 * 60, "rare", policy=TODAY)
    learning = plan.learning
    assert plan.folds == 2 and 150 < learning.given < 400  # about the 272 steps the issue's plan gave
    assert learning.short and learning.needed == pytest.approx(771, abs=5)
    warning = learning.note()
    assert warning.startswith("WARNING: this budget is too short to learn this data")
    assert "class1" in warning and f"a device about {learning.needed / learning.given:.1f}x faster" in warning
    minutes = re.search(r"--time (\d+)h(\d+)m would give each of its (\d+) folds", warning)
    seconds = (int(minutes.group(1)) * 60 + int(minutes.group(2))) * 60
    # the named budget really plans runs of at least the needed steps; 10% less does not
    assert make_plan(fp, fake_target(step=1.2), seconds, "rare", policy=TODAY).learning.given >= learning.needed
    assert make_plan(fp, fake_target(step=1.2), seconds * 0.9, "rare", policy=TODAY).learning.short
    assert warning.splitlines()[0] in plan.text().replace("\n# ", " ")  # the experiment file carries it


def test_a_budget_that_reaches_the_need_says_so_without_a_warning(tmp_path):
    plan = make_plan(demo_like(tmp_path), fake_target(step=0.05), 20 * 60, "demo")
    assert not plan.learning.short and plan.learning.given > plan.learning.needed
    assert plan.learning.note().startswith("learning: the budget gives each run about")
    assert "WARNING" not in plan.text()


def test_pseudo_label_rounds_share_a_folds_steps(tmp_path):
    fp = rare_small(tmp_path)
    plain = learning_estimate(fp, 3600, 8, (256, 256), 0.5, run_epochs=10, folds=2, policy=TODAY)
    rounds = learning_estimate(fp, 3600, 8, (256, 256), 0.5, run_epochs=5, folds=2, rounds=1, policy=TODAY)
    assert rounds.given == pytest.approx(plain.given / 2)
    assert rounds.reaching[0] > plain.reaching[0]


def pixel_target(seconds_per_pixel: float = 2e-6):
    """A CPU whose steps take ``seconds_per_pixel`` per crop pixel: fewer pixels per step, cheaper steps."""
    return Target("cpu", CPU, lambda arch, crop, batch: seconds_per_pixel * batch * crop[0] * crop[1], None, None)


def test_folds_give_way_to_one_run_that_reaches_the_need(tmp_path):
    """The issue's dataset: 2 folds of about 220 steps each learn nothing; one run of about 900 reaches the 771."""
    fp = rare_small(tmp_path)
    plan = make_plan(fp, fake_target(step=1.2), 20 * 60, "rare")
    assert plan.folds == 1 and plan.learning.given >= plan.learning.needed and not plan.learning.short
    reason = plan.reasons["data_loader.args.validation_split"]
    assert "under the 771 this data is expected to need before it learns" in reason
    assert plan.config["augmentation"]["args"]["height"] == 256  # one run reaches the need at the image's crop


def test_folds_are_reduced_only_as_far_as_the_need_asks_and_come_back_with_time(tmp_path):
    fp = rare_small(tmp_path)
    planned = {minutes: (make_plan(fp, fake_target(step=1.2), minutes * 60, "rare"),
                         make_plan(fp, fake_target(step=1.2), minutes * 60, "rare", policy=TODAY))
               for minutes in (20, 60, 90, 180)}
    for plan, today in planned.values():
        assert plan.folds <= today.folds
        if plan.folds > 1:  # a study is planned only when each of its folds reaches the need
            assert plan.learning.given >= plan.learning.needed
    assert [plan.folds for plan, _ in planned.values()] == [1, 2, 4, 5]  # between one run and today's 5 folds
    assert planned[180][0].text() == planned[180][1].text()  # a budget that suffices plans as before


def test_a_smaller_crop_when_even_one_run_falls_short(tmp_path):
    """A slow CPU whose steps cost per pixel: at 256x256 one run takes about 500 of the 771 steps needed; at
    160x160 its steps are cheaper and a defect covers more of a crop, so it reaches the need."""
    fp = rare_small(tmp_path)
    plan = make_plan(fp, pixel_target(), 10 * 60, "rare")
    today = make_plan(fp, pixel_target(), 10 * 60, "rare", policy=TODAY)
    assert (today.config["augmentation"]["args"]["height"], today.learning.short) == (256, True)
    args = plan.config["augmentation"]["args"]
    assert (args["height"], args["width"]) == (160, 160) and not plan.learning.short
    assert plan.reasons["augmentation.args.height"].startswith("crop 160x160, shrunk from 256x256, where a single "
                                                               "run would take about")


def test_a_crop_is_never_shrunk_below_the_floor_nor_the_defects_extent(tmp_path):
    fp = rare_small(tmp_path, share=0.01, area=30.0)  # far too hard for any budget here: the smallest crop allowed
    plan = make_plan(fp, pixel_target(), 10 * 60, "rare")
    assert plan.config["augmentation"]["args"]["height"] == DEFAULT_POLICY.min_learning_crop
    for c in fp.classes:
        c.extent = [150, 40]  # defects 150 pixels high: a crop must hold them
    plan = make_plan(fp, pixel_target(), 10 * 60, "rare")
    assert plan.config["augmentation"]["args"]["height"] == 160 and plan.config["augmentation"]["args"]["width"] == 128


def planned_epochs(plan) -> float:
    """The epochs a final model would train, as the plan's final_model reason states them."""
    return float(re.search(r"about ([\d.]+) epochs", plan.reasons["final_model"]).group(1))


def test_a_final_model_is_planned_from_the_epochs_it_would_train(tmp_path):
    """The issue's dataset at 180 min: a final model sharing the budget would train about E epochs over its 1000
    images. Under PlanPolicy.final_model_epochs the fold ensemble predicts; from it on, the final model does, the
    folds re-planned around it so that every run still reaches the learning need."""
    fp = rare_small(tmp_path)
    default = make_plan(fp, fake_target(step=1.2), 180 * 60, "rare")
    epochs = planned_epochs(default)
    assert default.folds == 5 and default.config["final_model"] is False and 1 < epochs < 16
    assert "under 16: a run that sees its images a few times is limited by its steps" in default.reasons["final_model"]
    below = dataclasses.replace(DEFAULT_POLICY, final_model_epochs=epochs - 0.1)
    with_final = make_plan(fp, fake_target(step=1.2), 180 * 60, "rare", policy=below)
    assert with_final.config["final_model"] is True and planned_epochs(with_final) == epochs
    assert 2 <= with_final.folds <= 5 and with_final.learning.given >= with_final.learning.needed
    assert f"a final model on all 1000 labelled images, trained after the {with_final.folds} folds" in \
        with_final.reasons["final_model"]
    assert "fold runs and its final model" in with_final.reasons["trainer.time_budget"]
    above = dataclasses.replace(DEFAULT_POLICY, final_model_epochs=epochs + 0.1)
    assert make_plan(fp, fake_target(step=1.2), 180 * 60, "rare", policy=above).config == default.config


def test_no_final_model_where_it_would_leave_the_folds_short_nor_with_pseudo_labels(tmp_path):
    fp = rare_small(tmp_path)
    anywhere = dataclasses.replace(DEFAULT_POLICY, final_model_epochs=0.0)
    short = make_plan(fp, fake_target(step=1.2), 60 * 60, "rare", policy=anywhere)  # 2 folds just reach the need
    assert short.folds == 2 and short.config["final_model"] is False
    assert "would leave the folds short of the epochs or the learning steps" in short.reasons["final_model"]
    rounds = make_plan(fp, fake_target(step=1.2), 180 * 60, "rare", unlabelled=str(tmp_path), policy=anywhere)
    assert rounds.config["final_model"] is False and "pseudo-label rounds" in rounds.reasons["final_model"]
    single = make_plan(fp, fake_target(step=1.2), 20 * 60, "rare", policy=anywhere)
    assert single.folds == 1 and "final_model" not in single.config
