"""The detection trainer: the supervised loop and training step of :class:`~sever.trainer.trainer.Trainer`
for box models; this module supplies the forward pass, the loss and the box visuals.

A batch is ``(images, targets)`` lists (see :mod:`sever.detection.data`). In
training the model returns its loss dict, which the ``loss`` block
(``DetectionLoss``) weighs; validation runs the model in evaluation mode and feeds
its detections to the metrics (``MeanAP``). torchvision's detectors give no loss
in evaluation mode, so there is no validation loss: monitor ``max val_map``.
In distributed training each rank validates its share of the images and
torchmetrics gathers the metric's state across ranks when it computes.
TensorBoard shows validation images with true boxes (top) and detections scoring
at least ``vis_threshold`` (bottom).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sever.registries import TRAINERS
from sever.trainer.trainer import Trainer
from sever.utils.visualization import draw_boxes, to_uint8_image

VIS_THRESHOLD = 0.5


@TRAINERS.register
class DetectionTrainer(Trainer):
    """Trains :class:`~sever.model.detection.FasterRCNN` models; arguments as :class:`Trainer`."""

    def _to_device(self, images, targets):
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{key: value.to(self.device, non_blocking=True) for key, value in t.items()} for t in targets]
        return images, targets

    def _forward_loss(self, images, targets) -> tuple[dict[str, torch.Tensor], Any]:
        # A detector in training mode returns its losses, not detections: nothing for the metrics.
        return self.loss(self.network(images, targets)), None

    def _valid_forward(self, model, images, targets) -> tuple[dict[str, torch.Tensor], Any]:
        return {}, model(images)

    def _valid_log(self, sums: dict[str, float], batches: int) -> dict[str, float]:
        # MeanAP gathers its state across ranks itself when it computes.
        return {f"val_{k}": v for m in self.metrics if not m.empty for k, v in m.compute().items()}

    def _collect_visuals(self, batch_index, images, targets, detections) -> None:
        take = self._visual_room(batch_index)
        if not take:
            return
        names = self.config["class_names"]
        for image, target, found in list(zip(images, targets, detections))[:take]:
            grey = to_uint8_image(image[0].float().cpu().numpy())
            keep = found["scores"] >= VIS_THRESHOLD
            truth = draw_boxes(grey, target["boxes"].cpu().numpy(), target["labels"].cpu().numpy(), None, names)
            predicted = draw_boxes(grey, found["boxes"][keep].float().cpu().numpy(),
                                   found["labels"][keep].cpu().numpy(), found["scores"][keep].float().cpu().numpy(),
                                   names)
            self._visuals.append(np.concatenate([truth, predicted], axis=0))

    def _write_visuals(self, epoch: int) -> None:
        if self.writer is None or not getattr(self, "_visuals", None):
            return
        tag = "val/boxes_truth_above_detections"
        if len({visual.shape for visual in self._visuals}) == 1:
            self.writer.add_images(tag, np.stack(self._visuals), epoch, dataformats="NHWC")
        else:  # images of different sizes cannot share a grid
            for i, visual in enumerate(self._visuals):
                self.writer.add_image(f"{tag}/{i}", visual, epoch, dataformats="HWC")
        self._visuals = []
