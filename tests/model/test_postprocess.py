"""Post-processing steps on small hand-made arrays, and the settings file."""

import numpy as np
import pytest
import torch

from sever.exceptions import ConfigError
from sever.model import postprocess as postprocess_module
from sever.model.postprocess import (
    PostProcessing,
    dominate_components,
    gated_min_pixels,
    keep_highest_class,
    pixel_counts,
    remove_small_components,
    threshold_probabilities,
    wipe_small_masks,
)


def u8(values):
    return torch.tensor(values, dtype=torch.uint8)


def test_threshold_compares_q_over_255_with_each_class_threshold():
    probs = u8([[[[127, 128, 200]], [[127, 128, 200]]]])  # (1, 2, 1, 3)
    masks = threshold_probabilities(probs, [0.5, 0.7])
    # 127/255 = 0.498, 128/255 = 0.502, 200/255 = 0.784
    assert masks.tolist() == [[[[False, True, True]], [[False, False, True]]]]


def test_highest_class_wins_each_pixel_and_ties_go_to_the_lower_class():
    probs = u8([[[[200, 150, 100, 160]], [[180, 190, 100, 160]]]])
    masks = torch.ones_like(probs, dtype=torch.bool)
    masks[0, 1, 0, 2] = False
    kept = keep_highest_class(masks, probs)
    assert kept[0, 0].tolist() == [[True, False, True, True]]
    assert kept[0, 1].tolist() == [[False, True, False, False]]


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_highest_class_equals_the_first_argmax_on_random_probabilities_with_ties(classes, dtype):
    generator = torch.Generator().manual_seed(classes)
    probs = torch.randint(0, 3, (2, classes, 7, 9), generator=generator).to(dtype)  # 3 levels: ties everywhere
    masks = torch.rand(probs.shape, generator=generator) > 0.3
    best = probs.argmax(dim=1, keepdim=True)  # the first index of the maximum
    expected = masks & (best == torch.arange(classes).view(1, -1, 1, 1))
    assert torch.equal(keep_highest_class(masks, probs), expected)


def test_highest_class_is_taken_over_all_classes_not_only_thresholded_ones():
    probs = u8([[[[153]], [[179]]]])  # 0.6 and 0.7
    masks = threshold_probabilities(probs, [0.5, 0.8])  # class 0 positive, class 1 not
    assert not keep_highest_class(masks, probs).any()


def test_small_components_are_removed_per_class_with_8_connectivity():
    mask = np.zeros((1, 2, 5, 5), bool)
    mask[0, 0, 0, 0] = True  # 1 pixel
    mask[0, 0, 3:5, 3:5] = True  # 4 pixels
    mask[0, 1, 0, 0] = mask[0, 1, 1, 1] = mask[0, 1, 2, 2] = True  # 3 pixels joined diagonally
    out = remove_small_components(mask, [2, 3])
    expected = mask.copy()
    expected[0, 0, 0, 0] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(remove_small_components(mask, [0, 4])[0, 1], np.zeros((5, 5), bool))
    np.testing.assert_array_equal(remove_small_components(mask, [0, 0]), mask)


def test_larger_components_dominate_overlapping_smaller_ones():
    masks = np.zeros((1, 3, 4, 8), bool)
    masks[0, 0, :, 0:4] = True  # class 0: 16 pixels
    masks[0, 1, 0:2, 3:6] = True  # class 1: 6 pixels, overlaps class 0 -> removed
    masks[0, 2, 2:4, 5:8] = True  # class 2: 6 pixels, overlaps only the removed class 1 one -> kept
    masks[0, 1, 3, 7] = True  # class 1: a separate pixel under class 2 -> removed by it
    out = dominate_components(masks)
    np.testing.assert_array_equal(out[0, 0], masks[0, 0])
    assert not out[0, 1].any()
    np.testing.assert_array_equal(out[0, 2], masks[0, 2])
    assert out.sum(axis=1).max() == 1


def test_wipe_takes_one_minimum_per_class_or_per_image_and_class():
    pred = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    pred[:, :, 0, :] = True  # 3 pixels everywhere
    assert wipe_small_masks(pred, torch.tensor([3, 4])).flatten(2).any(-1).tolist() == [[True, False], [True, False]]
    per_image = torch.tensor([[4, 0], [0, 4]])
    assert wipe_small_masks(pred, per_image).flatten(2).any(-1).tolist() == [[False, True], [True, False]]


def test_gating_formula_of_the_writeup():
    t0 = torch.tensor([600, 2000])
    probs = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.25]])
    t = gated_min_pixels(t0, torch.tensor([5.0, 10.0]), probs)
    # t = t0 * c - t0 * (c - 1) * p
    expected = [[600, 2000], [3000, 20000], [3000 - 2400 * 0.5, 20000 - 18000 * 0.25]]
    np.testing.assert_allclose(t.numpy(), expected)
    np.testing.assert_allclose(gated_min_pixels(t0, torch.ones(2), probs).numpy(), [[600, 2000]] * 3)


def test_keep_with_classifier_gating_and_veto():
    settings = PostProcessing.from_mapping(
        {"min_pixels": [100, 100], "classifier": {"c_factor": 5, "veto": [0.0, 0.3]}}, classes=2)
    counts = torch.tensor([[200, 200], [450, 450], [600, 600]])
    class_probs = torch.tensor([[1.0, 1.0], [0.0, 0.9], [0.5, 0.2]])
    # minimum: 100 at p=1, 500 at p=0, 300 at p=0.5; veto 0.3 wipes class 1 of image 3
    assert settings.keep(counts, class_probs).tolist() == [[True, True], [False, True], [True, False]]
    with pytest.raises(ConfigError, match="no classifier was given"):
        settings.keep(counts)


def test_apply_runs_the_steps_in_order():
    probs = torch.zeros(1, 2, 4, 6, dtype=torch.uint8)
    probs[0, 0, :, 0:3] = 200  # class 0: 12 pixels
    probs[0, 1, :, 2:6] = 220  # class 1: 16 pixels, wins column 2 by probability
    probs[0, 1, 0, 0] = 210  # and the corner pixel of class 0
    settings = PostProcessing.from_mapping({"min_pixels": [9, 0], "one_class_per_pixel": True}, classes=2)
    masks = settings.apply(probs)
    assert masks[0, 0].sum() == 0  # 12 - 4 (column 2) - 1 (corner) = 7 pixels, below 9: wiped
    assert masks[0, 1].sum() == 17
    assert settings.replace(min_pixels=(7, 0)).apply(probs)[0, 0].sum() == 7
    no_argmax = settings.replace(one_class_per_pixel=False, min_pixels=(0, 0)).apply(probs)
    assert no_argmax[0, 0].sum() == 12 and no_argmax[0, 1].sum() == 17


def test_defaults_follow_the_writeup_for_four_classes():
    four = PostProcessing.default(4)
    assert four.threshold == (0.5,) * 4 and four.min_pixels == (600, 600, 1000, 2000)
    assert four.one_class_per_pixel and not four.component_domination and not four.gated
    assert PostProcessing.default(3).min_pixels == (0, 0, 0)


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"treshold": 0.4}, "treshold: unknown key. Did you mean 'threshold'?"),
        ({"threshold": [0.5, 0.5]}, "threshold: 2 values given for 4 classes"),
        ({"threshold": 1.5}, "threshold: expected a probability in \\(0, 1\\)"),
        ({"min_pixels": [600, -1, 0, 0]}, "min_pixels\\[1\\]: expected a pixel count"),
        ({"one_class_per_pixel": "yes"}, "one_class_per_pixel: expected true/false"),
        ({"classifier": {"c_factr": 5}}, "classifier.c_factr: unknown key. Did you mean 'c_factor'?"),
        ({"classifier": {"c_factor": 0.5}}, "classifier.c_factor: expected a factor >= 1"),
    ],
)
def test_bad_settings_name_the_file_and_key(mapping, message):
    with pytest.raises(ConfigError, match=f"pp.yml: {message}"):
        PostProcessing.from_mapping(mapping, 4, "pp.yml")


def test_yaml_round_trip(tmp_path):
    settings = PostProcessing.from_mapping(
        {"threshold": [0.4, 0.5, 0.6, 0.7], "min_pixels": 10, "min_component": [0, 5, 0, 0],
         "classifier": {"c_factor": [1, 2, 5, 10], "veto": 0.1}}, 4)
    path = tmp_path / "pp.yml"
    path.write_text(settings.to_yaml())
    assert PostProcessing.load(path, 4) == settings
    with pytest.raises(ConfigError, match="4 values given for 3 classes"):
        PostProcessing.load(path, 3)


@pytest.mark.parametrize("domination, one_class", [(False, True), (True, False)])
def test_the_torch_steps_give_the_masks_of_the_numpy_steps(monkeypatch, domination, one_class):
    """Off the CPU (CUDA tensors) every step runs in torch; forced on CPU tensors, they must give the
    numpy steps' masks, pixel for pixel (noise probabilities hit every threshold level exactly)."""
    probs = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 4, 24, 40), dtype=np.uint8))
    settings = PostProcessing(threshold=(0.5, 0.3, 0.6, 0.2), min_pixels=(0, 150, 240, 400),
                              one_class_per_pixel=one_class, min_component=(0, 3, 0, 2),
                              component_domination=domination, c_factor=(1.0, 0.5, 2.0, 1.0),
                              veto=(0.0, 0.2, 0.0, 0.6))
    class_probs = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.9, 0.5], [0.6, 0.6, 0.1, 0.9]])
    expected = settings.apply(probs, class_probs)
    kept = pixel_counts(expected) > 0
    assert 0 < int(kept.sum()) < kept.numel()  # some class masks wiped, some kept
    monkeypatch.setattr(postprocess_module, "_on_cpu", lambda tensor: False)
    assert torch.equal(settings.apply(probs, class_probs), expected)


def test_a_probability_exactly_at_the_threshold_is_not_above_it():
    """``q / 255 > t``: with t = 0.2 (51 / 255), q = 51 is out and q = 52 in; with t = 0.5, 127 out and 128 in."""
    probs = torch.tensor([51, 52, 127, 128], dtype=torch.uint8).reshape(1, 1, 1, 4).repeat(1, 2, 1, 1)
    masks = threshold_probabilities(probs, [0.2, 0.5])
    assert masks[0, :, 0].tolist() == [[False, True, True, True], [False, False, False, True]]
