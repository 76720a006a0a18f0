"""Validation metrics an empty predictor cannot win: Dice over defect pairs, presence precision/recall."""

import pytest
import torch

from sever.model.metric import DefectDice, Dice, Presence
from sever.registries import METRICS


def mostly_empty(images: int = 20, classes: int = 4, size: int = 16) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 masks in which two images hold one defect each (class 0 and class 2)."""
    target = torch.zeros(images, classes, size, size, dtype=torch.uint8)
    target[0, 0, 2:8, 2:8] = 1
    target[5, 2, 4:12, 1:5] = 1
    return target


def scores(metric, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    metric.update(logits, target)
    return metric.compute()


EMPTY_LOGITS = -10.0  # sigmoid far below every threshold


def test_empty_predictor_wins_dice_but_scores_zero_on_defects_and_presence():
    target = mostly_empty()
    logits = torch.full(target.shape, EMPTY_LOGITS)
    assert scores(Dice(), logits, target)["dice_mean"] == pytest.approx(78 / 80)
    defect = scores(DefectDice(), logits, target)
    presence = scores(Presence(), logits, target)
    assert defect["dice_defect_mean"] == 0.0
    assert defect["dice_defect_0"] == defect["dice_defect_2"] == 0.0
    assert defect["dice_empty_mean"] == 1.0 and defect["dice_balanced"] == 0.5
    assert presence["presence_recall_0"] == presence["presence_recall_2"] == 0.0
    # classes 1 and 3 never occur: nothing could be missed there
    assert presence["presence_recall_1"] == presence["presence_recall_3"] == 1.0
    assert presence["presence_recall_mean"] == pytest.approx(0.5)


def test_defect_dice_scores_only_the_defect_pairs():
    target = mostly_empty()
    pred = target.clone()
    pred[5, 2, 4:12, 1:3] = 0  # half of the second defect found: Dice 2*16/(16+32) = 2/3
    pred[9, 1, 0:4, 0:4] = 1  # a false positive on an empty pair: no effect on the defect Dice
    defect = scores(DefectDice(), 10.0 * (2 * pred.float() - 1), target)
    assert defect["dice_defect_0"] == pytest.approx(1.0)
    assert defect["dice_defect_2"] == pytest.approx(2 / 3)
    assert defect["dice_defect_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert defect["dice_empty_mean"] == pytest.approx(77 / 78)  # one of the 78 empty pairs predicted
    assert defect["dice_balanced"] == pytest.approx(((1 + 2 / 3) / 2 + 77 / 78) / 2)
    presence = scores(Presence(), 10.0 * (2 * pred.float() - 1), target)
    assert presence["presence_precision_1"] == 0.0  # its only predicted image has no class 1
    assert presence["presence_recall_mean"] == 1.0


def test_flooding_every_pair_does_not_win_the_balanced_dice_either():
    target = mostly_empty()
    defect = scores(DefectDice(), torch.full(target.shape, 10.0), target)
    assert defect["dice_empty_mean"] == 0.0
    assert defect["dice_balanced"] < 0.5 < scores(DefectDice(), 10.0 * (2 * target.float() - 1), target)["dice_balanced"]


def test_min_pixels_and_threshold_apply_to_presence_and_defect_dice():
    target = mostly_empty()
    logits = torch.where(target.bool(), 1.0, -10.0)  # sigmoid(1) = 0.73
    assert scores(Presence(threshold=0.5), logits, target)["presence_recall_mean"] == 1.0
    assert scores(Presence(threshold=0.8), logits, target)["presence_recall_0"] == 0.0
    # the class-0 defect covers 36 pixels, the class-2 one 32: a minimum of 34 wipes only the second
    wiped = scores(DefectDice(min_pixels=34), logits, target)
    assert wiped["dice_defect_0"] == 1.0 and wiped["dice_defect_2"] == 0.0
    assert scores(Presence(min_pixels=34), logits, target)["presence_recall_2"] == 0.0


def test_registered_and_reduced_like_the_other_metrics():
    target = mostly_empty()
    logits = torch.where(target.bool(), 10.0, -10.0)
    halves = [DefectDice(), DefectDice()]
    halves[0].update(logits[:10], target[:10])
    halves[1].update(logits[10:], target[10:])
    other = iter([getattr(halves[1], name) for name in DefectDice.state_names])
    halves[0].reduce_(lambda tensor: tensor.add_(next(other)))
    assert halves[0].compute() == scores(DefectDice(), logits, target)
    assert isinstance(METRICS.build({"type": "DefectDice", "args": {"min_pixels": 10}}, "metrics.0"), DefectDice)
    assert isinstance(METRICS.build("Presence", "metrics.1"), Presence)


@pytest.mark.parametrize("metric_class", [DefectDice, Presence])
def test_batches_of_different_sizes_score_as_one_pass(metric_class):
    """A validation split whose last batch is smaller: the accumulated state scores as all the images at once."""
    target = mostly_empty(images=7)
    logits = torch.where(target.bool(), 5.0, EMPTY_LOGITS)
    logits[3, 1, :4, :4] = 5.0  # a false positive on an empty pair
    logits[5, 2, 4:8, 1:5] = EMPTY_LOGITS  # half of a defect missed
    whole = scores(metric_class(), logits, target)
    batched = metric_class()
    for part in (slice(0, 3), slice(3, 6), slice(6, 7)):  # 3 images, 3, then 1: never as many as the 4 classes
        batched.update(logits[part], target[part])
    assert batched.compute() == pytest.approx(whole)
