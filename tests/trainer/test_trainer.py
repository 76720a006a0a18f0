"""The YAML-driven trainer: checkpoints, resume, monitoring, freezing, NaN handling."""

import signal
from pathlib import Path

import pytest
import torch

from sever import experiment
from sever.exceptions import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from sever.trainer.trainer import Trainer
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


def test_training_writes_checkpoints_config_and_tensorboard(make_config):
    config = make_config(tensorboard=True)
    run = run_of(config)
    assert run.root.parent.name == "tiny"
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "last.pth", "model_best.pth"]
    assert run.config.is_file() and run.log_file.read_text().count("epoch 2/2") == 1
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


def test_a_run_without_validation_images_trains_every_epoch(make_config):
    config = make_config(epochs=2, max_steps_per_epoch=1)
    config["data_loader"]["args"]["validation_split"] = 0
    run = experiment.train(config)
    assert load_checkpoint(run.last)["epoch"] == 2
    assert "val_loss" not in run.log_file.read_text()


def test_resume_after_an_epoch_gives_the_same_weights(make_config):
    straight = run_of(make_config(epochs=2))
    halted = run_of(make_config(epochs=1))
    resumed = experiment.resume(halted.root, ["trainer.epochs=2"])
    assert resumed == halted
    assert_same_weights(weights(straight.last), weights(halted.last))
    assert load_checkpoint(halted.last)["epoch"] == 2


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


def test_early_stopping_when_the_monitored_metric_stalls(make_config):
    config = make_config(epochs=6, early_stop=2, monitor="min val_loss")
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.0}}
    config["lr_scheduler"] = None
    run = run_of(config)
    assert load_checkpoint(run.last)["epoch"] == 3, "epoch 1 sets the best, 2 and 3 do not improve"


def test_unknown_monitored_metric_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="val_dice_man.*available"):
        run_of(make_config(monitor="max val_dice_man"))


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


def test_ema_and_accumulation_run_and_checkpoint(make_config):
    run = run_of(make_config(epochs=1, ema_decay=0.9, accumulate_steps=2, grad_clip=1.0))
    state = load_checkpoint(run.last)
    assert "ema_state_dict" in state and state["ema_state_dict"].keys() >= {"n_averaged"}


def test_classification_task_trains(make_config):
    config = make_config(epochs=1, monitor="max val_accuracy")
    config.update(task="classification", metrics=None,
                  arch={"type": "Classifier", "args": {"encoder_name": "resnet18"}},
                  loss={"type": "BCELoss"})
    run = run_of(config)
    log = run.log_file.read_text()
    assert "val_accuracy" in log and "val_precision_mean" in log


def test_checkpoint_of_another_architecture_is_refused(make_config):
    run = run_of(make_config(epochs=1))
    config_path = run.config
    with pytest.raises(CheckpointError, match="encoder_name is .resnet18. in the checkpoint but .resnet34."):
        experiment.resume(run.root, ["arch.args.encoder_name=resnet34"])
    assert config_path.is_file()


def test_weights_only_checkpoint_cannot_resume(make_config):
    from sever.upload import inference_state
    from sever.utils.checkpoint import atomic_torch_save

    run = run_of(make_config(epochs=1))
    slim = run.checkpoints / "slim.pth"
    atomic_torch_save(inference_state(load_checkpoint(run.last)), slim)
    with pytest.raises(CheckpointError, match="weights only"):
        experiment.resume(slim, ["trainer.epochs=2"])


def test_the_epoch_bar_counts_the_runs_epochs_and_shows_the_runs_eta(make_config, monkeypatch):
    import io

    from tqdm import tqdm

    import sever.trainer.trainer as trainer_module

    bars = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})
            bars.append(self)

    monkeypatch.setattr(trainer_module, "tqdm", Recorded)
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
