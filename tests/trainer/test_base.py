"""The training loop and step on the tiniest model: fast enough to run against every mutant of
``sever/trainer/trainer.py`` and ``sever/trainer/base.py`` (``tools/mutation.py``).

The model is two 1x1 convolutions (an encoder and a decoder) on 4x4 images held in memory;
the loader is a list of batches whose batch sampler starts an epoch at a given batch, as
sever's loaders do. TensorBoard is replaced by a recorder of what the trainer writes.
"""

import io
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from sever.data_loader.augmentation import PAD_LABEL
from sever.exceptions import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from sever.inference.tiling import Tiling
from sever.model.base import BaseModel
from sever.trainer import budget as budget_module
from sever.trainer.base import flatten_config
from sever.trainer.trainer import ClassificationTrainer, SegmentationTrainer, Trainer
from sever.utils.checkpoint import load_checkpoint
from sever.utils.config import TRAINER_SCHEMA, validate_section
from sever.utils import interrupt
from sever.utils.distributed import Distributed
from sever.utils.run import RunPaths


class Tiny(BaseModel):
    """``decoder(encoder(x))``: two 1x1 convolutions, one input channel, ``classes`` outputs
    (with ``norm``, a BatchNorm after the encoder's convolution)."""

    def __init__(self, classes=2, seed=0, norm=False):
        torch.manual_seed(seed)
        encoder = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)) if norm else nn.Conv2d(1, 2, 1)
        super().__init__(encoder, nn.Conv2d(2, classes, 1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


class SquaredError(nn.Module):
    """Mean squared error of logits and float targets, over the ``valid`` pixels when given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, logits, targets, *valid):
        self.calls.append(len(valid))
        error = (logits - targets.float()).pow(2)
        if valid:
            return (error * valid[0]).sum() / (valid[0].sum() * logits.shape[1])
        return error.mean()


class PartsLoss(SquaredError):
    """The squared error as a dict of parts: ``loss`` and its double."""

    def forward(self, logits, targets, *valid):
        loss = super().forward(logits, targets, *valid)
        return {"loss": loss, "double": 2 * loss}


class Seen:
    """A metric counting the images it was updated with since its last reset."""

    def __init__(self):
        self.reset()
        self.reductions = 0

    def reset(self):
        self.count = 0

    def update(self, outputs, *targets):
        self.count += len(outputs)

    def reduce_(self, fn):
        """The sum over the ranks, as sever's metrics do it."""
        total = torch.tensor([float(self.count)])
        fn(total)
        self.count, self.reductions = int(total.item()), self.reductions + 1

    @property
    def empty(self):
        return self.count == 0

    def compute(self):
        return {"seen": float(self.count)}


class Sampler:
    """Records ``set_epoch`` calls; the loader starts at the batch given."""

    def __init__(self):
        self.calls, self.start = [], 0

    def set_epoch(self, epoch, start):
        self.calls.append((epoch, start))
        self.start = start


class Loader:
    """A list of ``(images, targets)`` batches, started where the sampler says."""

    def __init__(self, batches):
        self.batches, self.batch_sampler = batches, Sampler()

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches[self.batch_sampler.start:])


class Recorder:
    """Stands in for TensorBoard's SummaryWriter: keeps what the trainer writes."""

    def __init__(self):
        self.scalars, self.images, self.curves, self.texts, self.summaries = {}, {}, {}, {}, []
        self.closed = False
        self.file_writer = self

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_images(self, tag, grid, step, dataformats):
        assert dataformats == "NHWC"
        self.images[tag] = (grid, step)

    def add_pr_curve(self, tag, labels, probs, step):
        self.curves[tag] = (labels, probs, step)

    def add_text(self, tag, text):
        self.texts[tag] = text

    def add_summary(self, summary):
        self.summaries.append(summary)

    def flush(self):
        pass

    def close(self):
        self.closed = True


def batches(n, seed=0, size=2, classes=2):
    """``n`` batches of ``size`` images ``(size, 1, 4, 4)`` and 0/1 targets ``(size, classes, 4, 4)``."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 4, 4, generator=generator),
             (torch.rand(size, classes, 4, 4, generator=generator) > 0.5).float()) for _ in range(n)]


def make(tmp_path, trainer_class=Trainer, train=3, valid=1, loss=None, metrics=(), scheduler=None,
         model=None, lr=0.1, momentum=0.0, class_names=None, amp="off", distributed=Distributed(), normalization=None,
         **options):
    model = model or Tiny()
    config = {"arch": {"type": "Tiny"}, "class_names": class_names,
              "trainer": validate_section({"epochs": 1, "tensorboard": False, "monitor": "min val_loss", **options},
                                          TRAINER_SCHEMA, "trainer.")}
    optimizer = torch.optim.SGD([{"params": model.encoder.parameters(), "name": "encoder"},
                                 {"params": model.decoder.parameters(), "name": "decoder"}], lr=lr, momentum=momentum)
    if scheduler:
        scheduler = scheduler(optimizer)
    run = RunPaths(tmp_path / "run")
    run.make_dirs()
    trainer = trainer_class(model, loss or SquaredError(), list(metrics), optimizer, scheduler, config, run,
                            Loader(batches(train)), batches(valid, seed=9) if valid else None, torch.device("cpu"),
                            amp, distributed, normalization)
    trainer.steps_done, trainer.interrupted = 0, False  # as train() sets them before each epoch
    return trainer


def said(caplog) -> list[str]:
    """The log messages, whole (a test of a message must fail when words are added to it)."""
    return [record.getMessage() for record in caplog.records]


def weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def gradient_steps(trainer):
    """The flattened gradient the optimiser sees at each of its steps."""
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda *_: seen.append(torch.cat(
        [p.grad.flatten().clone() if p.grad is not None else torch.zeros(p.numel())
         for p in trainer.model.parameters()])))
    return seen


def plain_gradient(model, images, targets):
    model.zero_grad(set_to_none=True)
    (model(images) - targets).pow(2).mean().backward()
    return torch.cat([p.grad.flatten().clone() for p in model.parameters()])


# ---------------------------------------------------------------- the training epoch


@pytest.mark.slow
def test_an_epoch_trains_on_every_batch_and_logs_the_mean_loss(tmp_path):
    trainer = make(tmp_path, train=3, valid=0, metrics=[Seen()], loss=PartsLoss())
    start = Tiny()
    steps = gradient_steps(trainer)
    log = trainer._train_epoch(epoch=2, start_step=0)
    assert trainer.train_loader.batch_sampler.calls == [(2, 0)]
    assert len(steps) == 3 and trainer.steps_done == 3 and not trainer.interrupted
    first_images, first_targets = trainer.train_loader.batches[0]
    assert torch.allclose(steps[0], plain_gradient(start, first_images, first_targets), atol=1e-6)
    assert log["train_double"] == pytest.approx(2 * log["train_loss"])
    assert log["train_seen"] == 6.0, "the metrics see every training image"
    assert log["train_images_per_s"] > 0
    assert set(log) == {"train_loss", "train_double", "train_seen", "train_images_per_s"}


@pytest.mark.slow
def test_the_epoch_loss_is_the_mean_of_the_batch_losses(tmp_path):
    trainer = make(tmp_path, train=3, valid=0, lr=0.0)
    losses = [float((trainer.model(x) - y).pow(2).mean().detach()) for x, y in trainer.train_loader.batches]
    assert trainer._train_epoch(1, 0)["train_loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)


@pytest.mark.slow
def test_an_epoch_resumed_mid_way_trains_the_batches_left_and_averages_over_them(tmp_path):
    trainer = make(tmp_path, train=3, valid=0, lr=0.0)
    losses = [float((trainer.model(x) - y).pow(2).mean().detach()) for x, y in trainer.train_loader.batches]
    steps = gradient_steps(trainer)
    log = trainer._train_epoch(1, start_step=1)
    assert trainer.train_loader.batch_sampler.calls == [(1, 1)]
    assert len(steps) == 2 and trainer.steps_done == 3
    assert log["train_loss"] == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-5)


@pytest.mark.slow
def test_max_steps_per_epoch_limits_the_batches(tmp_path):
    trainer = make(tmp_path, train=4, valid=0, max_steps_per_epoch=2, lr=0.0)
    losses = [float((trainer.model(x) - y).pow(2).mean().detach()) for x, y in trainer.train_loader.batches]
    steps = gradient_steps(trainer)
    log = trainer._train_epoch(1, 0)
    assert len(steps) == 2 and trainer.steps_done == 2
    assert log["train_loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-5)
    assert trainer._batches_per_epoch() == 2
    assert make(tmp_path, train=4, max_steps_per_epoch=9)._batches_per_epoch() == 4


@pytest.mark.slow
def test_accumulation_steps_at_each_boundary_and_at_the_epoch_end(tmp_path):
    trainer = make(tmp_path, train=4, valid=0, accumulate_steps=3)
    start = Tiny()
    steps = gradient_steps(trainer)
    trainer._train_epoch(1, 0)
    assert len(steps) == 2, "after batch 3, then the last batch alone"
    mean = sum(plain_gradient(start, x, y) for x, y in trainer.train_loader.batches[:3]) / 3
    assert torch.allclose(steps[0], mean, atol=1e-6)


@pytest.mark.slow
def test_the_optimiser_gradients_are_cleared_before_the_epoch(tmp_path):
    trainer = make(tmp_path, train=1, valid=0)
    start = Tiny()
    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, 5.0)
    steps = gradient_steps(trainer)
    trainer._train_epoch(1, 0)
    assert torch.allclose(steps[0], plain_gradient(start, *trainer.train_loader.batches[0]), atol=1e-6)


@pytest.mark.slow
def test_batch_losses_and_learning_rates_go_to_tensorboard_every_log_step(tmp_path):
    trainer = make(tmp_path, train=3, valid=0, log_step=2)
    trainer.writer = Recorder()
    trainer._train_epoch(2, 0)
    # global step = (epoch - 1) * batches + step, for steps 0 and 2
    assert [s for s, _ in trainer.writer.scalars["batch/loss"]] == [3, 5]
    assert trainer.writer.scalars["batch/lr_encoder"] == [(3, 0.1), (5, 0.1)]
    assert [s for s, _ in trainer.writer.scalars["batch/lr_decoder"]] == [3, 5]
    assert all(v > 0 for _, v in trainer.writer.scalars["batch/loss"])


@pytest.mark.slow
def test_a_stop_request_ends_the_epoch_at_the_next_update_and_reports_it(tmp_path):
    trainer = make(tmp_path, train=3, valid=0, accumulate_steps=2)
    trainer._stop_signal = signal.SIGTERM
    steps = gradient_steps(trainer)
    trainer._train_epoch(1, 0)
    assert len(steps) == 1 and trainer.steps_done == 2 and trainer.interrupted


@pytest.mark.slow
def test_a_stop_request_at_the_last_batch_is_not_an_interrupted_epoch(tmp_path):
    trainer = make(tmp_path, train=1, valid=0)
    trainer._stop_signal = signal.SIGINT
    trainer._train_epoch(1, 0)
    assert trainer.steps_done == 1 and not trainer.interrupted


# ---------------------------------------------------------------- the step's options


@pytest.mark.slow
def test_normalization_and_channels_last_shape_the_model_input(tmp_path):
    seen = []
    trainer = make(tmp_path, train=1, valid=0, channels_last=True, normalization=lambda images: images * 10 - 1)
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer._train_epoch(1, 0)
    images = trainer.train_loader.batches[0][0]
    assert torch.equal(seen[0], images * 10 - 1)
    images = torch.rand(2, 3, 4, 4)
    assert trainer._model_input(images).is_contiguous(memory_format=torch.channels_last)
    plain = make(tmp_path, train=1, valid=0)
    assert plain._model_input(images.contiguous(memory_format=torch.channels_last)).is_contiguous()


def test_compile_wraps_the_network_and_checkpoints_the_bare_model(tmp_path):
    trainer = make(tmp_path, compile=True)
    assert trainer.network is not trainer.model and trainer.network._orig_mod is trainer.model
    plain = make(tmp_path)
    assert plain.network is plain.model


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler (c++ / g++): none on PATH")
def test_a_compiled_network_trains_as_the_plain_one(tmp_path):
    compiled, plain = make(tmp_path / "compiled", compile=True), make(tmp_path / "plain")
    compiled_log, plain_log = compiled._train_epoch(1, 0), plain._train_epoch(1, 0)
    assert compiled_log["train_loss"] == pytest.approx(plain_log["train_loss"], rel=1e-5)
    assert torch.allclose(weights(compiled.model), weights(plain.model), atol=1e-6)
    assert not torch.equal(weights(compiled.model), weights(Tiny())), "it trained"


def test_grad_clip_rescales_the_gradient_to_the_clip_norm(tmp_path):
    trainer = make(tmp_path, train=1, valid=0, grad_clip=0.01)
    start = Tiny()
    steps = gradient_steps(trainer)
    trainer._train_epoch(1, 0)
    raw = plain_gradient(start, *trainer.train_loader.batches[0])
    assert raw.norm() > 0.1
    assert steps[0].norm().item() == pytest.approx(0.01, rel=1e-4)
    assert torch.nn.functional.cosine_similarity(steps[0], raw, dim=0) > 0.999


@pytest.mark.slow
def test_the_optimiser_step_clears_the_gradients(tmp_path):
    trainer = make(tmp_path, train=2, valid=0)
    start = Tiny()
    steps = gradient_steps(trainer)
    trainer._train_epoch(1, 0)
    # the second step's gradient is that of batch 2 alone (at the weights after step 1)
    assert not torch.allclose(steps[1], steps[0] + plain_gradient(start, *trainer.train_loader.batches[1]), atol=1e-4)
    after_one = Tiny()
    with torch.no_grad():
        for p, g in zip(after_one.parameters(), torch.split(steps[0], [p.numel() for p in after_one.parameters()])):
            p -= 0.1 * g.view_as(p)
    assert torch.allclose(steps[1], plain_gradient(after_one, *trainer.train_loader.batches[1]), atol=1e-5)


# A decay other than 0.5, where d == 1 - d: an EMA that weighted the new weights by d fails it.
@pytest.mark.slow
@pytest.mark.parametrize("decay", [0.9, 0.2])
def test_ema_follows_the_weights_with_its_decay_and_is_what_validation_scores(tmp_path, decay):
    trainer = make(tmp_path, train=3, valid=1, ema_decay=decay)
    after = []
    trainer.optimizer.register_step_post_hook(lambda *_: after.append(weights(trainer.model)))
    trainer._train_epoch(1, 0)
    # The first update copies the weights; each later one is ema = decay * ema + (1 - decay) * weights.
    expected = after[0]
    for w in after[1:]:
        expected = decay * expected + (1 - decay) * w
    assert torch.allclose(weights(trainer.eval_model), expected, atol=1e-6)
    assert not torch.allclose(expected, after[-1])
    x, y = trainer.valid_loader[0]
    ema_loss = float((trainer.eval_model(x) - y).pow(2).mean().detach())
    assert trainer._valid_epoch(1)["val_loss"] == pytest.approx(ema_loss, rel=1e-5)
    assert make(tmp_path).eval_model is not None and make(tmp_path).ema is None


@pytest.mark.slow
def test_a_skipped_non_finite_step_drops_the_accumulated_gradient(tmp_path, caplog):
    trainer = make(tmp_path, train=3, valid=0, accumulate_steps=3, nan_policy="skip")
    start = Tiny()
    for index in (0, 1):
        x, y = trainer.train_loader.batches[index]
        trainer.train_loader.batches[index] = (x, torch.full_like(y, float("nan")))
    steps = gradient_steps(trainer)
    with caplog.at_level(logging.WARNING):
        log = trainer._train_epoch(1, 0)
    assert trainer.skipped_steps == 2
    assert [r.getMessage() for r in caplog.records] == [
        "non-finite loss (nan) at epoch 1 batch 0: step skipped (1 so far)",
        "non-finite loss (nan) at epoch 1 batch 1: step skipped (2 so far)"]
    assert torch.allclose(steps[0], plain_gradient(start, *trainer.train_loader.batches[2]) / 3, atol=1e-6)
    assert math.isfinite(log["train_loss"])


def test_a_non_finite_loss_names_the_last_good_checkpoint(tmp_path):
    trainer = make(tmp_path, train=1, valid=0)
    x, y = trainer.train_loader.batches[0]
    trainer.train_loader.batches[0] = (x, torch.full_like(y, float("inf")))
    advice = ". Lower the learning rate, check the data, or set trainer.nan_policy: skip."
    with pytest.raises(TrainingError) as error:
        trainer._train_epoch(1, 0)
    assert str(error.value) == ("non-finite loss (inf) at epoch 1 batch 0; training stopped and no checkpoint was "
                                "written over the good ones" + advice)
    trainer.run.last.write_bytes(b"")
    with pytest.raises(TrainingError) as error:
        trainer._train_epoch(1, 0)
    assert str(error.value).endswith(f"over the good ones (last good: {trainer.run.last})" + advice)


# ---------------------------------------------------------------- validation


@pytest.mark.slow
def test_validation_scores_in_eval_mode_with_metrics_reset(tmp_path):
    modes = []
    trainer = make(tmp_path, train=2, valid=2, metrics=[Seen()], loss=PartsLoss())
    trainer.model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer._train_epoch(1, 0)
    log = trainer._valid_epoch(1)
    assert modes == [True, True, False, False]
    losses = [float((trainer.model(x) - y).pow(2).mean().detach()) for x, y in trainer.valid_loader]
    assert log == {"val_loss": pytest.approx(sum(losses) / 2, rel=1e-5),
                   "val_double": pytest.approx(sum(losses), rel=1e-5), "val_seen": 4.0}


def test_no_validation_without_a_validation_loader(tmp_path):
    assert make(tmp_path, valid=1)._should_validate(1)
    assert not make(tmp_path, valid=0)._should_validate(1)


@pytest.mark.slow
def test_segmentation_padding_is_left_out_of_the_loss_and_zeroed_at_validation(tmp_path):
    loss = SquaredError()
    trainer = make(tmp_path, SegmentationTrainer, train=1, valid=0, loss=loss, lr=0.0)
    images = torch.rand(1, 1, 4, 4)
    masks = torch.randint(0, 2, (1, 2, 4, 4), dtype=torch.uint8)
    padded = masks.clone()
    padded[..., 2:] = PAD_LABEL
    inputs, (clean, valid) = trainer._to_device(images, padded)
    assert torch.equal(valid[0, 0, :, :2], torch.ones(4, 2, dtype=torch.bool)) and not valid[..., 2:].any()
    assert valid.shape == (1, 1, 4, 4) and int(clean.max()) <= 1
    assert torch.equal(clean[..., :2], masks[..., :2]) and not clean[..., 2:].any()
    trainer.train_loader = Loader([(images, padded), (images, masks)])
    log = trainer._train_epoch(1, 0)
    assert loss.calls == [1, 0], "valid goes to the loss only when the batch is padded"
    logits = trainer.model(images)
    on_valid = float((logits - masks.float())[..., :2].pow(2).mean())
    whole = float((logits - masks.float()).pow(2).mean())
    assert log["train_loss"] == pytest.approx((on_valid + whole) / 2, rel=1e-5)

    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer.valid_loader = [(images, padded)]
    trainer._valid_epoch(1)
    assert torch.equal(seen[0][..., :2], images[..., :2]) and not seen[0][..., 2:].any()


class Counting(Seen):
    """Counts the valid pixels of every class's logits."""

    def update(self, outputs, masks, valid):
        self.count += int(valid.expand_as(outputs).sum())


@pytest.mark.slow
def test_segmentation_metrics_take_the_logits_and_the_valid_mask(tmp_path):
    trainer = make(tmp_path, SegmentationTrainer, train=1, valid=0, metrics=[Counting()])
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    masks[..., 3:] = PAD_LABEL
    trainer.valid_loader = [(torch.rand(1, 1, 4, 4), masks)]
    assert trainer._valid_epoch(1)["val_seen"] == 24.0
    trainer.train_loader = Loader(trainer.valid_loader * 2)
    assert trainer._train_epoch(1, 0)["train_seen"] == 48.0


def test_segmentation_visuals_show_truth_above_prediction_for_the_images_asked(tmp_path):
    trainer = make(tmp_path, SegmentationTrainer, valid=0, vis_images=3)
    trainer.writer = Recorder()
    wide = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    wide[:, 0] = 1
    narrow = wide.clone()
    narrow[..., 3:] = PAD_LABEL
    narrow[..., 2:, :] = PAD_LABEL
    trainer.valid_loader = [(torch.rand(2, 1, 4, 4), wide), (torch.rand(2, 1, 4, 4), narrow),
                            (torch.rand(2, 1, 4, 4), wide)]
    trainer._valid_epoch(5)
    grid, step = trainer.writer.images["val/truth_above_prediction"]
    assert step == 5 and grid.shape == (3, 8, 4, 3) and grid.dtype == np.uint8
    assert grid[2, 4:, :].sum() == 0 and grid[2, :4, 3:].sum() == 0, "the padded third image: black outside 2x3"
    assert (grid[2, :2, :3].sum(axis=(0, 2)) > 0).all(), "the image's own 3 columns are shown"
    truth = grid[0, :4]
    assert not np.array_equal(truth[..., 0], truth[..., 1]), "the truth (class 1 everywhere) is coloured"
    trainer.valid_loader = trainer.valid_loader[:1]
    trainer._valid_epoch(6)
    grid, step = trainer.writer.images["val/truth_above_prediction"]
    assert step == 6 and grid.shape == (2, 8, 4, 3), "the visuals start afresh each validation"
    for visuals, loader in [(0, trainer.valid_loader), (3, [])]:  # nothing to show: nothing written
        shown = make(tmp_path, SegmentationTrainer, valid=0, vis_images=visuals)
        shown.writer, shown.valid_loader = Recorder(), loader
        shown._valid_epoch(1)
        assert shown.writer.images == {}


def test_prediction_overlay_follows_the_sigmoid_at_one_half(tmp_path):
    trainer = make(tmp_path, SegmentationTrainer, valid=0, vis_images=1)
    trainer.writer = Recorder()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.zero_()
        trainer.model.decoder.bias[0] = 0.01  # class 1 just above one half everywhere, class 2 at one half
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    trainer.valid_loader = [(torch.full((1, 1, 4, 4), 0.5), masks)]
    trainer._valid_epoch(1)
    grid, _ = trainer.writer.images["val/truth_above_prediction"]
    truth, prediction = grid[0, :4], grid[0, 4:]
    assert np.array_equal(truth[..., 0], truth[..., 1]), "no truth: grey"
    assert not np.array_equal(prediction, truth), "class 1 predicted everywhere"
    trainer.model.decoder.bias.data[0] = 0.0
    trainer._valid_epoch(2)
    grid, _ = trainer.writer.images["val/truth_above_prediction"]
    assert np.array_equal(grid[0, 4:], grid[0, :4]), "a probability of exactly one half is not a prediction"


def test_classification_visuals_are_a_pr_curve_per_class(tmp_path):
    trainer = make(tmp_path, ClassificationTrainer, valid=0, model=Tiny(classes=3))
    trainer.model = trainer.eval_model
    trainer.writer = Recorder()
    pooled = nn.Sequential(trainer.model, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    trainer.model = pooled
    labels = [torch.tensor([[1.0, 0, 1], [0, 1, 0]]), torch.tensor([[0.0, 0, 1]])]
    trainer.valid_loader = [(torch.rand(2, 1, 4, 4), labels[0]), (torch.rand(1, 1, 4, 4), labels[1])]
    trainer._valid_epoch(4)
    assert sorted(trainer.writer.curves) == ["val/pr_class_0", "val/pr_class_1", "val/pr_class_2"]
    got_labels, probs, step = trainer.writer.curves["val/pr_class_2"]
    assert step == 4 and torch.equal(got_labels, torch.tensor([1.0, 0, 1]))
    images = torch.cat([x for x, _ in trainer.valid_loader])
    assert torch.allclose(probs, torch.sigmoid(pooled(images))[:, 2], atol=1e-6)
    trainer.valid_loader = trainer.valid_loader[1:]
    trainer._valid_epoch(5)
    assert trainer.writer.curves["val/pr_class_0"][0].shape == (1,), "the curves start afresh each validation"
    empty = make(tmp_path, ClassificationTrainer, valid=0)
    empty.writer, empty.valid_loader = Recorder(), []
    empty._valid_epoch(1)
    assert empty.writer.curves == {}, "no validation batch: no curve"


# ---------------------------------------------------------------- the loop


@pytest.mark.slow
def test_train_runs_every_epoch_validates_and_saves_the_best(tmp_path):
    trainer = make(tmp_path, train=2, valid=1, epochs=3, metrics=[Seen()])
    trainer.writer = Recorder()
    log = trainer.train()
    assert log["epoch"] == 3 and "val_loss" in log and log["val_seen"] == 2.0
    assert trainer.train_loader.batch_sampler.calls == [(1, 0), (2, 0), (3, 0)]
    state = load_checkpoint(trainer.run.last)
    assert state["epoch"] == 3 and state["step"] == 0 and state["best_epoch"] == trainer.best_epoch
    assert [s for s, _ in trainer.writer.scalars["epoch/val_loss"]] == [1, 2, 3]
    assert "epoch/epoch" not in trainer.writer.scalars
    assert trainer.writer.closed and len(trainer.writer.summaries) == 3, "hparams: experiment, start, end"
    assert "trainer:" in trainer.writer.texts["config"] and trainer.writer.texts["config"].startswith("    ")
    assert trainer.writer.scalars["lr/encoder"] == [(1, 0.1), (2, 0.1), (3, 0.1)]
    best = trainer.writer.scalars["hparam/best_val_loss"]
    assert best[-1] == (3, pytest.approx(trainer.monitor_best))
    assert sorted(trainer.run.saved_epochs()) == [1, 2, 3]


def test_the_epoch_log_names_per_class_values_by_class(tmp_path):
    trainer = make(tmp_path, class_names=["pits", "scratches"])
    tags = trainer._tags(["val_dice_0", "val_dice_1", "val_dice_mean", "val_mar_1", "val_mar_10", "val_mar_100",
                          "val_loss"])
    assert tags == {"val_dice_0": "val_dice_pits", "val_dice_1": "val_dice_scratches",
                    "val_dice_mean": "val_dice_mean", "val_mar_1": "val_mar_1", "val_mar_10": "val_mar_10",
                    "val_mar_100": "val_mar_100", "val_loss": "val_loss"}
    assert make(tmp_path)._tags(["val_dice_0"]) == {"val_dice_0": "val_dice_0"}


@pytest.mark.slow
def test_learning_rates_are_logged_as_they_were_during_the_epoch(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, epochs=2,
                   scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer.writer = Recorder()
    trainer.train()
    assert trainer.writer.scalars["lr/decoder"] == [(1, 0.1), (2, 0.05)]
    assert load_checkpoint(trainer.run.last)["lr_scheduler"]["last_epoch"] == 2


def test_validation_period_and_start_epoch(tmp_path):
    def validated(**options):
        trainer = make(tmp_path, train=1, valid=1, **options)
        return [e for e in range(1, trainer.epochs + 1) if trainer._should_validate(e)]

    assert validated(epochs=5, val_period=2) == [2, 4, 5]
    assert validated(epochs=6, val_period=4, start_val_epoch=5) == [4, 5, 6]
    assert validated(epochs=3, val_period=1) == [1, 2, 3]


@pytest.mark.slow
def test_epochs_without_validation_leave_the_monitor_alone(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, epochs=3, val_period=2, early_stop=1)
    log = trainer.train()
    assert log["epoch"] == 3 and trainer.best_epoch in (2, 3)
    state = load_checkpoint(trainer.run.last)
    assert state["not_improved"] <= 1


@pytest.mark.slow
def test_early_stopping_after_the_validations_without_improvement(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, epochs=6, early_stop=2, lr=0.0)
    with caplog.at_level(logging.INFO):
        log = trainer.train()
    assert log["epoch"] == 3 and trainer.best_epoch == 1 and trainer.not_improved == 2
    assert (f"early stopping: val_loss has not improved for 2 validations (best {trainer.monitor_best:.5f})"
            in said(caplog))
    assert (f"finished: best val_loss {trainer.monitor_best:.5f} at epoch 1 ({trainer.run.best.name}); "
            f"run folder {trainer.run.root}") in said(caplog)
    assert load_checkpoint(trainer.run.best)["epoch"] == 1


def test_monitor_max_and_off(tmp_path):
    trainer = make(tmp_path, monitor="max val_seen")
    assert trainer.monitor_best == -math.inf
    assert trainer._update_monitor({"epoch": 1, "val_seen": 1.0}) and trainer.best_epoch == 1
    assert not trainer._update_monitor({"epoch": 2, "val_seen": 1.0}) and trainer.not_improved == 1
    assert trainer._update_monitor({"epoch": 3, "val_seen": 2.0}) and trainer.not_improved == 0
    assert not trainer._update_monitor({"epoch": 4, "train_loss": 2.0}), "no validation this epoch"
    assert trainer.not_improved == 0 and trainer.monitor_best == 2.0 and trainer.best_epoch == 3
    minimum = make(tmp_path)
    assert minimum.monitor_best == math.inf
    assert minimum._update_monitor({"epoch": 1, "val_loss": 1.0})
    assert not minimum._update_monitor({"epoch": 2, "val_loss": 2.0})
    off = make(tmp_path, monitor="off")
    assert off.monitor_metric is None and off.monitor_best == 0.0
    assert not off._update_monitor({"epoch": 1, "val_loss": 0.5}) and off.best_epoch is None


@pytest.mark.slow
def test_a_monitored_metric_that_validation_does_not_produce_is_a_config_error(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, monitor="max val_dice_mean")
    with pytest.raises(ConfigError, match=r"trainer.monitor: metric 'val_dice_mean' is not produced; "
                                          r"available: train_images_per_s, train_loss, val_loss$"):
        trainer.train()


@pytest.mark.slow
def test_a_run_without_a_monitor_says_where_it_finished(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, monitor="off")
    trainer.writer = Recorder()
    with caplog.at_level(logging.INFO):
        trainer.train()
    assert f"finished: run folder {trainer.run.root}" in said(caplog)
    assert not trainer.run.best.exists()
    assert not any(tag.startswith("hparam/") for tag in trainer.writer.scalars)


@pytest.mark.slow
def test_save_period_links_the_epoch_checkpoints(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, epochs=4, save_period=2)
    with caplog.at_level(logging.DEBUG, logger="sever.trainer.base"):
        trainer.train()
    assert f"saved {trainer.run.epoch_checkpoint(2)}" in said(caplog)
    assert trainer.run.saved_epochs() == [2, 4]
    assert load_checkpoint(trainer.run.epoch_checkpoint(2))["epoch"] == 2
    none = make(tmp_path / "none", train=1, valid=1, epochs=2, save_period=0)
    none.train()
    assert none.run.saved_epochs() == []


@pytest.mark.slow
def test_encoder_frozen_for_the_first_epochs(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=0, epochs=3, freeze_encoder_epochs=2)
    frozen = []
    trainer.optimizer.register_step_pre_hook(lambda *_: frozen.append(trainer.model.encoder_frozen))
    encoder = weights(trainer.model.encoder)
    with caplog.at_level(logging.INFO):
        trainer.train()
    assert frozen == [True, True, False] and not trainer.model.encoder_frozen
    assert not torch.equal(encoder, weights(trainer.model.encoder))
    assert "encoder frozen for epochs 1-2" in said(caplog) and "encoder unfrozen from epoch 3" in said(caplog)


def test_weights_gone_non_finite_are_never_saved(tmp_path):
    trainer = make(tmp_path, train=1, valid=0, epochs=1)
    with torch.no_grad():
        trainer.model.decoder.bias[1] = float("nan")
    with pytest.raises(TrainingError) as error:
        trainer._save_epoch(1, improved=True)
    assert str(error.value) == (
        f"the model's weights hold NaN or infinite values (decoder.bias) at epoch 1; training stopped without "
        f"saving them, {trainer.run.last} keeps the last good weights. Lower the learning rate, set "
        f"trainer.grad_clip, or check the data.")
    assert not trainer.run.last.exists()


def test_run_eta_extrapolates_from_the_progress(tmp_path, monkeypatch):
    trainer = make(tmp_path, epochs=5)
    trainer._started = (100.0, 2)  # began at epoch 2 at t=100
    monkeypatch.setattr("sever.trainer.base.time", SimpleNamespace(monotonic=lambda: 160.0))
    # at t=160, half of epoch 3 done: 1.5 epochs took 60 s, 2.5 of the 4 epochs 2..5 are left
    assert trainer.run_eta(3, 0.5) == "0:01:40"
    assert make(tmp_path).run_eta(1, 0.0) == "?"


# ---------------------------------------------------------------- stopping, checkpoints, resume


@pytest.mark.slow
def test_an_interrupted_epoch_saves_the_batches_done_and_resumes_after_them(tmp_path):
    trainer = make(tmp_path, train=3, valid=1, epochs=2, accumulate_steps=2)
    trainer.writer = Recorder()
    trainer._stop_signal = signal.SIGINT
    with pytest.raises(TrainingInterrupted, match=r"^SIGINT received: stopped at epoch 1 after 2 batches and saved "
                                                  rf"{trainer.run.last}\. Resume with: sever train -r") as stop:
        trainer.train()
    assert stop.value.signal_number == signal.SIGINT and stop.value.checkpoint == str(trainer.run.last)
    assert trainer.writer.closed
    state = load_checkpoint(trainer.run.last)
    assert (state["epoch"], state["step"]) == (0, 2)
    resumed = make(tmp_path, train=3, valid=1, epochs=2, accumulate_steps=2)
    resumed.resume(state)
    assert (resumed.start_epoch, resumed.start_step) == (1, 2)
    resumed.train()
    assert resumed.train_loader.batch_sampler.calls == [(1, 2), (2, 0)]


@pytest.mark.slow
def test_a_stop_between_epochs_saves_the_epoch_and_stops(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, epochs=3)
    trainer._stop_signal = signal.SIGTERM
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert str(stop.value) == (f"SIGTERM received: stopped after epoch 1 and saved {trainer.run.last}. "
                               f"Resume with: sever train -r {trainer.run.root}")
    assert load_checkpoint(trainer.run.last)["epoch"] == 1


def test_the_signal_handler_asks_for_a_stop_then_stops_at_once(tmp_path, caplog, monkeypatch):
    trainer = make(tmp_path)
    monkeypatch.setattr(interrupt, "REPEAT_S", 0.0)  # the second signal comes at once here
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with caplog.at_level(logging.WARNING), interrupt.listening():
        signal.raise_signal(signal.SIGTERM)
        assert trainer.stop_requested and trainer._stop_signal == signal.SIGTERM
        assert said(caplog) == ["SIGTERM received: finishing the current step, then saving"]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_forked_loader_worker_leaves_the_stop_to_the_main_process(tmp_path, monkeypatch):
    trainer = make(tmp_path)
    with interrupt.listening():
        monkeypatch.setattr("sever.utils.interrupt.os", SimpleNamespace(getpid=lambda: 0))  # as seen in a worker
        signal.raise_signal(signal.SIGINT)
        monkeypatch.undo()
    assert not trainer.stop_requested


@pytest.mark.slow
def test_training_in_another_thread_leaves_the_signal_handlers_alone(tmp_path):
    import threading

    trainer = make(tmp_path, train=1, valid=1)
    before = signal.getsignal(signal.SIGTERM)
    done = []
    worker = threading.Thread(target=lambda: done.append(trainer.train()))
    worker.start()
    worker.join()
    assert done and done[0]["epoch"] == 1 and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_resume_restores_the_whole_trainer_state(tmp_path):
    trainer = make(tmp_path, train=2, valid=1, epochs=2, ema_decay=0.5, momentum=0.9,
                   scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer.train()
    state = load_checkpoint(trainer.run.last)
    state.update(monitor_best=0.25, best_epoch=2, not_improved=3, epoch=2, step=1)
    resumed = make(tmp_path, train=2, valid=1, epochs=4, ema_decay=0.5, momentum=0.9,
                   scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    after_save = (random.random(), np.random.rand(), torch.rand(1))  # the draws that followed the checkpoint
    resumed.resume(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == after_save
    assert (resumed.monitor_best, resumed.best_epoch, resumed.not_improved) == (0.25, 2, 3)
    assert (resumed.start_epoch, resumed.start_step) == (3, 1)
    assert torch.equal(weights(resumed.model), weights(trainer.model))
    assert torch.equal(weights(resumed.eval_model), weights(trainer.eval_model))
    assert resumed.lr_scheduler.state_dict() == trainer.lr_scheduler.state_dict()
    assert resumed.optimizer.state_dict()["param_groups"] == trainer.optimizer.state_dict()["param_groups"]
    for index, moments in trainer.optimizer.state_dict()["state"].items():
        assert torch.equal(moments["momentum_buffer"], resumed.optimizer.state_dict()["state"][index]["momentum_buffer"])
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()


@pytest.mark.slow
def test_resume_refuses_weights_only_and_mismatched_checkpoints(tmp_path):
    trainer = make(tmp_path, train=1, valid=0)
    trainer.train()
    state = load_checkpoint(trainer.run.last)
    weights_only = ("this checkpoint holds weights only (e.g. from sever upload --weights-only): it can be used "
                    "for prediction or as encoder_weights, but training cannot resume from it")
    with pytest.raises(CheckpointError) as error:
        make(tmp_path).resume({**state, "optimizer": None})
    assert str(error.value) == weights_only
    without_rng = {k: v for k, v in state.items() if k != "rng"}
    with pytest.raises(CheckpointError) as error:
        make(tmp_path).resume(without_rng)
    assert str(error.value) == weights_only
    with pytest.raises(CheckpointError, match=r"^checkpoint does not match the model: Error"):
        make(tmp_path, model=Tiny(classes=3)).resume(state)
    with pytest.raises(CheckpointError, match=r"^the checkpoint's optimizer or lr_scheduler state does not fit the "
                                              r"config's \(were optimizer or lr_scheduler changed with --set\?\): "):
        make(tmp_path).resume({**state, "optimizer": {"state": {}, "param_groups": []}})
    old = {k: v for k, v in state.items() if k not in ("best_epoch", "step")}
    resumed = make(tmp_path)
    resumed.resume(old)
    assert resumed.best_epoch is None and resumed.start_step == 0


@pytest.mark.slow
def test_a_time_budget_spent_ends_the_run_after_a_validated_epoch(tmp_path, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    trainer = make(tmp_path, train=1, valid=1, epochs=5, val_period=5, time_budget="0.4s")
    clock.time(trainer)  # the one 1-s step spends the budget
    with caplog.at_level(logging.INFO):
        log = trainer.train()
    assert log["epoch"] == 1 and "val_loss" in log
    assert "time budget: 3 s of 0 s spent; training ends after epoch 1" in said(caplog)  # 1-s step, 2-s validation
    state = load_checkpoint(trainer.run.last)
    assert state["time_budget"]["final_epoch"] == 1
    resumed = make(tmp_path, train=1, valid=1, epochs=5, val_period=5, time_budget="0.4s")
    resumed.resume(state)
    assert resumed.train() == {} and resumed.train_loader.batch_sampler.calls == []


def test_flatten_config_for_the_hparams():
    assert flatten_config({"trainer": {"epochs": 4, "clip": None}, "metrics": ["Dice"], "empty": {}, "on": True}) == {
        "trainer.epochs": 4, "trainer.clip": "None", "metrics": "['Dice']", "empty": "{}", "on": True}


@pytest.mark.slow
def test_tensorboard_is_written_only_when_asked(tmp_path):
    quiet = make(tmp_path / "quiet", train=1, valid=1)
    assert quiet.writer is None
    quiet.train()
    assert not quiet.run.tensorboard.exists() or not any(quiet.run.tensorboard.iterdir())
    logged = make(tmp_path / "logged", train=1, valid=1, tensorboard=True)
    logged.train()
    assert list(logged.run.tensorboard.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_the_run_description_holds_the_config_in_its_own_order_and_the_monitored_metric(tmp_path):
    trainer = make(tmp_path, train=1, valid=1)
    trainer.writer = Recorder()
    trainer.train()
    lines = trainer.writer.texts["config"].splitlines()
    assert all(line.startswith("    ") for line in lines), "a markdown code block"
    assert lines.index("      epochs: 1") < lines.index("      accumulate_steps: 1"), "the config's order, not sorted"
    start, end = (summary.SerializeToString() for summary in trainer.writer.summaries[1:])
    assert b"session_start_info" in start and b"trainer.epochs" in start and b"session_end_info" in end
    experiment = trainer.writer.summaries[0].SerializeToString()
    assert b"hparam/best_val_loss" in experiment and b"trainer.epochs" in experiment
    off = make(tmp_path, train=1, valid=1, monitor="off")
    off.writer = Recorder()
    off.train()
    assert b"hparam/" not in off.writer.summaries[0].SerializeToString()


@pytest.mark.slow
def test_each_epoch_is_logged_with_the_run_eta_until_the_last(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, epochs=2)
    with caplog.at_level(logging.INFO, logger="sever.trainer.base"):
        trainer.train()
    epochs = [r.getMessage() for r in caplog.records
              if r.name == "sever.trainer.base" and r.getMessage().startswith("epoch ")]  # not the progress lines
    assert len(epochs) == 2
    assert epochs[0].startswith("epoch 1/2  train_loss ") and "  val_loss " in epochs[0]
    assert epochs[0].endswith(")") and "  (run ETA " in epochs[0]
    assert re.fullmatch(r"epoch 2/2  train_loss \d\.\d{4}  val_loss \d\.\d{4}",
                        epochs[1]), epochs[1]
    best = [r.getMessage() for r in caplog.records if r.getMessage().startswith("new best")]
    assert best[-1] == f"new best val_loss {trainer.monitor_best:.5f}: saved {trainer.run.best}"


@pytest.mark.slow
def test_checkpoints_are_copied_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr("sever.trainer.base.os.link", no_links)
    trainer = make(tmp_path, train=1, valid=1, epochs=1)
    trainer.train()
    assert load_checkpoint(trainer.run.best)["epoch"] == 1
    assert trainer.run.best.read_bytes() == trainer.run.last.read_bytes()
    assert not list(trainer.run.checkpoints.glob(".*.tmp"))


@pytest.mark.slow
def test_checkpoints_are_hard_links_of_the_last_one(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, epochs=1)
    stale = trainer.run.best.with_name(f".{trainer.run.best.name}.{os.getpid()}.tmp")
    stale.write_bytes(b"left by a crash")
    trainer.train()
    assert os.path.samefile(trainer.run.best, trainer.run.last)
    assert os.path.samefile(trainer.run.epoch_checkpoint(1), trainer.run.last)
    assert not stale.exists()


def flat_cosine(optimizer):
    from sever.model.scheduler import FlatCosineAnnealing

    return FlatCosineAnnealing(optimizer, start_anneal=1, n_epochs=10)


@pytest.mark.slow
def test_a_time_budget_lays_the_schedule_over_the_epochs_the_run_can_take(tmp_path, caplog):
    budgeted = make(tmp_path / "budgeted", train=1, valid=0, epochs=3, time_budget="10h", scheduler=flat_cosine)
    budgeted.writer = Recorder()
    with caplog.at_level(logging.DEBUG, logger="sever.trainer.base"):
        budgeted.train()
    assert "time budget: the learning-rate schedule now ends at epoch 3" in said(caplog)
    plain = make(tmp_path / "plain", train=1, valid=0, epochs=3, scheduler=flat_cosine)
    plain.writer = Recorder()
    plain.train()
    # the 10-epoch cosine ends at epoch 3 under the budget (trainer.epochs bounds the plan)
    assert budgeted.writer.scalars["lr/decoder"][-1][1] < 0.5 * plain.writer.scalars["lr/decoder"][-1][1]
    assert budgeted.lr_scheduler.n_epochs == 3
    assert load_checkpoint(budgeted.run.last)["time_budget"]["final_epoch"] is None


class Clock:
    """The budget's clock, moved by the test: 1 s per training step, 2 s per validation."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self, trainer) -> None:
        step, validate = trainer._train_step, trainer._valid_epoch

        def timed_step(*args):
            self.now += 1.0
            return step(*args)

        def timed_validation(epoch):
            self.now += 2.0
            return validate(epoch)

        trainer._train_step, trainer._valid_epoch = timed_step, timed_validation


@pytest.mark.slow
def test_time_for_part_of_an_epoch_trains_a_shorter_last_one(tmp_path, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    trainer = make(tmp_path, train=10, valid=1, epochs=10, time_budget="32s")
    clock.time(trainer)
    with caplog.at_level(logging.INFO):
        log = trainer.train()
    # epochs of 10 + 2 s: after epoch 2 (24 s) no whole epoch fits, but 6 s of training beside validation do
    assert "time budget: epoch 3 trains 6 of its 10 batches" in said(caplog)
    assert log["epoch"] == 3 and "val_loss" in log
    state = load_checkpoint(trainer.run.last)["time_budget"]
    assert (state["final_epoch"], state["spent"], state["passes"]) == (3, 32.0, [10.0, 10.0, 6.0])


@pytest.mark.slow
def test_time_for_under_a_quarter_of_an_epoch_is_left_unused(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    trainer = make(tmp_path, train=10, valid=1, epochs=10, time_budget="27s")
    clock.time(trainer)
    assert trainer.train()["epoch"] == 2  # 3 s left after epoch 2: 1 s of training beside validation
    assert load_checkpoint(trainer.run.last)["time_budget"]["passes"] == [10.0, 10.0]


@pytest.mark.slow
def test_a_first_epoch_longer_than_the_budget_stops_when_it_is_spent(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    trainer = make(tmp_path, train=10, valid=1, epochs=10, time_budget="4s")
    clock.time(trainer)
    assert trainer.train()["epoch"] == 1 and trainer.steps_done == 4 and not trainer.interrupted


@pytest.mark.slow
def test_only_a_pass_the_budget_cut_short_says_so(tmp_path, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    whole = make(tmp_path / "whole", train=10, valid=1, epochs=10, time_budget="10s")
    clock.time(whole)  # the budget runs out with the epoch's last batch: nothing was cut
    with caplog.at_level(logging.INFO):
        assert whole.train()["epoch"] == 1 and whole.steps_done == 10
    signalled = make(tmp_path / "signalled", train=10, valid=1, epochs=10, time_budget="1h")
    signalled._stop_signal = signal.SIGTERM
    with caplog.at_level(logging.INFO), pytest.raises(TrainingInterrupted):
        signalled.train()
    assert signalled.steps_done == 1
    assert not [m for m in said(caplog) if m.startswith("time budget: epoch")]


@pytest.mark.slow
def test_the_epoch_line_extrapolates_the_run_eta_from_the_session_so_far(tmp_path, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr("sever.trainer.base.time", clock)
    trainer = make(tmp_path, train=2, valid=1, epochs=3)
    clock.time(trainer)  # epochs of 2 one-second steps and a 2-s validation
    with caplog.at_level(logging.INFO):
        trainer.train()
    epochs = [r.getMessage() for r in caplog.records if r.name == "sever.trainer.base"]  # not the progress lines
    etas = [re.search(r"\(run ETA (\S+)\)", m) for m in epochs if m.startswith("epoch ")]
    assert [eta.group(1) if eta else None for eta in etas] == ["0:00:08", "0:00:04", None]  # 2 then 1 epochs of 4 s


@pytest.mark.slow
def test_a_budget_spent_in_the_last_epoch_leaves_the_end_as_planned(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, epochs=1, time_budget="0.001s")
    with caplog.at_level(logging.INFO):
        trainer.train()
    assert load_checkpoint(trainer.run.last)["time_budget"]["final_epoch"] is None
    assert "time budget:" not in caplog.text  # training ended as planned (its validation was cut at the deadline)


# ---------------------------------------------------------------- AMP, EMA buffers, progress, distributed


@pytest.mark.slow
def test_fp16_scales_the_loss_and_the_scaler_state_is_checkpointed_and_restored(tmp_path):
    trainer = make(tmp_path, train=2, valid=1, amp="fp16", grad_clip=0.01)
    scaled = []
    trainer.model.decoder.weight.register_hook(lambda grad: scaled.append(grad.abs().max().item()))
    steps = gradient_steps(trainer)
    trainer.train()
    assert scaled[0] > 1000 * steps[0].abs().max().item(), "backward runs on the scaled loss"
    assert steps[0].norm().item() == pytest.approx(0.01, rel=1e-3), "unscaled before clipping"
    state = load_checkpoint(trainer.run.last)
    assert state["scaler"]["scale"] == 65536.0
    state["scaler"]["scale"] = 1024.0
    resumed = make(tmp_path, train=2, valid=1, amp="fp16")
    resumed.resume(state)
    assert resumed.scaler.get_scale() == 1024.0
    assert make(tmp_path).scaler.is_enabled() is False


@pytest.mark.slow
def test_ema_averages_the_batchnorm_statistics_too(tmp_path):
    decay = 0.75
    trainer = make(tmp_path, train=3, valid=0, ema_decay=decay, model=Tiny(norm=True))
    after = []
    trainer.optimizer.register_step_post_hook(lambda *_: after.append(trainer.model.encoder[1].running_mean.clone()))
    trainer._train_epoch(1, 0)
    expected = after[0]
    for mean in after[1:]:
        expected = decay * expected + (1 - decay) * mean
    assert torch.allclose(trainer.eval_model.encoder[1].running_mean, expected, atol=1e-6)
    assert not torch.allclose(expected, after[-1])


@pytest.mark.slow
def test_a_run_without_ema_resumes_from_a_checkpoint_with_one(tmp_path):
    trainer = make(tmp_path, train=1, valid=0, ema_decay=0.5)
    trainer.train()
    resumed = make(tmp_path, train=1, valid=0)
    resumed.resume(load_checkpoint(trainer.run.last))
    assert resumed.ema is None and torch.equal(weights(resumed.model), weights(trainer.model))


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bars."""

    def isatty(self):
        return True


@pytest.mark.slow
def test_the_progress_bars_show_the_epoch_the_loss_the_rate_and_the_run_eta(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    clock = iter(range(100, 1000))  # the training clock: from 10 s, 0.1 s per reading (start and end of a pass)
    monkeypatch.setattr("sever.trainer.trainer.time", SimpleNamespace(perf_counter=lambda: 0.1 * next(clock)))
    bar_clock = iter(range(100, 1000))  # the bars' clock: from 10 s, 0.1 s per reading (start, each image rate)
    monkeypatch.setattr("sever.utils.progress.time", SimpleNamespace(monotonic=lambda: 0.1 * next(bar_clock)))
    monotonic = iter(range(0, 10000, 10))  # the run clock: 10 s per reading
    monkeypatch.setattr("sever.trainer.base.time", SimpleNamespace(monotonic=lambda: float(next(monotonic))))
    trainer = make(tmp_path, train=2, valid=1, epochs=2, lr=0.0)
    losses = [float((trainer.model(x) - y).pow(2).mean().detach()) for x, y in trainer.train_loader.batches]
    log = trainer.train()
    screen = terminal.getvalue()
    first = re.search(r"epoch 1/2: +50%[^\r]*? 1/2 [^\r]*?loss=[^\r]*", screen).group(0)
    # 2 images in 0.1 s; half of epoch 1 of 2 done after 10 s of the run: 30 s left
    assert first.endswith(f"img_s=20.0, loss={losses[0]:.4f}, run_eta=0:00:30]")
    assert "validation" in screen
    lines = screen.split("\r")
    assert lines[-1].strip() == "", "the bars are cleared when done"
    assert log["train_images_per_s"] == pytest.approx(4 / 0.1), "4 images from the clock's start to the epoch's end"
    assert screen.count("run_eta=0:00:00]") >= 1, "nothing left at the run's last batch"

    quiet = io.StringIO()  # not a terminal: no bars
    monkeypatch.setattr(sys, "stderr", quiet)
    make(tmp_path / "quiet", train=1, valid=1).train()
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_a_resumed_epochs_bar_starts_at_the_batches_done(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer = make(tmp_path, train=3, valid=0)
    trainer._train_epoch(1, start_step=2)
    assert re.search(r" 3/3 ", terminal.getvalue()) and not re.search(r" 1/3 ", terminal.getvalue())


@pytest.fixture
def one_rank_job(tmp_path):
    """Rank 0 of a job, on a one-process gloo group: the distributed code paths, every sum over this rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield Distributed(rank=0, world_size=2)
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_training_wraps_the_network_and_reduces_the_logs(tmp_path, one_rank_job):
    from torch.nn.parallel import DistributedDataParallel

    metric = Seen()
    trainer = make(tmp_path / "ddp", train=3, valid=1, epochs=2, freeze_encoder_epochs=1, metrics=[metric],
                   model=Tiny(norm=True), distributed=one_rank_job)
    alone = make(tmp_path / "alone", train=3, valid=1, epochs=2, freeze_encoder_epochs=1, metrics=[Seen()],
                 model=Tiny(norm=True))
    assert isinstance(trainer.network, DistributedDataParallel) and trainer.network.module is trainer.model
    first = trainer.network
    log = trainer.train()
    assert trainer.network is not first, "wrapped again when the encoder's parameters became trainable"
    assert log == {**alone.train(), "train_images_per_s": log["train_images_per_s"]}, "sums over one rank"
    assert metric.reductions == 4, "the metric is reduced at every training and validation epoch"
    assert torch.equal(weights(trainer.model), weights(alone.model))


@pytest.mark.slow
def test_a_checkpoint_holds_what_a_resume_and_a_reader_need(tmp_path):
    from sever import __version__

    trainer = make(tmp_path, train=1, valid=1)
    trainer.train()
    state = load_checkpoint(trainer.run.last)
    assert (state["sever_version"], state["arch"], state["config"]) == (__version__, "Tiny", trainer.config)
    assert state["lr_scheduler"] is None and state["time_budget"] is None and "ema_state_dict" not in state
    bare = make(tmp_path / "bare", train=1, valid=1)
    bare.config["arch"] = "Tiny"  # a bare name is allowed in configs
    bare.train()
    assert load_checkpoint(bare.run.last)["arch"] == "Tiny"


@pytest.mark.slow
def test_resume_across_a_scheduler_added_or_removed(tmp_path, caplog):
    with_scheduler = make(tmp_path / "with", train=1, valid=0, scheduler=flat_cosine)
    with_scheduler.train()
    without = make(tmp_path / "without", train=1, valid=0)
    without.train()
    plain = make(tmp_path, train=1, valid=0)
    plain.resume(load_checkpoint(with_scheduler.run.last))
    scheduled = make(tmp_path, train=1, valid=0, scheduler=flat_cosine)
    with caplog.at_level(logging.INFO):
        scheduled.resume(load_checkpoint(without.run.last))
    assert scheduled.lr_scheduler.last_epoch == 0, "a fresh schedule"
    assert "resumed at epoch 2, batch 0" in said(caplog)


@pytest.mark.slow
def test_a_budget_resumed_carries_the_time_spent(tmp_path):
    trainer = make(tmp_path, train=1, valid=0, epochs=2, time_budget="10h")
    trainer.train()
    state = load_checkpoint(trainer.run.last)
    state["time_budget"]["spent"] = 1234.0
    resumed = make(tmp_path, train=1, valid=0, epochs=3, time_budget="10h")
    resumed.resume(state)
    assert resumed.budget.spent >= 1234.0
    unbudgeted = make(tmp_path, train=1, valid=0, epochs=3)
    unbudgeted.resume(state)
    assert unbudgeted.budget is None and unbudgeted.start_epoch == 3


def test_a_malformed_time_budget_names_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.time_budget: expected a duration such as 2h30m"):
        make(tmp_path, time_budget="soon")


@pytest.mark.slow
def test_the_epoch_line_shows_the_losses_and_the_monitored_metric_and_a_debug_line_every_value(tmp_path, caplog):
    trainer = make(tmp_path, train=1, valid=1, epochs=2)
    with caplog.at_level(logging.DEBUG, logger="sever.trainer.base"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if r.name == "sever.trainer.base" and r.getMessage().startswith("epoch ")]
    number = r"\d+\.\d{4}"
    assert re.fullmatch(rf"epoch 1/2  train_loss {number}  val_loss {number}  \(run ETA \d+:\d\d:\d\d\)", lines[0]), lines[0]
    assert re.fullmatch(rf"epoch 1/2 values  train_loss {number}  train_images_per_s {number}  val_loss {number}",
                        lines[1]), lines[1]
    assert [r.levelno for r in caplog.records if r.getMessage() in lines[:2]] == [logging.INFO, logging.DEBUG]
    assert f"new best val_loss {trainer.monitor_best:.5f}: saved {trainer.run.best}" in said(caplog)


def test_an_equal_score_is_no_improvement(tmp_path):
    trainer = make(tmp_path)
    assert trainer._update_monitor({"epoch": 1, "val_loss": 1.0})
    assert not trainer._update_monitor({"epoch": 2, "val_loss": 1.0}) and trainer.best_epoch == 1


@pytest.mark.slow
def test_unnamed_parameter_groups_log_their_rate_as_all(tmp_path):
    trainer = make(tmp_path, train=1, valid=0)
    for group in trainer.optimizer.param_groups:
        del group["name"]
    trainer.writer = Recorder()
    trainer.train()
    assert trainer.writer.scalars["lr/all"] == [(1, 0.1)]


@pytest.mark.slow
def test_other_ranks_write_no_checkpoint_and_no_tensorboard(tmp_path, one_rank_job):
    other = Distributed(rank=1, world_size=2)
    trainer = make(tmp_path, train=2, valid=1, tensorboard=True, distributed=other)
    assert trainer.writer is None
    trainer.train()
    assert not trainer.run.last.exists() and not trainer.run.best.exists()
    trainer._stop_signal = signal.SIGTERM
    trainer.train_loader = Loader(batches(3))
    trainer.accumulate = 1
    trainer.epochs, trainer.start_epoch = 2, 2
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert not trainer.run.last.exists()


def test_weights_gone_non_finite_are_not_saved_at_an_interruption_either(tmp_path):
    trainer = make(tmp_path, train=2, valid=0, epochs=1, nan_policy="skip")
    with torch.no_grad():
        trainer.model.decoder.bias[0] = float("nan")
    trainer._stop_signal = signal.SIGTERM
    with pytest.raises(TrainingError, match=r"NaN or infinite values \(decoder.bias\) at epoch 1;"):
        trainer.train()
    assert not trainer.run.last.exists()


@pytest.mark.slow
def test_validation_in_tiles_of_a_saturated_model_scores_clamped_logits(tmp_path):
    """Probabilities that round to 1.0 become logit(1 - 1e-6), not infinity, for the loss and the metrics."""
    model = Tiny()
    with torch.no_grad():
        model.decoder.bias.fill_(1.0e4)
    trainer = make(tmp_path, SegmentationTrainer, train=1, valid=1, model=model, lr=0.0)
    trainer.tiling = Tiling(32, 32)  # the 4x4 images are one (padded) tile
    trainer.config["classes"] = 2
    log = trainer.train()
    (_, masks), = trainer.valid_loader
    clamped = torch.logit(torch.tensor(1.0), eps=1e-6)  # in float32, as the probabilities are
    assert log["val_loss"] == pytest.approx(float((clamped - masks).pow(2).mean()), rel=1e-5)


@pytest.mark.slow
def test_validation_visuals_are_logged_at_their_epoch(tmp_path):
    trainer = make(tmp_path, SegmentationTrainer, train=1, valid=1, epochs=2, vis_images=1)
    trainer.writer = Recorder()
    trainer.train()
    assert trainer.writer.images["val/truth_above_prediction"][1] == 2


@pytest.mark.slow
def test_reduce_on_plateau_steps_with_the_monitored_metric(tmp_path):
    trainer = make(tmp_path, train=1, valid=1, epochs=3, scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=0, threshold=10.0))  # no epoch improves by 1000 %: halved each time
    trainer.writer = Recorder()
    trainer.train()
    assert trainer.writer.scalars["lr/decoder"] == [(1, 0.1), (2, 0.05), (3, 0.025)]


# Tensor methods that, on a GPU, make the host wait for the device (torch.cuda.set_sync_debug_mode
# reports them there; on the CPU they are counted instead). numpy() is left out: it refuses device tensors.
DEVICE_READS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__")


def counted_device_reads(monkeypatch) -> list[str]:
    """The names of the :data:`DEVICE_READS` called from now on, in order."""
    calls = []
    for name in DEVICE_READS:
        def counting(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_the_training_step_never_waits_for_the_device_only_log_steps_and_the_pass_end_read_it(tmp_path, monkeypatch,
                                                                                                policy):
    from sever.model.metric import Dice

    def trainer_over(n_batches):
        data = batches(n_batches, seed=3)
        data[1][1][..., 3:] = PAD_LABEL  # a padded batch: the valid mask goes to the loss and the metric
        trainer = make(tmp_path / str(n_batches), SegmentationTrainer, train=n_batches, valid=0, loss=PartsLoss(),
                       metrics=[Dice()], log_step=4, accumulate_steps=2, grad_clip=1.0, ema_decay=0.9,
                       nan_policy=policy)
        trainer.writer = Recorder()
        return trainer

    short, long = trainer_over(4), trainer_over(12)
    reads = counted_device_reads(monkeypatch)
    float(torch.ones(()))
    assert reads == ["__float__"], "the counter sees a read"
    reads.clear()
    short._train_epoch(1, 0)
    short_reads = list(reads)
    reads.clear()
    log = long._train_epoch(1, 0)
    extra = list(reads)
    assert math.isfinite(log["train_loss"]) and long.ema.n_averaged.item() == 6, "it trained, EMA and all"
    for name in short_reads:
        extra.remove(name)
    per_step = ["__bool__"] * 8 if policy == "skip" else []  # skip: the host decides before each backward pass
    assert sorted(extra) == sorted(["tolist", "tolist"] + per_step), (
        "8 more steps, 2 more log steps (4 and 8): one read each, nothing per step")
    assert short_reads.count("tolist") == 2 + 1, "log step 0 and the pass's end (+ the Dice's per-class values)"
    assert [step for step, _ in long.writer.scalars["batch/loss"]] == [0, 4, 8], "the log steps are still logged"


def test_the_exponential_average_updates_as_torchs_and_keeps_its_state_dict():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from sever.trainer.trainer import ExponentialAverage

    model = Tiny(norm=True)
    mine = ExponentialAverage(model, 0.7)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    for step in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model.encoder[1].running_mean.add_(1.0)
            model.encoder[1].num_batches_tracked.add_(5)
        mine.update_parameters(model)
        torchs.update_parameters(model)
    expected = torchs.state_dict()
    assert list(mine.state_dict()) == list(expected)
    for key, value in mine.state_dict().items():
        assert value.dtype == expected[key].dtype and torch.allclose(value, expected[key]), key
    assert mine.n_averaged.device.type == "cpu", "its count is read on the host"
