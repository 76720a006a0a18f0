"""Tests written to kill mutants that ``tools/mutation.py`` found surviving (issue 18).

Each states a behaviour no earlier test pinned down; the mutant it kills is named
in the comment so that a later run's survivors can be compared.
"""

import logging

import numpy as np
import pytest
import torch

from sever.data_loader.sampling import SAMPLERS, class_balance_groups
from sever.exceptions import CheckpointError, ConfigError, DataError
from sever.model.metric import Dice, dice_per_image, iou_per_image
from sever.model.postprocess import PostProcessing, check_min_pixels, min_pixels_per_class
from sever.utils.checkpoint import atomic_torch_save, load_checkpoint
from test_metric import PRED, TRUE


def test_scores_accept_the_pixels_flattened_to_one_axis():
    # kills `pred.ndim < 3` -> `<= 3` / `< 4` in _overlap: (N, C, H*W) is as valid as (N, C, H, W)
    flat_pred, flat_true = PRED.flatten(2), TRUE.flatten(2)
    assert torch.equal(dice_per_image(flat_pred, flat_true), dice_per_image(PRED, TRUE))
    assert torch.equal(iou_per_image(flat_pred, flat_true), iou_per_image(PRED, TRUE))


def test_an_empty_metric_names_itself_in_the_error():
    # kills type(self) -> type(None) in Metric._state
    with pytest.raises(RuntimeError, match="^Dice: no batch"):
        Dice().compute()


# ---------------------------------------------------------------- post-processing


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


# ---------------------------------------------------------------- checkpoint writes


class Killed(Exception):
    """Stands for the process being killed in the middle of a write."""


def test_a_save_killed_half_way_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 1}, path)
    real_save = torch.save

    def save_half_then_die(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(50)
        raise Killed

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(Killed):
        atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_full_disk_is_a_checkpoint_error_that_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 1}, path)

    def disk_full(obj, handle, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=f"^cannot write checkpoint {path}: No space left on device; "
                                              f"{path} is unchanged$"):
        atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


# ---------------------------------------------------------------- samplers


def test_class_balancing_logs_exactly_the_empty_groups_and_names_bad_input(caplog):
    has_defect = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=bool)  # classes 1 and 2 never occur
    with caplog.at_level(logging.INFO, logger="sever.data_loader.sampling"):
        groups = class_balance_groups(has_defect)
    assert [g.tolist() for g in groups] == [[0, 2], [1]]
    assert "no images for group(s) [1, 2] (group 3 is defect-free); dropped" in caplog.text
    with pytest.raises(ValueError, match=r"^has_defect must be \(N, C\), got shape \(3,\)$"):
        class_balance_groups(np.zeros(3, dtype=bool))
    with pytest.raises(DataError, match="^class balancing: no images$"):
        class_balance_groups(np.zeros((0, 2), dtype=bool))


def test_the_shuffle_sampler_built_without_a_seed_uses_seed_zero():
    groups = [np.arange(10)]
    unseeded = SAMPLERS.build("ShuffleBatchSampler", "s", groups=groups, batch_size=3)
    seeded = SAMPLERS.build("ShuffleBatchSampler", "s", groups=groups, batch_size=3, seed=0)
    for sampler in (unseeded, seeded):
        sampler.set_epoch(1)
    assert [list(b) for b in unseeded] == [list(b) for b in seeded]


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
