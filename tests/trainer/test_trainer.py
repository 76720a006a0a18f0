"""The YAML-driven trainer: checkpoints, resume, monitoring, freezing, NaN handling; and the one training step
every task shares."""

import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sever import experiment
from sever.detection.metric import MeanAP
from sever.detection.trainer import DetectionTrainer
from sever.exceptions import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from sever.model.detection import DetectionLoss
from sever.trainer.trainer import SegmentationTrainer, Trainer
from sever.utils.config import TRAINER_SCHEMA, validate_section
from sever.utils.checkpoint import load_checkpoint
from sever.utils.run import RunPaths


def run_of(config):
    return experiment.train(config)


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_training_writes_checkpoints_config_and_tensorboard(make_config):
    config = make_config(tensorboard=True)
    run = run_of(config)
    assert run.root.parent.name == "tiny"
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "last.pth", "model_best.pth"]
    assert run.config.is_file() and run.log_file.read_text().count("sever.trainer.base: epoch 2/2  ") == 1
    assert any(p.name.startswith("events.out.tfevents") for p in run.tensorboard.iterdir())
    state = load_checkpoint(run.last)
    assert state["epoch"] == 2 and state["step"] == 0
    assert {"optimizer", "lr_scheduler", "monitor_best", "config", "rng"} <= state.keys()
    assert 0 <= state["monitor_best"] <= 1


def test_the_model_sees_the_loaders_images_normalised_by_the_augmentations_statistics(make_config, tmp_path):
    config = experiment.prepare_config(make_config(), ["augmentation.args.mean=0.5", "augmentation.args.std=0.25"])
    built = experiment.build_experiment(config)
    trainer = experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", "normalised"))
    seen = []
    built.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer._valid_epoch(1)
    images, _ = next(iter(built.data.valid_loader))
    assert images.dtype == torch.uint8
    assert seen[0].dtype == torch.float32
    assert torch.allclose(seen[0], (images.float() / 255 - 0.5) / 0.25, atol=1e-5)


@pytest.mark.slow
def test_a_run_without_validation_images_trains_every_epoch(make_config):
    config = make_config(epochs=2, max_steps_per_epoch=1)
    config["data_loader"]["args"]["validation_split"] = 0
    run = experiment.train(config)
    assert load_checkpoint(run.last)["epoch"] == 2
    assert "val_loss" not in run.log_file.read_text()


@pytest.mark.slow
def test_resume_after_an_epoch_gives_the_same_weights(make_config):
    straight = run_of(make_config(epochs=2))
    halted = run_of(make_config(epochs=1))
    resumed = experiment.resume(halted.root, ["trainer.epochs=2"])
    assert resumed == halted
    assert_same_weights(weights(straight.last), weights(halted.last))
    assert load_checkpoint(halted.last)["epoch"] == 2


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_is_exact(make_config, monkeypatch):
    straight = run_of(make_config(epochs=2))
    original = Trainer._train_step
    calls = {"n": 0}

    def step_then_signal(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # the second batch of epoch 2
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="sever train -r") as caught:
        run_of(make_config(epochs=2))
    monkeypatch.setattr(Trainer, "_train_step", original)
    interrupted = RunPaths(Path(caught.value.checkpoint).parent.parent)
    state = load_checkpoint(interrupted.last)
    assert (state["epoch"], state["step"]) == (1, 1)
    experiment.resume(interrupted.root)
    assert_same_weights(weights(straight.last), weights(interrupted.last))


@pytest.mark.slow
def test_early_stopping_when_the_monitored_metric_stalls(make_config):
    config = make_config(epochs=6, early_stop=2, monitor="min val_loss")
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.0}}
    config["lr_scheduler"] = None
    run = run_of(config)
    assert load_checkpoint(run.last)["epoch"] == 3, "epoch 1 sets the best, 2 and 3 do not improve"


@pytest.mark.slow
def test_unknown_monitored_metric_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="val_dice_man.*available"):
        run_of(make_config(monitor="max val_dice_man"))


@pytest.mark.slow
def test_encoder_frozen_for_the_first_epochs(make_config):
    config = make_config(epochs=1, freeze_encoder_epochs=1)
    built = experiment.build_experiment(experiment.prepare_config(config))
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    run = run_of(config)
    after = weights(run.last)
    encoder = [k for k in before if k.startswith("encoder.") and "num_batches_tracked" not in k]
    decoder = [k for k in before if k.startswith("decoder.") and "num_batches_tracked" not in k]
    assert all(torch.equal(before[k], after[k]) for k in encoder), "frozen encoder (and its BN stats) unchanged"
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    unfrozen = experiment.resume(run.root, ["trainer.epochs=2"])
    assert any(not torch.equal(after[k], weights(unfrozen.last)[k]) for k in encoder)


@pytest.mark.slow
def test_non_finite_loss_stops_without_overwriting_checkpoints(make_config, monkeypatch):
    run = run_of(make_config(epochs=1))
    good = weights(run.last)
    original = Trainer._loss_parts

    def poisoned(self, logits, *targets):
        parts = original(self, logits, *targets)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(Trainer, "_loss_parts", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss"):
        experiment.resume(run.root, ["trainer.epochs=2"])
    assert_same_weights(good, weights(run.last))
    skipped = experiment.resume(run.root, ["trainer.epochs=2", "trainer.nan_policy=skip"])
    assert load_checkpoint(skipped.last)["epoch"] == 2
    after = weights(skipped.last)
    learnt = [k for k in good if "running_" not in k and "num_batches" not in k]  # BN statistics still move
    assert all(torch.equal(good[k], after[k]) for k in learnt), "every step was skipped"


@pytest.mark.slow
def test_ema_and_accumulation_run_and_checkpoint(make_config):
    run = run_of(make_config(epochs=1, ema_decay=0.9, accumulate_steps=2, grad_clip=1.0))
    state = load_checkpoint(run.last)
    assert "ema_state_dict" in state and state["ema_state_dict"].keys() >= {"n_averaged"}


@pytest.mark.slow
def test_classification_task_trains(make_config):
    config = make_config(epochs=1, monitor="max val_accuracy")
    config.update(task="classification", metrics=None,
                  arch={"type": "Classifier", "args": {"encoder_name": "resnet18"}},
                  loss={"type": "BCELoss"})
    run = run_of(config)
    log = run.log_file.read_text()
    assert "val_accuracy" in log and "val_precision_mean" in log


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(make_config):
    run = run_of(make_config(epochs=1))
    config_path = run.config
    with pytest.raises(CheckpointError, match="encoder_name is .resnet18. in the checkpoint but .resnet34."):
        experiment.resume(run.root, ["arch.args.encoder_name=resnet34"])
    assert config_path.is_file()


@pytest.mark.slow
def test_weights_only_checkpoint_cannot_resume(make_config):
    from sever.upload import inference_state
    from sever.utils.checkpoint import atomic_torch_save

    run = run_of(make_config(epochs=1))
    slim = run.checkpoints / "slim.pth"
    atomic_torch_save(inference_state(load_checkpoint(run.last)), slim)
    with pytest.raises(CheckpointError, match="weights only"):
        experiment.resume(slim, ["trainer.epochs=2"])


@pytest.mark.slow
def test_the_epoch_bar_counts_the_runs_epochs_and_shows_the_runs_eta(make_config, monkeypatch):
    import io

    from tqdm import tqdm

    import sever.utils.progress as progress_module

    bars = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})
            bars.append(self)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress_module, "tqdm", Recorded)
    monkeypatch.setattr(sys, "stderr", Terminal())  # bars are drawn on a terminal only
    run_of(make_config(epochs=2))
    training = [bar for bar in bars if bar.desc.startswith("epoch")]
    assert [bar.desc for bar in training] == ["epoch 1/2", "epoch 2/2"]
    assert all("run_eta=" in bar.postfix for bar in training)


def test_the_run_eta_extrapolates_the_time_since_training_began(monkeypatch):
    from types import SimpleNamespace

    import sever.trainer.base as base

    trainer = SimpleNamespace(epochs=4, _started=(1000.0, 2))  # resumed at epoch 2 of 4, at t=1000 s
    monkeypatch.setattr(base.time, "monotonic", lambda: 1100.0)
    assert base.BaseTrainer.run_eta(trainer, 2, 0.5) == "0:08:20"  # 100 s per half epoch, 2.5 epochs left
    assert base.BaseTrainer.run_eta(trainer, 2, 0.0) == "?"

# ---------------------------------------------------------------- the training step every task shares
# A task supplies its forward and loss, the step does the rest. Each task here learns one scale ``s`` so
# that ``s * image`` matches its target, with a mean squared error: a new task (only its forward and loss),
# the segmentation trainer (its network and loss as given) and the detection trainer (a stand-in for a
# detector in training mode, which returns its loss dict).


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


@pytest.mark.slow
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


@pytest.mark.slow
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
