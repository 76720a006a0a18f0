"""Trainers: the task-specific halves of the training loop."""

from sever.detection.trainer import DetectionTrainer
from sever.trainer.trainer import ClassificationTrainer, SegmentationTrainer, Trainer

TRAINERS = {"segmentation": SegmentationTrainer, "classification": ClassificationTrainer,
            "detection": DetectionTrainer}

__all__ = ["Trainer", "SegmentationTrainer", "ClassificationTrainer", "DetectionTrainer", "TRAINERS"]
