"""Trainers: the task-specific halves of the training loop."""

from sever.trainer.trainer import ClassificationTrainer, SegmentationTrainer, Trainer

TRAINERS = {"segmentation": SegmentationTrainer, "classification": ClassificationTrainer}

__all__ = ["Trainer", "SegmentationTrainer", "ClassificationTrainer", "TRAINERS"]
