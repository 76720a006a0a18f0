"""Metrics: the competition Dice core, accumulating metrics, distributed reduction, registry."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sever.exceptions import ConfigError
from sever.model.metric import (METRICS, Accuracy, DefectDice, Dice, IoU, PrecisionRecall, Presence, dice_per_image,
                                iou_per_image)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def masks(*pairs):
    """(N, C, 2, 2) uint8 masks from nested lists: images of channels of 2x2 rows."""
    return torch.tensor(pairs, dtype=torch.uint8)


EMPTY = [[0, 0], [0, 0]]
FULL = [[1, 1], [1, 1]]
# two images, two classes: (2/3, empty/empty) and (empty/non-empty, full/full)
PRED = masks([[[1, 1], [0, 0]], EMPTY], [EMPTY, FULL])
TRUE = masks([[[1, 0], [0, 0]], EMPTY], [[[0, 0], [0, 1]], FULL])


def as_logits(pred):
    """Logits whose sigmoid is far above 0.5 where ``pred`` is 1 and far below where 0."""
    return 10.0 * (2 * pred.float() - 1)


@pytest.mark.parametrize("device", DEVICES)
def test_dice_and_iou_per_image_by_hand(device):
    dice = dice_per_image(PRED.to(device), TRUE.to(device))
    iou = iou_per_image(PRED.to(device), TRUE.to(device))
    assert dice.dtype == iou.dtype == torch.float64
    assert dice.device.type == device
    # 2 * 1 / (2 + 1); both empty; one empty; identical
    torch.testing.assert_close(dice.cpu(), torch.tensor([[2 / 3, 1.0], [0.0, 1.0]], dtype=torch.float64))
    # 1 / 2; both empty; one empty; identical
    torch.testing.assert_close(iou.cpu(), torch.tensor([[0.5, 1.0], [0.0, 1.0]], dtype=torch.float64))


def test_empty_conventions():
    empty, spot = masks([EMPTY]), masks([[[0, 1], [0, 0]]])
    assert dice_per_image(empty, empty).item() == 1.0
    assert dice_per_image(spot, empty).item() == 0.0
    assert dice_per_image(empty, spot).item() == 0.0
    assert iou_per_image(empty, empty).item() == 1.0
    assert iou_per_image(empty, spot).item() == 0.0


def test_bool_uint8_float_and_numpy_inputs_agree():
    expected = dice_per_image(PRED, TRUE)
    torch.testing.assert_close(dice_per_image(PRED.bool(), TRUE.bool()), expected)
    torch.testing.assert_close(dice_per_image(PRED.float(), TRUE.float()), expected)
    torch.testing.assert_close(dice_per_image(torch.from_numpy(PRED.numpy()), torch.from_numpy(TRUE.numpy())), expected)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.bool_, (2, 3, 4, 5), elements=st.booleans()),
    arrays(np.bool_, (2, 3, 4, 5), elements=st.booleans()),
)
def test_dice_properties(pred, target):
    pred, target = torch.from_numpy(pred), torch.from_numpy(target)
    dice, iou = dice_per_image(pred, target), iou_per_image(pred, target)
    assert ((dice >= 0) & (dice <= 1)).all()
    torch.testing.assert_close(dice, dice_per_image(target, pred))
    torch.testing.assert_close(iou, dice / (2 - dice))  # IoU = D / (2 - D), empty pairs included
    assert (dice_per_image(pred, pred) == 1).all()


def test_functional_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_image(PRED, TRUE[:, :1])
    with pytest.raises(ValueError, match=r"expected masks \(N, C, H, W\)"):
        iou_per_image(torch.ones(2, 4), torch.ones(2, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_dice_and_iou_metrics_by_hand(device):
    dice, iou = Dice(), IoU()
    for metric in (dice, iou):
        metric.update(as_logits(PRED).to(device), TRUE.to(device))
    assert dice.compute() == pytest.approx({"dice_0": 1 / 3, "dice_1": 1.0, "dice_mean": 2 / 3})
    assert iou.compute() == pytest.approx({"iou_0": 0.25, "iou_1": 1.0, "iou_mean": 0.625})
    assert all(getattr(dice, name).device.type == device for name in Dice.state_names)


def test_threshold_applies_to_sigmoid_probability():
    logits, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # sigmoid(0) = 0.5 is not > 0.5
    strict, low = Dice(threshold=0.5), Dice(threshold=0.4)
    strict.update(logits, target)
    low.update(logits, target)
    assert strict.compute()["dice_mean"] == 0.0
    assert low.compute()["dice_mean"] == 1.0


def test_half_logits_give_the_same_result():
    torch.manual_seed(0)
    logits, target = 4 * torch.randn(2, 4, 16, 16), (torch.rand(2, 4, 16, 16) > 0.8).to(torch.uint8)
    full, half = Dice(), Dice()
    full.update(logits.half().float(), target)
    half.update(logits.half(), target)
    assert half.compute() == full.compute()


def test_accuracy_by_hand():
    # predictions [[1, 0], [1, 0], [0, 1]] against [[1, 0], [0, 0], [0, 1]]
    logits = torch.tensor([[2.0, -1.0], [3.0, -2.0], [-1.0, 1.0]])
    target = torch.tensor([[1, 0], [0, 0], [0, 1]])
    metric = Accuracy()
    metric.update(logits, target)
    assert metric.compute() == pytest.approx({"accuracy": 5 / 6, "accuracy_0": 2 / 3, "accuracy_1": 1.0})


def test_precision_recall_by_hand_with_zero_over_zero():
    # class 0: predicted [1, 1, 0], true [1, 0, 1]: precision 1/2, recall 1/2
    # class 1: never predicted, true [1, 0, 0]: precision 0/0 = 1, recall 0
    # class 2: predicted [1, 0, 0], never true: precision 0, recall 0/0 = 1
    pred = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 0]])
    target = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    metric = PrecisionRecall()
    metric.update(as_logits(pred), target)
    assert metric.compute() == pytest.approx(
        {
            "precision_0": 0.5,
            "precision_1": 1.0,
            "precision_2": 0.0,
            "recall_0": 0.5,
            "recall_1": 0.0,
            "recall_2": 1.0,
            "precision_mean": 0.5,
            "recall_mean": 0.5,
        }
    )


def random_batches(metric_type, generator):
    """Two batches of (logits, target) of the shape ``metric_type`` takes, 4 classes."""
    shape = (4, 8, 8) if metric_type.ndim == 4 else (4,)
    return [
        (torch.randn(size, *shape, generator=generator), (torch.rand(size, *shape, generator=generator) > 0.7).to(torch.uint8))
        for size in (3, 2)
    ]


ALL_METRICS = [Dice, IoU, Accuracy, PrecisionRecall]


@pytest.mark.parametrize("metric_type", ALL_METRICS)
def test_two_batches_equal_one_batch_of_both(metric_type):
    (logits_a, target_a), (logits_b, target_b) = random_batches(metric_type, torch.Generator().manual_seed(2))
    parts, whole = metric_type(), metric_type()
    parts.update(logits_a, target_a)
    parts.update(logits_b, target_b)
    whole.update(torch.cat([logits_a, logits_b]), torch.cat([target_a, target_b]))
    assert parts.compute() == pytest.approx(whole.compute(), rel=1e-12)


@pytest.mark.parametrize("metric_type", ALL_METRICS)
def test_reduce_sums_the_state_of_two_ranks(metric_type):
    (logits_a, target_a), (logits_b, target_b) = random_batches(metric_type, torch.Generator().manual_seed(3))
    rank_0, rank_1, whole = metric_type(), metric_type(), metric_type()
    rank_0.update(logits_a, target_a)
    rank_1.update(logits_b, target_b)
    whole.update(torch.cat([logits_a, logits_b]), torch.cat([target_a, target_b]))
    # a fake all-reduce: rank 0 receives rank 1's state, in state_names order
    other = iter([getattr(rank_1, name) for name in metric_type.state_names])
    rank_0.reduce_(lambda tensor: tensor.add_(next(other)))
    assert rank_0.compute() == pytest.approx(whole.compute(), rel=1e-12)


@pytest.mark.parametrize("metric_type", ALL_METRICS)
def test_reduce_of_two_identical_ranks_doubles_the_state(metric_type):
    ((logits, target), _) = random_batches(metric_type, torch.Generator().manual_seed(4))
    reduced, twice = metric_type(), metric_type()
    reduced.update(logits, target)
    before = {name: getattr(reduced, name).clone() for name in metric_type.state_names}
    reduced.reduce_(lambda tensor: tensor.mul_(2))
    twice.update(logits, target)
    twice.update(logits, target)
    for name in metric_type.state_names:
        torch.testing.assert_close(getattr(reduced, name), 2 * before[name])
        torch.testing.assert_close(getattr(reduced, name), getattr(twice, name))
    assert reduced.compute() == pytest.approx(twice.compute(), rel=1e-12)


def test_reset_forgets_batches_and_classes():
    metric = Dice()
    metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    metric.reset()
    with pytest.raises(RuntimeError, match="no batch has been added"):
        metric.compute()
    with pytest.raises(RuntimeError, match="no batch has been added"):
        metric.reduce_(lambda tensor: tensor)
    metric.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    assert set(metric.compute()) == {"dice_0", "dice_1", "dice_mean"}


def test_update_rejects_bad_shapes():
    metric = Dice()
    metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="number of classes changed"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="with 4 dimensions"):
        metric.update(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="with 2 dimensions"):
        Accuracy().update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="one shape"):
        PrecisionRecall().update(torch.zeros(2, 4), torch.zeros(2, 3))


def test_every_metric_is_registered_and_builds():
    assert set(METRICS.names()) == {"Dice", "IoU", "Accuracy", "PrecisionRecall", "MeanAP", "DefectDice", "Presence"}
    metric = METRICS.build({"type": "Dice", "args": {"threshold": 0.3}}, "metrics[0]")
    assert isinstance(metric, Dice) and metric.threshold == 0.3


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.1, True, "0.5"])
def test_bad_threshold_fails_naming_the_key(threshold):
    with pytest.raises(ConfigError, match=r"^metrics\[1\]: .*threshold must be a probability"):
        METRICS.build({"type": "PrecisionRecall", "args": {"threshold": threshold}}, "metrics[1]")


def test_dice_min_pixels_wipes_small_predictions_before_scoring():
    logits = torch.full((2, 2, 4, 4), -10.0)
    target = torch.zeros(2, 2, 4, 4)
    logits[0, 0, :1, :2] = 10.0  # 2 stray pixels of class 0 on an empty image
    logits[1, 1, :2, :2] = 10.0  # 4 correct pixels of class 1
    target[1, 1, :2, :2] = 1
    plain, filtered = Dice(), Dice(min_pixels=[3, 3])
    for metric in (plain, filtered):
        metric.update(logits, target)
    assert plain.compute()["dice_0"] == pytest.approx(0.5)
    assert filtered.compute() == {"dice_0": 1.0, "dice_1": 1.0, "dice_mean": 1.0}
    too_strict = Dice(min_pixels=5)
    too_strict.update(logits, target)
    assert too_strict.compute()["dice_1"] == pytest.approx(0.5), "the correct 4-pixel mask is wiped too"
    with pytest.raises(ValueError, match="min_pixels"):
        Dice(min_pixels=-1)
    with pytest.raises(ValueError, match="3 values given for 2 classes"):
        Dice(min_pixels=[1, 2, 3]).update(logits, target)


@pytest.mark.parametrize("metric_type", [Dice, IoU])
def test_a_padded_mixed_size_batch_scores_each_image_on_its_own_pixels(metric_type):
    """Padding predicted as defect, with an empty true mask there, changes nothing with ``valid``."""
    generator = torch.Generator().manual_seed(5)
    sizes, padded = [(12, 20), (30, 9)], (32, 32)
    alone, batch = metric_type(min_pixels=3), metric_type(min_pixels=3)
    logits = torch.full((2, 2, *padded), 4.0)  # padding: confidently "defect"
    target = torch.zeros(2, 2, *padded)
    valid = torch.zeros(2, 1, *padded, dtype=torch.bool)
    for n, (height, width) in enumerate(sizes):
        own_logits = torch.randn(1, 2, height, width, generator=generator) * 3
        own_target = (torch.rand(1, 2, height, width, generator=generator) > 0.6).float()
        alone.update(own_logits, own_target)
        logits[n, :, :height, :width], target[n, :, :height, :width] = own_logits[0], own_target[0]
        valid[n, :, :height, :width] = True
    batch.update(logits, target, valid)
    assert batch.compute() == pytest.approx(alone.compute(), abs=1e-12)
    unmasked = metric_type(min_pixels=3)
    unmasked.update(logits, target)
    assert unmasked.compute() != pytest.approx(alone.compute(), abs=1e-3)


# ---------------------------------------------------------------- written to kill mutants (tools/mutation.py)


def test_scores_accept_the_pixels_flattened_to_one_axis():
    # kills `pred.ndim < 3` -> `<= 3` / `< 4` in _overlap: (N, C, H*W) is as valid as (N, C, H, W)
    flat_pred, flat_true = PRED.flatten(2), TRUE.flatten(2)
    assert torch.equal(dice_per_image(flat_pred, flat_true), dice_per_image(PRED, TRUE))
    assert torch.equal(iou_per_image(flat_pred, flat_true), iou_per_image(PRED, TRUE))


def test_an_empty_metric_names_itself_in_the_error():
    # kills type(self) -> type(None) in Metric._state
    with pytest.raises(RuntimeError, match="^Dice: no batch"):
        Dice().compute()


# ---------------------------------------------------------------- metrics an empty predictor cannot win: Dice over defect pairs, presence precision/recall


EMPTY_LOGITS = -10.0  # sigmoid far below every threshold


def mostly_empty(images: int = 20, classes: int = 4, size: int = 16) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 masks in which two images hold one defect each (class 0 and class 2)."""
    target = torch.zeros(images, classes, size, size, dtype=torch.uint8)
    target[0, 0, 2:8, 2:8] = 1
    target[5, 2, 4:12, 1:5] = 1
    return target


def scores(metric, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    metric.update(logits, target)
    return metric.compute()


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
