"""Losses: hand-computed values, gradients, fp16/autocast safety, registry and argument checks."""

import math

import pytest
import torch

from sever.exceptions import ConfigError
from sever.model.loss import (
    LOSSES,
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    FocalLoss,
    FocalTverskyLoss,
    IoULoss,
    LovaszLoss,
    TverskyLoss,
    WeightedSumLoss,
)

LN3 = math.log(3)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def image(*rows, dtype=torch.float32):
    """A (1, 1, H, W) tensor from rows of numbers."""
    return torch.tensor([[list(rows)]], dtype=dtype)


# sigmoid probabilities 3/4, 1/4, 1/2, 1/2 against targets 1, 0, 1, 0:
# soft TP = 5/4, sum(p) = 2, sum(t) = 2, so FP = FN = 3/4
LOGITS = image([LN3, -LN3], [0.0, 0.0])
TARGET = image([1, 0], [1, 0], dtype=torch.uint8)

HAND_VALUES = [
    # mean of -ln(3/4), -ln(3/4), ln 2, ln 2
    (BCELoss(), math.log(8 / 3) / 2),
    # 1 - (2 * 5/4 + 1) / (2 + 2 + 1)
    (DiceLoss(), 0.3),
    # 1 - (5/4 + 1) / (2 + 2 - 5/4 + 1)
    (IoULoss(), 0.4),
    # 1 - (5/4 + 1) / (5/4 + 3/8 + 3/8 + 1)
    (TverskyLoss(), 0.25),
    # (1 - 3/4) ** 0.75 (FP = FN so alpha and beta do not matter here)
    (FocalTverskyLoss(), 0.25**0.75),
    # 1/4 * (1/4)^2 ln(4/3) + 3/4 * (1/4)^2 ln(4/3) + 1/4 * (1/2)^2 ln 2 + 3/4 * (1/2)^2 ln 2, over 4
    (FocalLoss(), math.log(4 / 3) / 64 + math.log(2) / 16),
    # hinge errors 1 - ln3 (twice, ignored by relu) and 1 for a positive and a negative pixel:
    # Jaccard loss of {positive} is 1/2, of {positive, negative} 1 - 1/3
    (LovaszLoss(), 2 / 3),
]


@pytest.mark.parametrize("loss, expected", [pytest.param(*case, id=type(case[0]).__name__) for case in HAND_VALUES])
def test_hand_computed_value(loss, expected):
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_bce_dice_is_weighted_sum_with_named_parts():
    out = BCEDiceLoss()(LOGITS, TARGET)
    assert set(out) == {"loss", "bce", "dice_loss"}
    assert out["bce"].item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)
    assert out["dice_loss"].item() == pytest.approx(0.3, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * math.log(8 / 3) + 0.4 * 0.3, rel=1e-6)
    assert not out["bce"].requires_grad and not out["dice_loss"].requires_grad


def test_bce_dice_weighs_each_class_s_defect_pixels_in_its_bce_term_only():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None]
    plain, weighted = BCEDiceLoss()(logits, target), BCEDiceLoss(pos_weight=[3, 1])(logits, target)
    assert weighted["bce"].item() == pytest.approx(2 * math.log(2), rel=1e-6)  # as BCELoss(pos_weight=[3, 1])
    assert plain["bce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert weighted["dice_loss"].item() == pytest.approx(plain["dice_loss"].item())
    assert weighted["loss"].item() == pytest.approx(plain["loss"].item() + 0.6 * math.log(2), rel=1e-6)


def test_bce_pos_weight_scalar_and_per_class():
    # positives (-ln 3/4 and ln 2) weighted 2: (3 ln 4/3 + 3 ln 2) / 4
    assert BCELoss(pos_weight=2)(LOGITS, TARGET).item() == pytest.approx(3 * math.log(8 / 3) / 4, rel=1e-6)
    # class 0 all positive weighted 3, class 1 all negative: (3 ln 2 + ln 2) / 2; weights broadcast
    # along the class channel (along the width they would give (2 ln 2 + ln 2) / 2)
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None]
    assert BCELoss(pos_weight=[3, 1])(logits, target).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="3 pos_weight values for 2 classes"):
        BCELoss(pos_weight=[1, 2, 3])(logits, target)


def test_classification_shape_bce_and_focal():
    logits = torch.tensor([[0.0, LN3]])  # p = 1/2 and 3/4
    target = torch.tensor([[1, 0]], dtype=torch.uint8)
    assert BCELoss()(logits, target).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    # 1/4 * (1/2)^2 * ln 2 and 3/4 * (3/4)^2 * ln 4, averaged
    assert FocalLoss()(logits, target).item() == pytest.approx(29 / 64 * math.log(2), rel=1e-6)


def test_focal_without_alpha_and_focusing_is_bce():
    logits, target = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4).round()
    assert FocalLoss(alpha=None, gamma=0)(logits, target).item() == pytest.approx(BCELoss()(logits, target).item(), rel=1e-6)


def test_dice_per_image_versus_per_batch():
    # every p = 1/2; image 1 has an empty target, image 2 a full one
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    # per image: Dice (0 + 1) / (2 + 0 + 1) = 1/3 and (4 + 1) / (2 + 4 + 1) = 5/7
    assert DiceLoss(per_image=True)(logits, target).item() == pytest.approx(1 - (1 / 3 + 5 / 7) / 2, rel=1e-6)
    # over the batch: (4 + 1) / (4 + 4 + 1)
    assert DiceLoss()(logits, target).item() == pytest.approx(4 / 9, rel=1e-6)


def test_dice_is_per_class_mean():
    # class 0 is the example (Dice 0.7); class 1 predicts 1/2 on an empty target: 1 / (2 + 1)
    logits = torch.cat([LOGITS, torch.zeros(1, 1, 2, 2)], dim=1)
    target = torch.cat([TARGET, torch.zeros(1, 1, 2, 2, dtype=torch.uint8)], dim=1)
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - (0.7 + 1 / 3) / 2, rel=1e-6)


def test_tversky_alpha_weighs_false_positives():
    # p = 1/2 everywhere against 1, 1, 1, 0: TP = 3/2, FP = 1/2, FN = 3/2
    logits, target = torch.zeros(1, 1, 2, 2), image([1, 1], [1, 0])
    assert TverskyLoss(alpha=0.3, beta=0.7)(logits, target).item() == pytest.approx(1 - 2.5 / 3.7, rel=1e-6)
    assert TverskyLoss(alpha=0.7, beta=0.3)(logits, target).item() == pytest.approx(1 - 2.5 / 3.3, rel=1e-6)


def test_focal_tversky_with_gamma_one_is_tversky():
    logits, target = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8).round()
    focal = FocalTverskyLoss(alpha=0.1, beta=0.9, gamma=1.0, per_image=True)(logits, target)
    plain = TverskyLoss(alpha=0.1, beta=0.9, per_image=True)(logits, target)
    assert focal.item() == pytest.approx(plain.item(), rel=1e-6)


def test_lovasz_empty_target_scores_largest_error_and_per_image_differs_from_batch():
    empty_logits, empty_target = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert LovaszLoss()(empty_logits, empty_target).item() == pytest.approx(1.0)
    logits = torch.cat([LOGITS, empty_logits])
    target = torch.cat([TARGET.float(), empty_target])
    assert LovaszLoss(per_image=True)(logits, target).item() == pytest.approx((2 / 3 + 1) / 2, rel=1e-6)
    # over the batch: 6 pixels with error 1 (1 positive, 5 negatives) of 2 positives: 1 - 1/7
    assert LovaszLoss(per_image=False)(logits, target).item() == pytest.approx(6 / 7, rel=1e-6)


def test_lovasz_is_zero_when_margins_are_met():
    target = image([1, 0], [0, 1])
    assert LovaszLoss()(4 * target - 2, target).item() == 0.0


def test_weighted_sum_builds_parts_by_name():
    loss = LOSSES.build(
        {
            "type": "WeightedSumLoss",
            "args": {
                "losses": [
                    {"type": "BCELoss", "weight": 0.6},
                    {"type": "DiceLoss", "weight": 0.4},
                    {"type": "LovaszLoss", "args": {"per_image": True}, "weight": 0, "name": "lovasz"},
                ]
            },
        },
        "loss",
    )
    out = loss(LOGITS, TARGET)
    assert set(out) == {"loss", "BCELoss", "DiceLoss", "lovasz"}
    assert out["loss"].item() == pytest.approx(BCEDiceLoss()(LOGITS, TARGET)["loss"].item(), rel=1e-6)
    assert out["lovasz"].item() == pytest.approx(2 / 3, rel=1e-6)


@pytest.mark.parametrize(
    "losses, message",
    [
        ([{"type": "DiceLos"}], r"loss: cannot build .*args\.losses\[0\]\.type: unknown loss 'DiceLos'\. Did you mean 'DiceLoss'"),
        ([{"type": "DiceLoss", "args": {"smoth": 1}}], r"args\.losses\[0\]\.args\.smoth: unknown argument"),
        ([{"type": "DiceLoss"}, {"type": "DiceLoss"}], r"args\.losses\[1\]\.name: 'DiceLoss'"),
        ([{"type": "DiceLoss", "name": "loss"}], r"args\.losses\[0\]\.name: 'loss'"),
        ([{"type": "DiceLoss", "weight": -1}], r"args\.losses\[0\]\.weight must be >= 0"),
        ([{"type": "DiceLoss", "weight": 0}], "weights cannot all be 0"),
        ([], "non-empty list"),
    ],
)
def test_weighted_sum_rejects_bad_entries(losses, message):
    with pytest.raises(ConfigError, match=message):
        LOSSES.build({"type": "WeightedSumLoss", "args": {"losses": losses}}, "loss")


# one of each kind, for the full-size checks
EACH_LOSS = [
    pytest.param(BCELoss(pos_weight=[1.0, 2.0, 3.0, 4.0]), id="BCELoss"),
    pytest.param(DiceLoss(), id="DiceLoss"),
    pytest.param(IoULoss(per_image=True), id="IoULoss-per-image"),
    pytest.param(TverskyLoss(alpha=0.1, beta=0.9), id="TverskyLoss"),
    pytest.param(FocalTverskyLoss(per_image=True), id="FocalTverskyLoss-per-image"),
    pytest.param(FocalLoss(gamma=0.5), id="FocalLoss"),
    pytest.param(LovaszLoss(), id="LovaszLoss-per-image"),
    pytest.param(BCEDiceLoss(), id="BCEDiceLoss"),
]
ALL_LOSSES = EACH_LOSS + [
    pytest.param(DiceLoss(per_image=True), id="DiceLoss-per-image"),
    pytest.param(IoULoss(), id="IoULoss"),
    pytest.param(FocalTverskyLoss(), id="FocalTverskyLoss"),
    pytest.param(FocalLoss(), id="FocalLoss-gamma-2"),
    pytest.param(LovaszLoss(per_image=False), id="LovaszLoss"),
    pytest.param(WeightedSumLoss([{"type": "FocalLoss"}, {"type": "IoULoss", "weight": 2}]), id="WeightedSumLoss"),
]


def total(output):
    return output["loss"] if isinstance(output, dict) else output


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_gradients_flow_and_stay_finite_for_huge_logits(loss):
    torch.manual_seed(0)
    target = torch.rand(2, 4, 8, 8).round()
    for scale in (1.0, 300.0):  # 300: sigmoid saturates to exactly 0 or 1 in float32
        logits = (scale * torch.randn(2, 4, 8, 8)).requires_grad_()
        total(loss(logits, target)).backward()
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_perfect_confident_prediction_scores_zero_with_finite_gradients(loss):
    target = torch.zeros(2, 4, 8, 8)
    target[0, 1, 2:5, 3:7] = 1  # one defect; every other image-class pair empty
    logits = (300 * (2 * target - 1)).requires_grad_()
    value = total(loss(logits, target))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()


@pytest.fixture(scope="module")
def full_size_half():
    """fp16 logits and uint8 targets (2, 4, 256, 1600) with logits up to the fp16 range."""
    generator = torch.Generator().manual_seed(1)
    logits = 30 * torch.randn(2, 4, 256, 1600, generator=generator)
    logits[:, :, :8] = 60000.0
    logits[:, :, 8:16] = -60000.0
    target = torch.zeros(2, 4, 256, 1600, dtype=torch.uint8)
    target[:, :2, 4:200, 100:1500] = 1  # large defects in two classes, none in the others
    return logits.half(), target


@pytest.mark.parametrize("loss", EACH_LOSS)
def test_full_size_fp16_matches_fp32(loss, full_size_half):
    logits, target = full_size_half
    half = total(loss(logits, target))
    full = total(loss(logits.float(), target.float()))
    assert half.dtype == torch.float32
    assert torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", [BCEDiceLoss(), LovaszLoss(), FocalTverskyLoss()], ids=lambda loss: type(loss).__name__)
def test_runs_in_float32_under_autocast(loss, device):
    loss = loss.to(device)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    logits = torch.randn(2, 4, 16, 16, device=device)
    target = (torch.rand(2, 4, 16, 16, device=device) > 0.5).to(torch.uint8)
    with torch.autocast(device_type=device, dtype=dtype):
        low = total(loss(logits.to(dtype), target))
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(total(loss(logits.to(dtype).float(), target)).item(), rel=1e-6)


def test_every_loss_is_registered():
    assert set(LOSSES.names()) == {
        "BCELoss",
        "DiceLoss",
        "IoULoss",
        "TverskyLoss",
        "FocalTverskyLoss",
        "FocalLoss",
        "LovaszLoss",
        "BCEDiceLoss",
        "WeightedSumLoss",
        "DetectionLoss",
    }


def test_build_from_config_block():
    loss = LOSSES.build({"type": "BCEDiceLoss", "args": {"bce_weight": 0.5, "dice_weight": 0.5}}, "loss")
    assert isinstance(loss, BCEDiceLoss)
    assert (loss.bce_weight, loss.dice_weight) == (0.5, 0.5)
    assert isinstance(LOSSES.build("LovaszLoss", "loss"), LovaszLoss)


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("BCEDiceLoss", {"bce_weight": -0.1}, "bce_weight must be >= 0"),
        ("BCEDiceLoss", {"bce_weight": 0, "dice_weight": 0}, "cannot all be 0"),
        ("BCEDiceLoss", {"bce_weigth": 0.5}, "Did you mean 'bce_weight'"),
        ("BCELoss", {"pos_weight": 0}, "pos_weight must be > 0"),
        ("BCELoss", {"pos_weight": []}, "non-empty list"),
        ("DiceLoss", {"smooth": 0}, "smooth must be > 0"),
        ("IoULoss", {"smooth": float("nan")}, "smooth must be a finite number"),
        ("FocalLoss", {"gamma": -1}, "gamma must be >= 0"),
        ("FocalLoss", {"alpha": 1.5}, "alpha must be <= 1"),
        ("FocalLoss", {"alpha": "0.25"}, "alpha must be a finite number"),
        ("TverskyLoss", {"alpha": -0.5}, "alpha must be >= 0"),
        ("TverskyLoss", {"alpha": 0, "beta": 0}, "cannot both be 0"),
        ("FocalTverskyLoss", {"gamma": 0}, "gamma must be > 0"),
        ("FocalTverskyLoss", {"beta": True}, "beta must be a finite number"),
        ("DiceLoss", {"per_image": "false"}, "per_image must be true or false"),
        ("LovaszLoss", {"per_image": 1}, "per_image must be true or false"),
    ],
)
def test_bad_arguments_fail_naming_the_key(name, args, message):
    with pytest.raises(ConfigError, match=message) as error:
        LOSSES.build({"type": name, "args": args}, "loss")
    assert str(error.value).startswith("loss")


def test_bad_shapes_fail():
    with pytest.raises(ValueError, match="differ in shape"):
        DiceLoss()(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 4 dimensions"):
        LovaszLoss()(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="per_image needs spatial dimensions"):
        DiceLoss(per_image=True)(torch.zeros(2, 4), torch.zeros(2, 4))


def padded_pair(seed=0, height=20, width=30, size=(32, 64)):
    """``(logits, target)`` of one image and the same image padded to ``size`` with junk, plus ``valid``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 4, height, width, generator=generator)
    target = (torch.rand(1, 4, height, width, generator=generator) > 0.7).float()
    padded_logits = torch.randn(1, 4, *size, generator=generator) * 5  # padding: confident junk scores
    padded_target = torch.ones(1, 4, *size)  # and a target that would say "defect" there
    padded_logits[..., :height, :width], padded_target[..., :height, :width] = logits, target
    valid = torch.zeros(1, 1, *size, dtype=torch.bool)
    valid[..., :height, :width] = True
    return (logits, target), (padded_logits, padded_target, valid)


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_a_loss_with_padding_left_out_is_the_loss_on_the_image_alone(loss):
    (logits, target), (padded_logits, padded_target, valid) = padded_pair()
    assert torch.allclose(total(loss(padded_logits, padded_target, valid)), total(loss(logits, target)), atol=1e-6)
    assert not torch.allclose(total(loss(padded_logits, padded_target)), total(loss(logits, target)), atol=1e-3)


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_padded_pixels_get_no_gradient(loss):
    """The model is not pushed towards background (or anything) where there is no image."""
    _, (padded_logits, padded_target, valid) = padded_pair(seed=1)
    padded_logits.requires_grad_(True)
    total(loss(padded_logits, padded_target, valid)).backward()
    outside = ~valid[0, 0]
    assert (padded_logits.grad[:, :, outside] == 0).all()
    assert padded_logits.grad[:, :, ~outside].abs().sum() > 0


@pytest.mark.parametrize("loss", [DiceLoss(per_image=True), LovaszLoss(per_image=True)], ids=["Dice", "Lovasz"])
def test_per_image_losses_score_a_mixed_size_batch_as_each_image_alone(loss):
    images = [padded_pair(seed, height, width, (40, 64)) for seed, (height, width) in enumerate([(20, 30), (40, 50)])]
    alone = torch.stack([total(loss(logits, target)) for (logits, target), _ in images]).mean()
    batch = [torch.cat(parts) for parts in zip(*(padded for _, padded in images))]
    assert torch.allclose(total(loss(*batch)), alone, atol=1e-6)


def test_a_valid_mask_of_the_wrong_shape_fails():
    with pytest.raises(ValueError, match=r"valid \(1, 3, 4, 4\) must be \(B, 1, H, W\)"):
        BCELoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4, dtype=torch.bool))
