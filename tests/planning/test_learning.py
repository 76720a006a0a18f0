"""The learning rule: the steps a dataset is expected to need against the steps the budget gives, printed
before training, with the budget that would reach them; fake fingerprints and fake step probes."""

import dataclasses
import re

import pytest
from plan_datasets import fake_fp, fake_target

from sever.planning.fingerprint import ClassStats
from sever.planning.learning import crops_needed, learning_estimate
from sever.planning.plan import make_plan
from sever.planning.policy import DEFAULT_POLICY


def stats(name, images, total, area, extent=(30, 30)):
    return ClassStats(name, images, images / total, [area / 2, area, area * 3], [area / 3, area / 2, area],
                      list(extent))


def rare_small(tmp_path, images=1000, share=0.08, area=300.0, classes=5):
    """Like issue 27's dataset: images of 300x300, ``classes`` classes each in ``share`` of them, defects of
    ``area`` pixels per image."""
    count = round(share * images)
    return fake_fp(tmp_path, images=images, side=(300, 300), empty=0.6,
                   classes=[stats(f"class{k + 1}", count, images, area) for k in range(classes)])


def demo_like(tmp_path):
    """The reference: the demo data's rarest class (24 of 256 images of 256x1600, 1,960 pixels each)."""
    return fake_fp(tmp_path, images=256, side=(256, 1600), empty=0.34,
                   classes=[stats("class2", 24, 256, 1960.0), stats("class3", 98, 256, 3818.0)])


def test_the_reference_data_needs_the_reference_crops_and_the_hardest_class_sets_the_need(tmp_path):
    crops, hardest = crops_needed(demo_like(tmp_path), (256, 256))
    assert hardest.name == "class2" and crops == pytest.approx(DEFAULT_POLICY.learn_crops, rel=0.01)
    common = fake_fp(tmp_path, images=256, side=(256, 1600), classes=[stats("class3", 98, 256, 3818.0)])
    assert crops_needed(common, (256, 256))[0] == DEFAULT_POLICY.learn_crops  # never fewer than the reference


def test_rarer_classes_and_smaller_defects_need_proportionally_more_crops(tmp_path):
    base, _ = crops_needed(rare_small(tmp_path, share=0.094, area=0.03 * 65536), (256, 256))
    assert base == pytest.approx(DEFAULT_POLICY.learn_crops, rel=0.02)
    assert crops_needed(rare_small(tmp_path, share=0.047, area=0.03 * 65536), (256, 256))[0] == pytest.approx(
        2 * base, rel=0.05)
    assert crops_needed(rare_small(tmp_path, share=0.094, area=0.0075 * 65536), (256, 256))[0] == pytest.approx(
        4 * base, rel=0.02)
    # a class in no image is not what sets the need (it cannot be learned from this data at all)
    fp = rare_small(tmp_path, share=0.094, area=0.03 * 65536)
    fp.classes.append(ClassStats("absent", 0, 0.0, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0, 0]))
    assert crops_needed(fp, (256, 256))[1].name != "absent"


def test_a_crop_larger_than_the_images_is_measured_against_the_image(tmp_path):
    small_images = fake_fp(tmp_path, images=100, side=(64, 64), classes=[stats("class1", 50, 100, 123.0)])
    # 123 of a 64x64 image's 4,096 pixels is 3%: no harder than the reference, whatever the crop
    assert crops_needed(small_images, (256, 256))[0] == pytest.approx(DEFAULT_POLICY.learn_crops)


def test_the_policy_fields_are_the_rule(tmp_path):
    fp = rare_small(tmp_path)
    policy = dataclasses.replace(DEFAULT_POLICY, learn_crops=1600.0, learn_size_power=0.5)
    plain, _ = crops_needed(fp, (256, 256))
    changed, _ = crops_needed(fp, (256, 256), policy)
    size = DEFAULT_POLICY.learn_cover / (300 / 65536)
    assert plain == pytest.approx(800 * size * 0.094 / 0.08)
    assert changed == pytest.approx(1600 * size ** 0.5 * 0.094 / 0.08)


def test_issue_27s_dataset_on_its_slow_cpu_is_warned_with_the_budget_that_reaches_the_need(tmp_path):
    fp = rare_small(tmp_path)
    plan = make_plan(fp, fake_target(step=1.2), 20 * 60, "rare")
    learning = plan.learning
    assert plan.folds == 2 and 150 < learning.given < 400  # about the 272 steps the issue's plan gave
    assert learning.short and learning.needed == pytest.approx(771, abs=5)
    warning = learning.note()
    assert warning.startswith("WARNING: this budget is too short to learn this data")
    assert "class1" in warning and f"a device about {learning.needed / learning.given:.1f}x faster" in warning
    minutes = re.search(r"--time (\d+)h(\d+)m would give each of its (\d+) folds", warning)
    seconds = (int(minutes.group(1)) * 60 + int(minutes.group(2))) * 60
    # the named budget really plans runs of at least the needed steps; 10% less does not
    assert make_plan(fp, fake_target(step=1.2), seconds, "rare").learning.given >= learning.needed
    assert make_plan(fp, fake_target(step=1.2), seconds * 0.9, "rare").learning.short
    assert warning.splitlines()[0] in plan.text().replace("\n# ", " ")  # the experiment file carries it


def test_a_budget_that_reaches_the_need_says_so_without_a_warning(tmp_path):
    plan = make_plan(demo_like(tmp_path), fake_target(step=0.05), 20 * 60, "demo")
    assert not plan.learning.short and plan.learning.given > plan.learning.needed
    assert plan.learning.note().startswith("learning: the budget gives each run about")
    assert "WARNING" not in plan.text()


def test_pseudo_label_rounds_share_a_folds_steps(tmp_path):
    fp = rare_small(tmp_path)
    plain = learning_estimate(fp, 3600, 8, (256, 256), 0.5, run_epochs=10, folds=2)
    rounds = learning_estimate(fp, 3600, 8, (256, 256), 0.5, run_epochs=5, folds=2, rounds=1)
    assert rounds.given == pytest.approx(plain.given / 2)
    assert rounds.reaching[0] > plain.reaching[0]
