"""The learning rule's need: the training crops a dataset is expected to need before its validation defect Dice
leaves the floor, from fake fingerprints."""

import dataclasses

import pytest
from learning_datasets import demo_like, rare_small, stats
from plan_datasets import fake_fp

from sever.planning.fingerprint import ClassStats
from sever.planning.need import crops_needed, steps_needed
from sever.planning.policy import DEFAULT_POLICY


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


def test_the_steps_needed_are_the_crops_over_the_batch_rounded_up(tmp_path):
    fp = rare_small(tmp_path)
    crops = crops_needed(fp, (256, 256))[0]
    assert steps_needed(fp, (256, 256), 8) == -(-crops // 8) and steps_needed(fp, (256, 256), 16) < steps_needed(
        fp, (256, 256), 8)
    # a smaller crop: the same defects cover more of it, so fewer crops are needed
    assert crops_needed(fp, (128, 128))[0] == pytest.approx(crops / 4)
