"""Scored boxes from detector checkpoints, drawn on the images or written as a CSV.

For ``sever predict`` and ``sever evaluate`` on ``task: detection`` checkpoints::

    from sever.detection.predict import evaluate_detector, predict_to_csv
    predict_to_csv(checkpoints, image_dir, "boxes.csv", threshold=0.5, draw_dir="drawn/")
    results = evaluate_detector(checkpoints, image_dir, annotation_dir)   # MeanAP results
    print(map_table(results, class_names))                    # sever.detection.metric

Several checkpoints form an ensemble: their detections of an image are pooled
and overlapping boxes of one class (IoU > 0.5) merged by non-maximum suppression.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms

from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.voc import read_voc_folder
from sever.detection.metric import MeanAP
from sever.exceptions import CheckpointError
from sever.inference.checkpoints import load_network, run_config
from sever.utils.progress import progress
from sever.utils.visualization import draw_boxes

logger = logging.getLogger(__name__)

ENSEMBLE_IOU = 0.5
BOX_COLUMNS = ("ImageId", "ClassId", "ClassName", "Score", "XMin", "YMin", "XMax", "YMax")


def grey_as_rgb(image: np.ndarray) -> torch.Tensor:
    """A ``(H, W)`` uint8 grey image as the detector's ``(3, H, W)`` float input in ``[0, 1]``."""
    return torch.from_numpy(image).float().div_(255).expand(3, -1, -1).contiguous()


def merge_detections(detections: Sequence[dict[str, torch.Tensor]], iou: float = ENSEMBLE_IOU) -> dict[str, torch.Tensor]:
    """Pool several models' detections of one image; per class, non-maximum suppression at ``iou``."""
    pooled = {key: torch.cat([d[key] for d in detections]) for key in ("boxes", "labels", "scores")}
    keep = batched_nms(pooled["boxes"].float(), pooled["scores"].float(), pooled["labels"], iou)
    return {key: value[keep] for key, value in pooled.items()}


def predict_boxes(checkpoints: Sequence[str | Path], image_dir: str | Path, threshold: float = 0.5,
                  device: str | torch.device = "cpu", names: Sequence[str] | None = None,
                  ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Detect defects in the images of ``image_dir``.

    Args:
        checkpoints: one or more ``task: detection`` checkpoints (an ensemble when several).
        image_dir: the images.
        threshold: keep detections scoring at least this.
        device: where the models run.
        names: image file names to predict (default: all in ``image_dir``).

    Yields:
        ``(image name, {"boxes" (N, 4) float32 pixels, "labels" (N,) int64 0-based,
        "scores" (N,) float32})`` per image, best score first.

    Raises:
        CheckpointError: a checkpoint is not a detector's, or the ensemble's classes differ.
    """
    models = [load_network(path, device)[:2] for path in checkpoints]
    for path, (_, config) in zip(checkpoints, models):
        if config["task"] != "detection":
            raise CheckpointError(f"{path}: a {config['task']} model, not a detector (task: detection)")
        if config["class_names"] != models[0][1]["class_names"]:
            raise CheckpointError(f"{path}: its class_names differ from {checkpoints[0]}'s; an ensemble needs the same")
    for name in progress(list(names) if names is not None else list_images(image_dir), "detecting"):
        image = grey_as_rgb(read_grey(Path(image_dir) / name)).to(device)
        with torch.inference_mode():
            found = [model([image])[0] for model, _ in models]
        merged = merge_detections(found) if len(found) > 1 else found[0]
        keep = merged["scores"] >= threshold
        order = torch.argsort(merged["scores"][keep], descending=True)
        yield name, {key: value[keep][order].cpu().numpy() for key, value in merged.items()}


def predict_to_csv(checkpoints: Sequence[str | Path], image_dir: str | Path, csv_path: str | Path,
                   threshold: float = 0.5, device: str | torch.device = "cpu",
                   draw_dir: str | Path | None = None) -> tuple[int, int]:
    """Run :func:`predict_boxes`; write the boxes to ``csv_path`` and, with ``draw_dir``, ``draw_dir/NAME.png``.

    The CSV has one row per box: ``ImageId,ClassId,ClassName,Score,XMin,YMin,XMax,YMax``
    with ``ClassId`` 1-based (as in the Kaggle CSVs) and pixel-edge coordinates.
    Returns ``(images, boxes)`` counts.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if draw_dir is not None:
        Path(draw_dir).mkdir(parents=True, exist_ok=True)
    class_names = run_config(checkpoints[0])["class_names"]
    images = boxes = 0
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(BOX_COLUMNS)
        for name, found in predict_boxes(checkpoints, image_dir, threshold, device):
            images, boxes = images + 1, boxes + len(found["boxes"])
            for box, label, score in zip(found["boxes"], found["labels"], found["scores"]):
                caption = class_names[label] if class_names else str(int(label) + 1)
                writer.writerow([name, int(label) + 1, caption, f"{score:.4f}", *(f"{v:.1f}" for v in box)])
            if draw_dir is not None:
                drawn = draw_boxes(read_grey(Path(image_dir) / name), found["boxes"], found["labels"],
                                   found["scores"], class_names)
                cv2.imwrite(str(Path(draw_dir) / f"{Path(name).stem}.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    logger.info("wrote %d boxes of %d images to %s", boxes, images, csv_path)
    return images, boxes


def evaluate_detector(checkpoints: Sequence[str | Path], image_dir: str | Path, annotation_dir: str | Path,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """COCO box metrics (:class:`~sever.detection.metric.MeanAP`) of detector checkpoints on a VOC folder.

    Every detection the model keeps (``score_threshold`` of its ``arch``) is scored,
    as COCO evaluation expects; the XML files' class names must be the checkpoint's ``class_names``.
    """
    class_names = run_config(checkpoints[0])["class_names"]
    paths, truth = read_voc_folder(image_dir, annotation_dir, class_names)
    metric = MeanAP()
    found = predict_boxes(checkpoints, image_dir, 0.0, device, names=[path.name for path in paths])
    for (_, detections), boxes in zip(found, truth):
        metric.update([{key: torch.from_numpy(value) for key, value in detections.items()}],
                      [{"boxes": torch.from_numpy(boxes.boxes), "labels": torch.from_numpy(boxes.labels)}])
    return metric.compute()
