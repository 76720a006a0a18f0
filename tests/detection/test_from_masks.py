"""Segmentation masks as detections: components scored by their mean probability, a segmentation checkpoint
evaluated as a detector."""

import cv2
import numpy as np
import pytest
import torch
from inference_runs import invoke

from sever import experiment
from sever.data_loader.rle import rle_encode
from sever.detection.from_masks import evaluate_segmentation_as_detector, masks_to_boxes
from sever.detection.predict import predict_boxes
from sever.exceptions import CheckpointError, ConfigError
from sever.model.model import build_model


def constant_segmenter(config, path, class_logits):
    """A segmentation checkpoint whose network outputs ``class_logits`` at every pixel of any image."""
    model = build_model(config["arch"], len(class_logits))
    head = model.state_dict()
    weight, bias = [key for key in head if key.endswith((".weight", ".bias"))][-2:]
    head[weight].zero_()
    head[bias].copy_(torch.tensor(class_logits))
    torch.save({"state_dict": head, "config": config, "epoch": 0}, path)
    return path


def test_masks_to_boxes_scores_components_by_mean_probability():
    probabilities = np.zeros((2, 20, 30), np.float32)
    probabilities[0, 2:5, 3:9] = 0.8       # 3 x 6 component
    probabilities[0, 4, 8] = 1.0           # inside it: mean rises
    probabilities[0, 10:12, 20:21] = 0.6   # 2-pixel component
    probabilities[1, 15:20, 25:30] = 0.9
    probabilities[1, 0, 0] = 0.4           # below the threshold
    boxes, labels, scores = masks_to_boxes(probabilities, threshold=0.5)
    assert boxes.tolist() == [[3, 2, 9, 5], [20, 10, 21, 12], [25, 15, 30, 20]]
    assert labels.tolist() == [0, 0, 1]
    assert scores == pytest.approx([(17 * 0.8 + 1.0) / 18, 0.6, 0.9])
    boxes, labels, _ = masks_to_boxes(probabilities, threshold=0.5, min_pixels=3)
    assert labels.tolist() == [0, 1]
    assert masks_to_boxes(np.zeros((3, 4, 4)))[0].shape == (0, 4)


def test_segmentation_checkpoint_evaluated_as_a_detector(make_config, tmp_path):
    config = experiment.prepare_config(make_config())
    # class 1 everywhere, the others nowhere: one whole-image box of class 1 per image, score 1
    checkpoint = constant_segmenter(config, tmp_path / "seg.pth", [20.0, -20.0, -20.0, -20.0])
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.full((64, 256), 100, np.uint8))
    whole, square = np.ones((64, 256), np.uint8), np.zeros((64, 256), np.uint8)
    square[10:20, 30:40] = 1
    (tmp_path / "truth.csv").write_text("ImageId,ClassId,EncodedPixels\n"
                                        f"a.png,1,{rle_encode(whole)}\nb.png,1,{rle_encode(whole)}\n"
                                        f"b.png,2,{rle_encode(square)}\n")
    results = evaluate_segmentation_as_detector(checkpoint, images, csv=tmp_path / "truth.csv")
    # class 1: both whole-image boxes found exactly; class 2: its one box missed; classes 3-4: no truth
    assert (results["ap_0"], results["ar_0"], results["ap_1"], results["ar_1"]) == pytest.approx((1, 1, 0, 0))
    assert (results["map"], results["map_50"], results["map_75"], results["mar_100"]) == pytest.approx(
        (0.5, 0.5, 0.5, 0.5))
    assert sorted(key for key in results if key.startswith("ap_")) == ["ap_0", "ap_1"]  # classes seen
    with pytest.raises(ConfigError, match="exactly one ground truth"):
        evaluate_segmentation_as_detector(checkpoint, images)
    with pytest.raises(CheckpointError, match="not a detector"):
        next(predict_boxes([checkpoint], images))
    # The same through the command line, printing the mAP table.
    result = invoke("evaluate", "-m", checkpoint, "--boxes", "--images", images,
                    "--truth", tmp_path / "truth.csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "= 0.500" in result.output and "AP / AR per class" in result.output
