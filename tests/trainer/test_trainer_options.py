"""Each trainer option checked by its effect, resume checked on the whole trainer state,
and checkpoint writes checked to survive a crash in the middle (issue 18)."""

import copy
import os
import shutil

import pytest
import torch

from sever import experiment
from sever.utils.checkpoint import load_checkpoint
from sever.utils.run import RunPaths

pytestmark = pytest.mark.slow  # every test here trains a model


def build(config, tmp_path, name="options"):
    """The experiment and its trainer, as ``sever train`` builds them."""
    built = experiment.build_experiment(experiment.prepare_config(config))
    return built, experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", name))


def float_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def record_micro_batches(experiment):
    """Record every (input, target) pair the training step feeds the loss, in order."""
    inputs, targets = [], []
    experiment.model.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].detach().clone()) if module.training else None)
    experiment.loss.register_forward_pre_hook(
        lambda module, args: targets.append(args[1].detach().clone()) if experiment.model.training else None)
    return inputs, targets


def gradients_at_each_step(optimizer, model):
    """The gradients the optimiser sees at each ``step``, flattened."""
    seen = []

    def hook(opt, args, kwargs):
        seen.append(torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                               for p in model.parameters()]))

    optimizer.register_step_pre_hook(hook)
    return seen


def micro_batch_gradient(model, loss, x, y):
    model.zero_grad(set_to_none=True)
    loss(model(x), y)["loss"].backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def plain_sgd(config):
    """Plain SGD, no scheduler, and no dropout: a training step is then a function of its batch."""
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.05}}
    config["lr_scheduler"] = None
    config["arch"]["args"]["decoder_args"]["decoder_dropout"] = 0.0
    return config


# ---------------------------------------------------------------- accumulate_steps, grad_clip


def test_accumulated_gradient_is_the_mean_over_the_micro_batches(make_config, tmp_path):
    config = plain_sgd(make_config(epochs=1, accumulate_steps=2, max_steps_per_epoch=2))
    experiment, trainer = build(config, tmp_path)
    initial = copy.deepcopy(experiment.model).train()
    inputs, targets = record_micro_batches(experiment)
    applied = gradients_at_each_step(experiment.optimizer, experiment.model)
    trainer.train()
    assert len(inputs) == 2 and len(applied) == 1, "two micro-batches, one optimiser step"
    parts = [micro_batch_gradient(initial, experiment.loss, x, y) for x, y in zip(inputs, targets)]
    assert not torch.allclose(parts[0], parts[1], atol=1e-6), "the micro-batches must differ"
    assert torch.allclose(applied[0], (parts[0] + parts[1]) / 2, rtol=1e-4, atol=1e-7)


def applied_and_raw_gradient(config: dict, tmp_path) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient one training step applied, and the plain gradient of its batch at the start weights."""
    experiment, trainer = build(config, tmp_path)
    initial = copy.deepcopy(experiment.model).train()
    inputs, targets = record_micro_batches(experiment)
    applied = gradients_at_each_step(experiment.optimizer, experiment.model)
    trainer.train()
    return applied[0], micro_batch_gradient(initial, experiment.loss, inputs[0], targets[0])


def test_grad_clip_rescales_the_applied_gradient_to_the_clip_norm(make_config, tmp_path):
    clip = 0.01
    applied, raw = applied_and_raw_gradient(plain_sgd(make_config(epochs=1, grad_clip=clip, max_steps_per_epoch=1)),
                                            tmp_path)
    assert raw.norm() > 2 * clip, "the clip must bite for the test to mean anything"
    assert clip * 0.99 <= applied.norm().item() <= clip * (1 + 1e-5)
    assert torch.nn.functional.cosine_similarity(applied, raw, dim=0) > 0.999, "rescaled, not reshaped"


def test_without_grad_clip_the_gradient_is_applied_as_computed(make_config, tmp_path):
    applied, raw = applied_and_raw_gradient(plain_sgd(make_config(epochs=1, max_steps_per_epoch=1)), tmp_path)
    assert torch.allclose(applied, raw, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- EMA


def test_ema_weights_follow_the_closed_form_for_the_decay(make_config, tmp_path):
    decay, steps = 0.8, 3
    config = plain_sgd(make_config(epochs=1, ema_decay=decay, max_steps_per_epoch=steps))
    experiment, trainer = build(config, tmp_path)
    after_each_step = []
    experiment.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: after_each_step.append(float_state(experiment.model)))
    trainer.train()
    assert len(after_each_step) == steps
    # The first update copies the weights; each later one is ema = decay * ema + (1 - decay) * weights.
    expected = dict(after_each_step[0])
    for weights in after_each_step[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    saved = load_checkpoint(trainer.run.last)["ema_state_dict"]
    moved = 0
    for key, value in expected.items():
        assert torch.allclose(saved[f"module.{key}"], value, rtol=1e-5, atol=1e-6), key
        moved += not torch.allclose(value, after_each_step[-1][key])
    assert moved, "the average must differ from the last weights"


# ---------------------------------------------------------------- resume


STATE_KEYS = ("epoch", "step", "monitor_best", "not_improved")


def assert_same_state(a: dict, b: dict):
    """Two checkpoints hold the same trainer state: counters, weights, EMA, optimiser, scheduler."""
    for key in STATE_KEYS:
        assert a[key] == b[key], key
    for part in ("state_dict", "ema_state_dict"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, moments in a["optimizer"]["state"].items():
        for name, tensor in moments.items():
            assert torch.equal(tensor, b["optimizer"]["state"][index][name]), f"optimizer.state.{index}.{name}"


def stalling_config(make_config, epochs):
    """A run whose monitored loss stops improving after epoch 1 (lr 0), with EMA and a scheduler."""
    config = make_config(epochs=epochs, early_stop=5, monitor="min val_loss", ema_decay=0.7)
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.0, "momentum": 0.9}}
    return config


def test_resumed_run_ends_in_the_state_of_an_uninterrupted_one(make_config):
    straight = experiment.train(stalling_config(make_config, 4))
    halted = experiment.train(stalling_config(make_config, 2))
    at_halt = load_checkpoint(halted.last)
    assert at_halt["not_improved"] >= 1 and at_halt["monitor_best"] < float("inf"), "resume must carry state"
    experiment.resume(halted.root, ["trainer.epochs=4"])
    assert_same_state(load_checkpoint(straight.last), load_checkpoint(halted.last))


def test_resume_restores_every_counter_of_the_checkpoint(make_config, tmp_path):
    run = experiment.train(stalling_config(make_config, 1))
    state = load_checkpoint(run.last)
    # values no fresh trainer starts with
    state.update(epoch=3, step=2, monitor_best=0.123, not_improved=2)
    _, trainer = build(state["config"], tmp_path, "resumed")
    trainer.resume(state)
    assert (trainer.start_epoch, trainer.start_step) == (4, 2)
    assert (trainer.monitor_best, trainer.not_improved) == (0.123, 2)
    assert trainer.optimizer.state_dict()["param_groups"] == state["optimizer"]["param_groups"]
    assert trainer.lr_scheduler.state_dict() == state["lr_scheduler"]
    ema = trainer.ema.state_dict()
    assert all(torch.equal(ema[k], v) for k, v in state["ema_state_dict"].items())


def test_early_stopping_counts_across_a_resume(make_config):
    config = stalling_config(make_config, 2)
    config["trainer"]["early_stop"] = 2
    run = experiment.train(config)
    assert load_checkpoint(run.last)["not_improved"] == 1
    experiment.resume(run.root, ["trainer.epochs=6"])
    assert load_checkpoint(run.last)["epoch"] == 3, "epoch 3 is the second without improvement"


# ---------------------------------------------------------------- checkpoint writes


class Killed(Exception):
    """Stands for the process being killed in the middle of a write."""


def every_checkpoint_loads(run: RunPaths) -> dict[str, int]:
    return {path.name: load_checkpoint(path)["epoch"] for path in sorted(run.checkpoints.glob("*.pth"))}


def test_a_kill_while_saving_leaves_the_previous_checkpoints_whole(make_config, monkeypatch):
    run = experiment.train(make_config(epochs=1))
    before = every_checkpoint_loads(run)
    real_save = torch.save

    def save_half_then_die(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        handle = target if hasattr(target, "truncate") else open(target, "r+b")
        handle.truncate(100)
        raise Killed

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(Killed):
        experiment.resume(run.root, ["trainer.epochs=2"])
    assert every_checkpoint_loads(run) == before
    assert not list(run.checkpoints.glob(".*.tmp")), "the partial file is removed"


def test_a_kill_while_copying_a_checkpoint_leaves_no_partial_file(make_config, monkeypatch):
    run = experiment.train(make_config(epochs=1, save_period=1))
    real_copy = shutil.copyfile

    def no_hard_links(source, target):
        raise OSError("hard links not supported here")

    def copy_half_then_die(source, target, *args, **kwargs):
        real_copy(source, target, *args, **kwargs)
        os.truncate(target, 100)
        raise Killed

    monkeypatch.setattr(os, "link", no_hard_links)
    monkeypatch.setattr(shutil, "copyfile", copy_half_then_die)
    with pytest.raises(Killed):
        experiment.resume(run.root, ["trainer.epochs=2"])
    loads = every_checkpoint_loads(run)
    assert loads["last.pth"] == 2 and loads["checkpoint-epoch1.pth"] == 1
    assert "checkpoint-epoch2.pth" not in loads, "the copy that was cut short never took the name"
    monkeypatch.undo()
    experiment.resume(run.root, ["trainer.epochs=2"])  # the stale temporary is cleared and the run goes on
    assert not list(run.checkpoints.glob(".*.tmp"))


def test_checkpoint_links_share_the_file_written_once(make_config):
    run = experiment.train(make_config(epochs=1, save_period=1, tune_postprocess=False))  # tuning rewrites the best
    last = run.last.stat()
    for name in ("model_best.pth", "checkpoint-epoch1.pth"):
        assert (run.checkpoints / name).stat().st_ino == last.st_ino, name
    assert last.st_nlink == 3
