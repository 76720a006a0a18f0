"""Detection prediction's own steps: a grey image as the detector's input, and an ensemble's detections pooled
with per-class non-maximum suppression (the trained run's predictions: tests/detection/test_trainer.py)."""

import numpy as np
import torch

from sever.detection.predict import ENSEMBLE_IOU, grey_as_rgb, merge_detections


def detections(boxes, labels, scores) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_a_grey_image_becomes_three_equal_channels_in_0_1():
    image = np.array([[0, 51], [255, 102]], np.uint8)
    rgb = grey_as_rgb(image)
    assert rgb.shape == (3, 2, 2) and rgb.dtype == torch.float32 and rgb.is_contiguous()
    for channel in rgb:
        assert torch.allclose(channel, torch.tensor([[0.0, 0.2], [1.0, 0.4]]))


def test_overlapping_boxes_of_one_class_keep_the_best_scored_and_other_classes_are_kept_apart():
    first = detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1], [0.6, 0.9])
    # the same class-0 box shifted by one pixel (IoU 0.82) scored higher; a class-1 box on class 0's place
    second = detections([[1, 0, 11, 10], [0, 0, 10, 10]], [0, 1], [0.8, 0.3])
    merged = merge_detections([first, second])
    kept = sorted((label, round(score, 6), box) for label, score, box in
                  zip(merged["labels"].tolist(), merged["scores"].tolist(), merged["boxes"].tolist()))
    assert kept == [(0, 0.8, [1.0, 0.0, 11.0, 10.0]), (1, 0.3, [0.0, 0.0, 10.0, 10.0]), (1, 0.9, [50.0, 50.0, 60.0, 60.0])]
    assert (merged["scores"][:-1] >= merged["scores"][1:]).all(), "highest score first"


def test_boxes_overlapping_less_than_the_ensemble_iou_are_all_kept():
    # IoU of [0, 0, 10, 10] and [5, 0, 15, 10]: 50 / 150 = 1/3, below ENSEMBLE_IOU
    assert ENSEMBLE_IOU > 1 / 3
    merged = merge_detections([detections([[0, 0, 10, 10]], [0], [0.9]), detections([[5, 0, 15, 10]], [0], [0.8])])
    assert len(merged["boxes"]) == 2
    assert len(merge_detections([detections([[0, 0, 10, 10]], [0], [0.9])], iou=0.0)["boxes"]) == 1
