"""Post-processing steps on small hand-made arrays, and the settings file."""

import numpy as np
import pytest
import torch

from sever.exceptions import ConfigError
from sever.model import postprocess as postprocess_module
from sever.model.postprocess import (
    PostProcessing,
    check_min_pixels,
    dominate_components,
    gated_min_pixels,
    keep_highest_class,
    min_pixels_per_class,
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


# ---------------------------------------------------------------- written to kill mutants (tools/mutation.py)


def as_probs(*class_masks):
    """uint8 probabilities (1, C, H, W): 255 inside each class mask given as nested lists, 0 outside."""
    return torch.tensor([class_masks], dtype=torch.uint8) * 255


def settings(classes, **mapping):
    return PostProcessing.from_mapping({"min_pixels": 0, **mapping}, classes)


def test_every_settings_key_reaches_the_settings():
    # kills the dropped one_class_per_pixel / min_component / component_domination arguments
    pp = settings(2, one_class_per_pixel=False, min_component=[0, 5], component_domination=True)
    assert (pp.one_class_per_pixel, pp.min_component, pp.component_domination) == (False, (0, 5), True)


@pytest.mark.parametrize("mapping, message", [
    ({"min_component": [0, -1]}, r"^postprocess: min_component\[1\]: expected a pixel count >= 0, got -1$"),
    ({"classifier": {"veto": [0.5, 1.5]}}, r"^postprocess: classifier.veto\[1\]: expected a probability in \[0, 1\], got 1.5$"),
    ({"classifier": {"veto": [0.5, "x"]}}, r"classifier.veto\[1\]: expected a probability"),
    ({"threshold": 0.0}, r"^postprocess: threshold: expected a probability in \(0, 1\), got 0.0$"),
    ({"threshold": 1.0}, r"threshold: expected a probability in \(0, 1\), got 1.0"),
])
def test_invalid_settings_name_the_key_and_the_expected_range(mapping, message):
    with pytest.raises(ConfigError, match=message):
        PostProcessing.from_mapping(mapping, 2)


def test_veto_bounds_are_inclusive_and_a_probability_equal_to_the_veto_is_kept():
    pp = settings(2, classifier={"veto": [0.0, 1.0]})
    assert pp.veto == (0.0, 1.0)
    pp = settings(2, classifier={"c_factor": 1.0, "veto": 0.5})
    keep = pp.keep(torch.tensor([[10, 10]]), torch.tensor([[0.5, 0.49]]))
    assert keep.tolist() == [[True, False]]


def test_settings_that_are_not_a_mapping_or_do_not_fit_the_model_say_so(tmp_path):
    with pytest.raises(ConfigError, match="^postprocess: expected a mapping of post-processing keys, got list$"):
        PostProcessing.from_mapping([0.5], 2)
    with pytest.raises(ConfigError, match="^post-processing settings are for 2 classes, the model predicts 3$"):
        settings(2).apply(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    path = tmp_path / "pp.yml"
    path.write_text("threshold: 2.0\n")
    with pytest.raises(ConfigError, match=f"^{path}: threshold"):
        PostProcessing.load(path, 2)


def test_classifier_probabilities_and_settings_must_come_together():
    with pytest.raises(ConfigError, match="^classifier: the post-processing settings have classifier options but no "
                                          "classifier was given$"):
        settings(1, classifier={"c_factor": 2.0}).keep(torch.tensor([[3]]))
    with pytest.raises(ConfigError, match=r"^classifier: classifier probabilities given but the post-processing "
                                          r"settings have no classifier block \(use with_classifier\(\)\)$"):
        settings(1).keep(torch.tensor([[3]]), torch.tensor([[0.5]]))


def test_apply_gates_with_the_classifier_probabilities():
    # a 4-pixel mask; min_pixels 3 with c_factor 2 becomes 3 * 2 - 3 * p: 6 at p = 0, 3 at p = 1
    pp = PostProcessing.from_mapping({"min_pixels": 3, "classifier": {"c_factor": 2.0}}, 1)
    probs = as_probs([[1, 1], [1, 1]])
    assert pp.apply(probs, torch.tensor([[1.0]])).all()
    assert not pp.apply(probs, torch.tensor([[0.0]])).any()


def test_component_domination_keeps_one_class_whole_and_drops_what_overlaps_a_larger_component():
    # class 0: A (a row and a diagonal, 14 px) and D (an L whose bounding box holds three of A's pixels);
    # class 1: E (2 px) on A's pixel (3, 3), which lies inside D's bounding box.
    a = torch.zeros(8, 10, dtype=torch.int64)
    a[0, :] = 1
    for i in range(5):
        a[i, i] = 1
    d = torch.zeros_like(a)
    d[2:7, 6] = 1
    d[6, 2:7] = 1
    e = torch.zeros_like(a)
    e[3, 3:5] = 1
    pp = settings(2, component_domination=True, one_class_per_pixel=False)
    out = pp.apply(as_probs((a | d).tolist(), e.tolist()))[0]
    assert torch.equal(out[0], (a | d).bool()), "components of one class never dominate each other"
    assert not out[1].any(), "E overlaps the larger A"


def test_component_domination_breaks_size_ties_by_the_lower_class():
    # class 0 has two components (the second, label 2, overlaps class 1's only component, label 1)
    zero = torch.zeros(3, 6, dtype=torch.int64)
    zero[0, 0] = 1
    zero[2, 3:5] = 1
    one = torch.zeros_like(zero)
    one[2, 4:6] = 1
    out = settings(2, component_domination=True, one_class_per_pixel=False).apply(as_probs(zero.tolist(), one.tolist()))[0]
    assert torch.equal(out[0], zero.bool()) and not out[1].any()


def test_min_component_two_removes_single_pixels():
    mask = [[1, 0, 0, 0], [0, 0, 1, 1]]
    out = settings(1, min_component=2).apply(as_probs(mask))[0, 0]
    assert out.tolist() == [[False, False, False, False], [False, False, True, True]]


def test_one_class_per_pixel_on_a_batch_of_several_images():
    # kills argmax without keepdim: (N, H, W) against (1, C, 1, 1) only broadcasts when N is 1
    probs = torch.tensor([[[[200, 100]], [[150, 180]]], [[[10, 250]], [[240, 30]]]], dtype=torch.uint8)
    out = settings(2).apply(probs)
    assert out.tolist() == [[[[True, False]], [[False, True]]], [[[False, True]], [[True, False]]]]


def test_settings_written_as_yaml_keep_the_documented_order_and_flow_lists():
    assert settings(2).to_yaml() == (
        "threshold: [0.5, 0.5]\nmin_pixels: [0, 0]\none_class_per_pixel: true\nmin_component: [0, 0]\n"
        "component_domination: false\nclassifier: null\n"
    )


def test_classifier_block_of_the_mapping_fills_what_is_unset():
    veto_only = PostProcessing(threshold=(0.5, 0.5), min_pixels=(0, 0), veto=(0.2, 0.3))
    assert veto_only.to_mapping()["classifier"] == {"c_factor": [1.0, 1.0], "veto": [0.2, 0.3]}
    factor_only = settings(2, classifier={"c_factor": 2.0})
    assert factor_only.to_mapping()["classifier"] == {"c_factor": [2.0, 2.0], "veto": None}


def test_with_classifier_defaults_c_factor_to_the_write_ups_five_and_keeps_a_given_one():
    assert settings(2).with_classifier().c_factor == (5.0, 5.0)
    assert settings(2, classifier={"c_factor": 2.0}).with_classifier().c_factor == (2.0, 2.0)


def test_min_pixels_accepts_zero_and_refuses_booleans_negatives_and_text():
    check_min_pixels(0)
    check_min_pixels([0, 3])
    for bad in ([1, True], -1, ["a"]):
        with pytest.raises(ValueError, match="min_pixels: expected a non-negative integer"):
            check_min_pixels(bad)
    with pytest.raises(ValueError, match="min_pixels: expected a non-negative integer"):
        min_pixels_per_class([-1, 2], 2)
