"""The detection trainer: the supervised loop of :class:`~sever.trainer.trainer.Trainer` for box models.

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

import contextlib

import numpy as np
import torch
from tqdm import tqdm

from sever.detection.predict import draw_boxes
from sever.registries import TRAINERS
from sever.trainer.trainer import Trainer
from sever.utils.device import autocast
from sever.utils.visualization import to_uint8_image

VIS_THRESHOLD = 0.5


@TRAINERS.register
class DetectionTrainer(Trainer):
    """Trains :class:`~sever.model.detection.FasterRCNN` models; arguments as :class:`Trainer`."""

    def _to_device(self, images, targets):
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{key: value.to(self.device, non_blocking=True) for key, value in t.items()} for t in targets]
        return images, targets

    def _train_step(self, images, targets, step: int, n_batches: int, epoch: int) -> dict[str, float]:
        images, targets = self._to_device(images, targets)
        update = self._at_update_boundary(step, n_batches)
        sync = self.network.no_sync() if self.dist.enabled and not update else contextlib.nullcontext()
        with sync:
            with autocast(self.amp, self.device):
                parts = self.loss(self.network(images, targets))
            if not torch.isfinite(parts["loss"]):
                return self._non_finite(parts["loss"], step, epoch)
            self.scaler.scale(parts["loss"] / self.accumulate).backward()
        if update:
            self._optimizer_step()
        return {key: float(value.detach()) for key, value in parts.items()}

    @torch.inference_mode()
    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        model = self._begin_validation()
        self._visuals = []
        for images, targets in tqdm(self.valid_loader, desc="validation", leave=False, dynamic_ncols=True,
                                    disable=None):
            images, targets = self._to_device(images, targets)
            with autocast(self.amp, self.device):
                detections = model(images)
            for metric in self.metrics:
                metric.update(detections, targets)
            self._collect_boxes(images, targets, detections)
        self._write_visuals(epoch)
        return {f"val_{k}": v for m in self.metrics if not m.empty for k, v in m.compute().items()}

    def _collect_boxes(self, images, targets, detections) -> None:
        if self.writer is None or len(self._visuals) >= self.vis_images:
            return
        names = self.config["class_names"]
        for image, target, found in list(zip(images, targets, detections))[: self.vis_images - len(self._visuals)]:
            grey = to_uint8_image(image[0].float().cpu().numpy())
            keep = found["scores"] >= VIS_THRESHOLD
            truth = draw_boxes(grey, target["boxes"].cpu().numpy(), target["labels"].cpu().numpy(), None, names)
            predicted = draw_boxes(grey, found["boxes"][keep].float().cpu().numpy(),
                                   found["labels"][keep].cpu().numpy(), found["scores"][keep].float().cpu().numpy(),
                                   names)
            self._visuals.append(np.concatenate([truth, predicted], axis=0))

    def _write_visuals(self, epoch: int) -> None:
        if self.writer is None or not self._visuals:
            return
        tag = "val/boxes_truth_above_detections"
        if len({visual.shape for visual in self._visuals}) == 1:
            self.writer.add_images(tag, np.stack(self._visuals), epoch, dataformats="NHWC")
        else:  # images of different sizes cannot share a grid
            for i, visual in enumerate(self._visuals):
                self.writer.add_image(f"{tag}/{i}", visual, epoch, dataformats="HWC")
        self._visuals = []
