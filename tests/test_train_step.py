"""The one training step every task shares: a task supplies its forward and loss, the step does the rest.

Each task here learns one scale ``s`` so that ``s * image`` matches its target, with
a mean squared error: a new task (only its forward and loss), the segmentation trainer (its
network and loss as given) and the detection trainer (a stand-in for a detector in
training mode, which returns its loss dict).
"""

import pytest
import torch
from torch import nn

from sever.exceptions import TrainingError
from sever.model.detection import DetectionLoss
from sever.trainer.trainer import SegmentationTrainer, Trainer  # before the detection trainer, which it imports
from sever.detection.trainer import DetectionTrainer  # noqa: E402,I001
from sever.detection.metric import MeanAP
from sever.utils.config import TRAINER_SCHEMA, validate_section
from sever.utils.run import RunPaths


class Scale(nn.Module):
    """``s * x`` with one learnt ``s``, starting at 1."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x


class ScaleTask(Trainer):
    """A task added without touching the step: only its forward and loss, the mean squared error."""

    def _forward_loss(self, images, targets):
        return {"loss": (self.network(images) - targets).pow(2).mean()}, None


class StandInDetector(Scale):
    """Answers like a torchvision detector: in training ``(images, targets)`` -> its losses; in evaluation
    ``images`` -> per image one box of class 0 over the top-left 2x2 pixels, scoring 0.9."""

    def forward(self, images, targets=None):
        if not self.training:
            box = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([0]),
                   "scores": torch.tensor([0.9])}
            return [dict(box) for _ in images]
        errors = [(self.scale * image - target["pixels"]).pow(2).mean() for image, target in zip(images, targets)]
        return {"loss_classifier": torch.stack(errors).mean()}


def as_detection_batch(images, targets):
    return list(images), [{"pixels": target} for target in targets]


TASKS = {
    "new task": (ScaleTask, Scale, None, lambda images, targets: (images, targets)),
    "segmentation": (SegmentationTrainer, Scale, nn.MSELoss(), lambda images, targets: (images, targets)),
    "detection": (DetectionTrainer, StandInDetector, DetectionLoss(), as_detection_batch),
}


def make_trainer(task, tmp_path, **options):
    trainer_class, network_class, loss, _ = TASKS[task]
    network = network_class()
    config = {"trainer": validate_section({"epochs": 1, "tensorboard": False, **options}, TRAINER_SCHEMA, "trainer."),
              "class_names": None}
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    return trainer_class(network, loss, [], optimizer, None, config, RunPaths(tmp_path), None, None,
                         torch.device("cpu"))


def tensors(seed, size=2):
    """``(images, targets)``, both ``(size, 1, 4, 4)`` float: targets near three times the images."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 1, 4, 4, generator=generator)
    return images, 3 * images + torch.rand(size, 1, 4, 4, generator=generator)


def batch(task, images, targets):
    """The batch as the task's loader yields it."""
    return TASKS[task][3](images, targets)


@pytest.mark.parametrize("task", list(TASKS))
def test_accumulated_steps_update_once_with_the_mean_gradient(task, tmp_path):
    first, second = tensors(1), tensors(2)
    accumulating = make_trainer(task, tmp_path, accumulate_steps=2)
    parts = accumulating._train_step(*batch(task, *first), step=0, n_batches=2, epoch=1)
    assert parts["loss"] == pytest.approx(float((first[0] - first[1]).pow(2).mean())), "the logged loss is whole"
    assert accumulating.model.scale.item() == 1.0, "no optimiser step before the update boundary"
    halved = accumulating.model.scale.grad.clone()
    accumulating._train_step(*batch(task, *second), step=1, n_batches=2, epoch=1)

    images, targets = first
    gradient = (2 * (images - targets) * images).mean()  # d/ds of the mean of (s x - y)^2 at s = 1
    assert torch.allclose(halved, gradient / 2), "the loss is divided by accumulate_steps"

    # Two equal batches accumulated make the optimiser step of one batch holding both.
    whole = make_trainer(task, tmp_path)
    both = [torch.cat(pair) for pair in zip(first, second)]
    whole._train_step(*batch(task, *both), step=0, n_batches=1, epoch=1)
    assert accumulating.model.scale.item() != 1.0
    assert accumulating.model.scale.item() == pytest.approx(whole.model.scale.item(), abs=1e-6)


@pytest.mark.parametrize("task", list(TASKS))
def test_a_non_finite_loss_stops_training_at_the_next_read_naming_its_first_batch(task, tmp_path):
    images, targets = tensors(3)
    trainer = make_trainer(task, tmp_path)
    clean = trainer._train_step(*batch(task, images, targets), step=0, n_batches=4, epoch=4)
    assert trainer._read(clean, 4) == {key: pytest.approx(float(value)) for key, value in clean.items()}
    # the step itself never asks the device: the losses are noted there and read at once later
    parts = trainer._train_step(*batch(task, images, torch.full_like(targets, float("nan"))), step=1, n_batches=4,
                                epoch=4)
    trainer._train_step(*batch(task, images, torch.full_like(targets, float("inf"))), step=2, n_batches=4, epoch=4)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 4 batch 1.*nan_policy: skip"):
        trainer._read(parts, 4)

    images, targets = tensors(3)
    poisoned = batch(task, images, torch.full_like(targets, float("nan")))
    skipping = make_trainer(task, tmp_path, nan_policy="skip")
    assert skipping._train_step(*poisoned, step=0, n_batches=2, epoch=1) == {"loss": 0.0}
    assert skipping.skipped_steps == 1 and skipping.model.scale.item() == 1.0
    assert skipping.model.scale.grad is None, "a skipped step leaves no gradient"
    skipping._train_step(*batch(task, images, targets), step=1, n_batches=2, epoch=1)
    assert skipping.model.scale.item() != 1.0, "training goes on after a skipped step"


class Recorder:
    """Stands in for TensorBoard's SummaryWriter: keeps the image grids written."""

    def __init__(self):
        self.images = {}

    def add_images(self, tag, grid, step, dataformats):
        self.images[tag] = grid


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_one_validation_pass_logs_the_tasks_loss_or_metrics_and_keeps_the_visuals_asked_for(task, tmp_path):
    trainer = make_trainer(task, tmp_path, vis_images=3)
    trainer.writer = Recorder()
    batches = [tensors(seed) for seed in (4, 5)]
    if task == "segmentation":
        trainer.valid_loader = batches
    else:
        trainer.metrics = [MeanAP()]
        box = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([0])}
        trainer.valid_loader = [(list(images), [dict(box) for _ in images]) for images, _ in batches]
    log = trainer._valid_epoch(1)
    (grid,) = trainer.writer.images.values()
    assert grid.shape == (3, 8, 4, 3), "three of the four images, truth above prediction"
    if task == "segmentation":
        losses = [float((images - targets).pow(2).mean()) for images, targets in batches]
        assert log == {"val_loss": pytest.approx(sum(losses) / 2)}
    else:
        assert "val_loss" not in log and log["val_map"] == pytest.approx(1.0)
