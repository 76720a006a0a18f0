"""The tasks sever trains, one :class:`Task` record each, in :data:`sever.registries.TASKS`.

A config's ``task`` names the record; everything that differs between tasks (the
trainer, the default metrics, the parts only one task may use, how its checkpoints
are rebuilt and given to ``sever predict``) is read from it, never from string
comparisons elsewhere. A new task is one more record here, its trainer in
``TRAINERS`` and its parts in their registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from sever.registries import TASKS


@dataclass(frozen=True)
class Task:
    """What a task's runs are built from and what its checkpoints hold.

    Attributes:
        name: the config's ``task`` value.
        trainer: its :data:`~sever.registries.TRAINERS` entry.
        default_metrics: :data:`~sever.registries.METRICS` entries used when ``metrics`` is null.
        parts: config block (``arch``, ``data_loader``, ``augmentation``, ``loss``) -> the registry
            entry its ``type`` must be (or subclass). These entries belong to this task alone: a
            run of any other task that names one of them is refused.
        pretrained_arg: the ``arch.args`` entry that fetches pretrained weights; a checkpoint
            rebuilds its network with it set to None (the weights come from the file).
        ensemble_option: the ``sever predict/evaluate/tune`` option that takes this task's runs
            into the pixel ensemble (``-m``, ``--classifier``); None when its runs are predicted
            apart from it.
        pixel_maps: its runs predict per-pixel probability maps (the ``-m`` pixel ensemble): they
            are tiled, have segmentation post-processing to tune, and a study of them keeps
            out-of-fold maps.
        boxes: its networks predict scored boxes (``sever predict`` writes a box CSV for them
            and ``sever evaluate`` scores them with COCO mAP).
    """

    name: str
    trainer: str
    default_metrics: tuple[str, ...]
    parts: Mapping[str, str] = field(default_factory=dict)
    pretrained_arg: str = "encoder_weights"
    ensemble_option: str | None = None
    pixel_maps: bool = False
    boxes: bool = False


SEGMENTATION = Task("segmentation", trainer="SegmentationTrainer", default_metrics=("Dice",), ensemble_option="-m",
                    pixel_maps=True)
CLASSIFICATION = Task("classification", trainer="ClassificationTrainer",
                      default_metrics=("Accuracy", "PrecisionRecall"), ensemble_option="--classifier")
DETECTION = Task("detection", trainer="DetectionTrainer", default_metrics=("MeanAP",),
                 parts={"arch": "FasterRCNN", "data_loader": "VOCDataLoader", "augmentation": "DetectionTransforms",
                        "loss": "DetectionLoss"},
                 pretrained_arg="pretrained", boxes=True)
for _task in (SEGMENTATION, CLASSIFICATION, DETECTION):
    TASKS.register(_task, name=_task.name)


def task_of(config: Mapping) -> Task:
    """The :class:`Task` a run's config names (a checkpoint's config without ``task`` is segmentation's)."""
    return TASKS.get(config.get("task", SEGMENTATION.name), "task")
