"""The report's curves read back from the data each figure saves beside its PNG (``<name>.json``)."""

import json

import numpy as np
import pytest

from sever.inference.evaluate import Evaluation
from sever.report import figures
from sever.report.history import History

LOSS_PARTS = ("loss", "bce", "dice_loss")


def one_epoch_history(metrics=("dice",), classes=4) -> History:
    """One epoch of what a run with BCEDiceLoss and ``metrics`` logs (DefectDice and Presence add families)."""
    values = {}
    for split in ("train", "val"):
        for part in LOSS_PARTS:
            values[f"{split}_{part}"] = {1: 0.5}
        for family in metrics:
            for c in range(classes):
                values[f"{split}_{family}_{c}"] = {1: 0.1 * c}
            values[f"{split}_{family}_mean"] = {1: 0.2}
        values[f"{split}_images_per_s"] = {1: 30.0}
    return History(values=values, lr={"encoder": {1: 1e-3}, "decoder": {1: 3e-3}}, source="test")


def plotted(folder, name) -> list[dict]:
    return json.loads((folder / f"{name}.json").read_text())["axes"]


def lines(panels) -> list[dict]:
    return [line for panel in panels for line in panel["lines"]]


def test_one_epoch_draws_a_marker_on_every_curve(tmp_path):
    history = one_epoch_history()
    for draw, name in ((figures.loss_curves, "loss"), (figures.dice_curves, "dice"), (figures.learning_rate, "lr")):
        assert draw(history, tmp_path) == f"{name}.png"
        drawn = lines(plotted(tmp_path, name))
        assert drawn, name
        for line in drawn:  # a single point with no marker draws nothing
            assert line["marker"] not in ("None", "", " ") and len(line["x"]) == 1, (name, line)


def test_every_loss_part_is_drawn_training_dashed_validation_solid_in_one_colour(tmp_path):
    figures.loss_curves(one_epoch_history(), tmp_path)
    drawn = {line["label"]: line for line in lines(plotted(tmp_path, "loss"))}
    for part in LOSS_PARTS:
        train, val = drawn[f"train {part.replace('_', ' ')}"], drawn[f"val {part.replace('_', ' ')}"]
        assert (train["linestyle"], val["linestyle"]) == ("--", "-")
        assert train["color"] == val["color"]
    assert len({line["color"] for line in drawn.values()}) == len(LOSS_PARTS)
    assert not any("images" in label for label in drawn)  # throughput is no loss


@pytest.mark.parametrize("metrics", [("dice",), ("dice", "dice_defect"), ("dice", "dice_defect", "presence_precision",
                                                                       "presence_recall")])
def test_no_panel_holds_more_than_eight_lines_and_colours_do_not_repeat_in_one(tmp_path, metrics):
    history = one_epoch_history(metrics)
    figures.dice_curves(history, tmp_path, ["1 a", "2 b", "3 c", "4 d"])
    figures.score_curves(history, tmp_path, ["1 a", "2 b", "3 c", "4 d"])
    drawn = []
    for name in ("dice", "scores"):
        if (tmp_path / f"{name}.json").exists():
            for panel in plotted(tmp_path, name):
                assert len(panel["lines"]) <= figures.MAX_LINES, panel["title"]
                assert panel["xlabel"] == "epoch" and panel["ylabel"]
                solid = [line["color"] for line in panel["lines"] if line["linestyle"] == "-"]
                assert len(solid) == len(set(solid)), panel["title"]
                drawn += panel["lines"]
    expected = {f"{split}_{family}_{suffix}" for split in ("train", "val") for family in metrics
                for suffix in [*range(4), "mean"]}
    assert len(drawn) == len(expected)  # every value once, none lost by the split into panels
    class_lines = [line for line in drawn if line["label"].endswith("1 a")]
    assert {line["color"] for line in class_lines} == {figures.to_hex(figures._colour(0))}


def test_the_learning_rate_axis_counts_epochs(tmp_path):
    figures.learning_rate(one_epoch_history(), tmp_path)
    (panel,) = plotted(tmp_path, "lr")
    assert panel["xlabel"] == "epoch" and panel["ylabel"] == "learning rate"
    assert sorted(line["label"] for line in panel["lines"]) == ["decoder", "encoder"]


def test_tensorboard_tags_named_by_class_are_read_back_as_numbers():
    from sever.report.history import numbered

    names = ["pits", "inclusion", "rolled_pits"]
    assert numbered("val_dice_rolled_pits", names) == "val_dice_2"
    assert numbered("val_dice_defect_pits", names) == "val_dice_defect_0"
    assert numbered("val_dice_mean", names) == "val_dice_mean"


def test_mosaics_rank_by_the_dice_of_the_classes_present():
    from sever.report.validation import ranked

    # image a: defect of class 2 missed (Dice 0), the three empty classes right: mean over all classes 0.75
    # image b: both classes present found with Dice 0.6: mean over all 0.8 but 0.6 over the present ones
    # image c: nothing true, nothing predicted: not ranked
    dice = np.array([[1, 1, 0, 1], [0.6, 1, 1, 0.6], [1, 1, 1, 1]], float)
    actual = np.array([[0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]], bool)
    evaluation = Evaluation(["a", "b", "c"], dice, actual.copy(), actual, ["1", "2", "3", "4"])
    evaluation.predicted[0, 2] = False
    assert ranked(evaluation, 1) == ([1], [0])
    assert ranked(evaluation, 5) == ([1, 0], [])  # the worst never repeat the best; c is in neither
