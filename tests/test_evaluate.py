"""sever evaluate: the competition metric and presence figures on hand-computed cases, and on a run's split."""

import cv2
import numpy as np
import pytest
import torch
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever import experiment
from sever.exceptions import ConfigError
from sever.inference.evaluate import evaluate_csv, evaluate_predictions, parse_size, validation_split
from sever.inference.predictor import build_predictor
from sever.model.metric import Dice
from sever.model.postprocess import PostProcessing
from sever.utils.checkpoint import load_checkpoint

# Images of 2x4 pixels, 2 classes; RLE pixels count down the columns (1-2 is column 0).
TRUTH = "ImageId,ClassId,EncodedPixels\na.jpg,1,1 4\nb.jpg,2,1 8\nc.jpg,1,3 2\n"
PRED = ("ImageId,EncodedPixels,ClassId\n"
        "a.jpg,1 2,1\na.jpg,,2\n"  # class 1: 2 of 4 true pixels -> Dice 2*2/(2+4); class 2: empty/empty -> 1
        "b.jpg,5 2,1\nb.jpg,1 8,2\n"  # class 1: a false positive image -> 0; class 2: exact -> 1
        "c.jpg,,1\nc.jpg,,2\n")  # class 1: missed -> 0; class 2: empty/empty -> 1


@pytest.fixture
def csvs(tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "pred.csv").write_text(PRED)
    return tmp_path / "pred.csv", tmp_path / "truth.csv"


def test_metric_and_presence_by_hand(csvs):
    result = evaluate_csv(*csvs, classes=2, size=(2, 4))
    assert result.image_ids == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_allclose(result.dice, [[2 / 3, 1], [0, 1], [0, 1]])
    np.testing.assert_allclose(result.class_dice, [2 / 9, 1])
    assert result.mean_dice == pytest.approx((2 / 3 + 0 + 0 + 3) / 6)
    # [[TN, FP], [FN, TP]] per class
    assert result.confusion().tolist() == [[[0, 1], [1, 1]], [[2, 0], [0, 1]]]
    assert result.false_positive_images.tolist() == [1, 0]
    np.testing.assert_allclose(result.precision(), [0.5, 1.0])
    np.testing.assert_allclose(result.recall(), [0.5, 1.0])


def test_images_folder_adds_defect_free_images_and_gives_sizes(csvs, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):  # d.jpg: in neither CSV, empty/empty
        cv2.imwrite(str(images / name), np.full((2, 4), 90, np.uint8))
    result = evaluate_csv(*csvs, classes=2, image_dir=images)
    np.testing.assert_allclose(result.class_dice, [(2 / 3 + 0 + 0 + 1) / 4, 1])  # d.jpg: empty/empty = 1
    assert result.confusion()[0].tolist() == [[1, 1], [1, 1]]


def test_undefined_precision_and_recall_print_as_dash(tmp_path):
    (tmp_path / "t.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (tmp_path / "p.csv").write_text("ImageId,EncodedPixels,ClassId\nx.jpg,,1\n")
    result = evaluate_csv(tmp_path / "p.csv", tmp_path / "t.csv", classes=1, size=(2, 2))
    assert result.mean_dice == 1.0 and np.isnan(result.precision()[0]) and np.isnan(result.recall()[0])
    assert "1.0000" in result.table() and " -" in result.table()


def test_cli_scores_a_submission_in_the_original_format(csvs, tmp_path):
    original = tmp_path / "original.csv"
    original.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{image}_{cls},{rle}\n" for image, rle, cls in (line.split(",") for line in PRED.splitlines()[1:])))
    result = invoke("evaluate", "--pred", original, "--truth", csvs[1], "--size", "2x4", "--classes", 2)
    assert result.exit_code == 0, result.output
    assert f"mean Dice {(2 / 3 + 3) / 6:.4f} over 3 images x 2 classes" in result.output
    assert "class 1" in result.output and "FP" in result.output


def test_cli_usage_errors(csvs):
    assert invoke("evaluate", "--pred", csvs[0], "--truth", csvs[1]).exit_code == 1  # no --images / --size
    assert invoke("evaluate").exit_code == 2
    with pytest.raises(ConfigError, match="--images DIR"):
        evaluate_csv(*csvs, classes=2)
    with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
        parse_size("256by1600")


def test_a_runs_split_scores_as_its_training_metric(runs):
    """``evaluate -m RUN --split val`` and the trainer's Dice see the same images and agree."""
    state = load_checkpoint(runs["fpn"] / "checkpoints" / "model_best.pth")
    built = experiment.build_experiment({**state["config"], "data_loader": {
        **state["config"]["data_loader"], "args": {**state["config"]["data_loader"]["args"], "num_workers": 0}}})
    built.model.load_state_dict(state["state_dict"])
    built.model.eval()
    metric = Dice(threshold=0.5)
    with torch.inference_mode():
        for images, masks in built.data.valid_loader:
            metric.update(built.model(built.normalization(images)), masks)
    expected = metric.compute()

    predictor = build_predictor([runs["fpn"]], device="cpu")
    paths, annotations = validation_split(predictor.models[0].config)
    assert [p.name for p in paths] == [p.name for p in built.data.valid_dataset.paths]
    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0, "one_class_per_pixel": False}, 4)
    result = evaluate_predictions(predictor, settings, paths, annotations, num_workers=0)
    assert len(result.image_ids) == 6
    assert result.mean_dice == pytest.approx(expected["dice_mean"], abs=2e-3)
