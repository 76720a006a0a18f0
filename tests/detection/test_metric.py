"""COCO-style mAP on hand-made boxes: known answers, the per-class table and recall limits, misuse."""

import pytest
import torch

from sever.detection.metric import MeanAP, map_table


def box(*xyxy):
    return torch.tensor([xyxy], dtype=torch.float32)


def coco(detections, targets):
    metric = MeanAP()
    metric.update(detections, targets)
    return metric.compute()


def test_map_known_answers():
    truth = [{"boxes": box(10, 10, 60, 60), "labels": torch.tensor([0])}]
    exact = [{"boxes": box(10, 10, 60, 60), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert coco(exact, truth)["map"] == pytest.approx(1.0)
    # IoU 50*31/50/50 = 0.62: a hit at IoU 0.50, 0.55 and 0.60 of the ten thresholds.
    shifted = [{"boxes": box(10, 10, 60, 41), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    results = coco(shifted, truth)
    assert (results["map"], results["map_50"], results["map_75"]) == pytest.approx((0.3, 1.0, 0.0))
    # A false positive ranked above the hit: precision 1/2 at recall 1.
    ranked = [{"boxes": torch.cat([box(100, 100, 120, 120), box(10, 10, 60, 60)]),
               "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    assert coco(ranked, [{"boxes": box(10, 10, 60, 60), "labels": torch.tensor([0])}])["map_50"] == pytest.approx(0.5)


def test_per_class_table_and_recall_limits():
    truth = [{"boxes": torch.cat([box(0, 0, 20, 20), box(50, 50, 90, 90)]), "labels": torch.tensor([0, 1])},
             {"boxes": box(5, 5, 25, 25), "labels": torch.tensor([0])}]
    found = [{"boxes": box(0, 0, 20, 20), "scores": torch.tensor([0.8]), "labels": torch.tensor([0])},
             {"boxes": box(5, 5, 25, 25), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    results = coco(found, truth)
    assert (results["ap_0"], results["ar_0"], results["ap_1"], results["ar_1"]) == pytest.approx((1, 1, 0, 0))
    assert results["map"] == pytest.approx(0.5) and results["mar_100"] == pytest.approx(0.5)
    assert results["map_large"] == -1  # no box is larger than 96 x 96
    table = map_table(results, ["crazing", "patches"])
    assert "Average Precision (AP) @[" not in table  # pycocotools' exact wording is not copied ...
    assert "Average Precision @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500" in table
    assert "| 1   | crazing              |   1.000 |   1.000 |" in table
    assert "| Avg |                      |   0.500 |   0.500 |" in table


def test_metric_before_any_batch_and_mismatched_lists():
    metric = MeanAP()
    assert metric.empty
    with pytest.raises(RuntimeError):
        metric.compute()
    with pytest.raises(ValueError, match="2 detections for 1 targets"):
        metric.update([{}, {}], [{}])
