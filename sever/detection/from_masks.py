"""A segmentation model scored as a detector, so one COCO mAP table compares both approaches.

Every connected component (8-connectivity) of a class's thresholded probability
map becomes one box of that class: the component's bounding rectangle in
pixel-edge coordinates, scored by the **mean** probability over its pixels. The
mean ranks a component by how sure the model is of all of it; the max would let
one confident pixel vouch for a large doubtful blob.

Ground truth is the boxes of VOC annotation files, or, for a mask dataset (mask
folder or Kaggle CSV), the connected components of the true masks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from sever.data_loader.datasets import read_grey
from sever.data_loader.mask_folder import read_mask_folder
from sever.data_loader.sources import read_csv_folder
from sever.data_loader.voc import read_voc_folder
from sever.detection.metric import MeanAP
from sever.exceptions import CheckpointError, ConfigError
from sever.inference.checkpoints import as_loaded_model, load_network
from sever.tasks import SEGMENTATION, task_of
from sever.inference.predictor import Predictor
from sever.model.postprocess import PROB_SCALE

logger = logging.getLogger(__name__)


def masks_to_boxes(probabilities: np.ndarray, threshold: float = 0.5,
                   min_pixels: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scored boxes from per-class probability maps.

    Args:
        probabilities: ``(C, H, W)`` float probabilities (or 0/1 masks).
        threshold: a pixel belongs to class c when its probability is above this.
        min_pixels: components with fewer pixels are dropped.

    Returns:
        ``(boxes (N, 4) float32 (x0, y0, x1, y1), labels (N,) int64 0-based, scores (N,) float32)``,
        class by class, components in OpenCV's labelling order.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    boxes, labels, scores = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for c, plane in enumerate(probabilities):
        count, components, stats, _ = cv2.connectedComponentsWithStats((plane > threshold).view(np.uint8),
                                                                        connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= max(min_pixels, 1)) + 1
        if not keep.size:
            continue
        sums = np.bincount(components.ravel(), weights=plane.ravel(), minlength=count)
        x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
        boxes.append(np.stack([x, y, x + stats[keep, cv2.CC_STAT_WIDTH], y + stats[keep, cv2.CC_STAT_HEIGHT]], 1))
        labels.append(np.full(keep.size, c, np.int64))
        scores.append(sums[keep] / stats[keep, cv2.CC_STAT_AREA])
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(labels),
            np.concatenate(scores).astype(np.float32))


def _ground_truth(image_dir: Path, annotation_dir, mask_dir, csv, class_names: Sequence[str],
                  voc_class_names: Sequence[str] | None) -> tuple[list[Path], list[dict[str, torch.Tensor]]]:
    """Image paths and their true boxes, labels indexing ``class_names`` (the segmentation model's classes)."""
    if sum(source is not None for source in (annotation_dir, mask_dir, csv)) != 1:
        raise ConfigError("give exactly one ground truth: a VOC annotation folder, a mask folder or a CSV")
    if annotation_dir is not None:
        voc_names = list(voc_class_names or class_names)
        paths, voc = read_voc_folder(image_dir, annotation_dir, voc_names)
        index = {voc_names.index(name): k for k, name in enumerate(class_names) if name in voc_names}
        if not index:
            raise ConfigError(f"none of the model's classes ({', '.join(class_names)}) is among the "
                              f"annotations' ({', '.join(voc_names)})")
        truth = []
        for boxes in voc:  # boxes of classes the model does not know are left out
            keep = np.isin(boxes.labels, list(index))
            truth.append({"boxes": torch.from_numpy(boxes.boxes[keep]),
                          "labels": torch.tensor([index[int(k)] for k in boxes.labels[keep]], dtype=torch.int64)})
        return paths, truth
    if mask_dir is not None:
        annotations, paths = read_mask_folder(image_dir, mask_dir, len(class_names), class_names)
    else:
        annotations, paths = read_csv_folder(Path(image_dir), Path(csv), len(class_names))
    truth = []
    for i, path in enumerate(paths):
        masks = annotations.decode(i, read_grey(path).shape)
        boxes, labels, _ = masks_to_boxes(masks.transpose(2, 0, 1))
        truth.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
    return paths, truth


def evaluate_segmentation_as_detector(checkpoint: str | Path, image_dir: str | Path, *,
                                      annotation_dir: str | Path | None = None, mask_dir: str | Path | None = None,
                                      csv: str | Path | None = None, voc_class_names: Sequence[str] | None = None,
                                      threshold: float = 0.5, min_pixels: int = 0,
                                      device: str | torch.device = "cpu") -> dict[str, float]:
    """COCO box metrics (:class:`~sever.detection.metric.MeanAP`) of a segmentation checkpoint.

    Args:
        checkpoint: a ``task: segmentation`` checkpoint; its config's ``class_names``
            (or ``1``..``C``) name its classes.
        image_dir: the images.
        annotation_dir, mask_dir, csv: the ground truth, exactly one: VOC XML files,
            a mask folder, or a Kaggle CSV (either format).
        voc_class_names: every class name the XML files use (default: the model's);
            boxes of classes the model does not have are left out.
        threshold, min_pixels: as in :func:`masks_to_boxes`.
        device: where the model runs.

    Returns:
        :meth:`MeanAP.compute`'s results, classes numbered as the model's channels
        (format them with :func:`~sever.detection.metric.map_table`).
    """
    model, config, source, _ = load_network(checkpoint, device)
    if task_of(config) is not SEGMENTATION:
        raise CheckpointError(f"{checkpoint}: a {config['task']} model, not a segmentation model")
    class_names = config["class_names"] or [str(k + 1) for k in range(config["classes"])]
    paths, truth = _ground_truth(Path(image_dir), annotation_dir, mask_dir, csv, class_names, voc_class_names)
    predictor = Predictor([as_loaded_model(model, config, source, device)], device=device)
    metric = MeanAP()
    targets = iter(truth)
    for batch in predictor.predict_files(paths, description="segmenting"):
        for probs in batch.probs.cpu().numpy():
            boxes, labels, scores = masks_to_boxes(probs / np.float32(PROB_SCALE), threshold, min_pixels)
            metric.update([{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                            "scores": torch.from_numpy(scores)}], [next(targets)])
    return metric.compute()
