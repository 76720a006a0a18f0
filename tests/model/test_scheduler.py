"""LR schedules: the write-up's flat-then-cosine curve, warm-up, resume, torch schedulers, config errors."""

import io
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from sever.exceptions import ConfigError
from sever.model.optimizer import build_optimizer, group_lrs
from sever.model.scheduler import (
    NOT_CONFIGURABLE,
    SCHEDULERS,
    build_scheduler,
    set_horizon,
    step_scheduler,
    step_within_epoch,
    torch_scheduler_names,
)

ENCODER_LR, DECODER_LR = 7.0e-5, 3.0e-3
WRITE_UP = {"type": "FlatCosineAnnealing", "args": {"start_anneal": 30, "n_epochs": 250}}


class TinyNet(nn.Module):
    """Stand-in model with an encoder and a decoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.decoder = nn.Linear(4, 2)


def make_optimizer(optimizer_type="RAdam"):
    block = {"type": optimizer_type, "encoder": {"lr": ENCODER_LR}, "decoder": {"lr": DECODER_LR}}
    return build_optimizer(TinyNet(), block)


def lrs_by_epoch(scheduler, epochs):
    """``{epoch: (encoder lr, decoder lr)}`` for epochs 0..epochs-1, stepping once per epoch."""
    seen = {}
    for epoch in range(epochs):
        seen[epoch] = tuple(group_lrs(scheduler.optimizer).values())
        scheduler.optimizer.step()  # no gradients, so a no-op; the trainer steps the optimizer before the scheduler
        step_scheduler(scheduler, {}, None)
    return seen


def test_flat_cosine_follows_the_write_up_curve_per_group():
    optimizer = make_optimizer()
    eta_min = 1e-6
    scheduler = build_scheduler(optimizer, {**WRITE_UP, "args": {**WRITE_UP["args"], "eta_min": eta_min}})
    seen = lrs_by_epoch(scheduler, 301)
    for base, index in ((ENCODER_LR, 0), (DECODER_LR, 1)):
        assert seen[0][index] == seen[29][index] == seen[30][index] == base
        assert seen[140][index] == pytest.approx((base + eta_min) / 2)  # half-way through the cosine
        assert seen[85][index] == pytest.approx(eta_min + (base - eta_min) * (1 + math.cos(math.pi / 4)) / 2)
        assert seen[250][index] == seen[300][index] == eta_min
    assert seen[31][1] < seen[30][1]


def test_flat_cosine_warm_up_ramps_linearly_to_the_base_lr():
    scheduler = build_scheduler(make_optimizer(), {"type": "FlatCosineAnnealing",
                                                   "args": {"start_anneal": 6, "n_epochs": 10, "warmup_epochs": 3}})
    seen = lrs_by_epoch(scheduler, 7)
    assert [seen[e][1] for e in range(5)] == pytest.approx([DECODER_LR * f for f in (0.25, 0.5, 0.75, 1, 1)])
    assert seen[1][0] == pytest.approx(ENCODER_LR / 2)
    assert seen[6][1] == DECODER_LR


def test_warmup_cosine_peaks_after_warm_up_then_anneals():
    scheduler = build_scheduler(make_optimizer(), {"type": "WarmupCosine", "args": {"warmup_epochs": 4, "n_epochs": 12}})
    decoder = [lrs[1] for lrs in lrs_by_epoch(scheduler, 14).values()]
    assert decoder[:5] == pytest.approx([DECODER_LR * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)])
    assert decoder[8] == pytest.approx(DECODER_LR / 2)
    assert decoder[12] == decoder[13] == 0.0


def lrs_within_epochs(scheduler, epochs, steps):
    """Decoder LR before each of ``steps`` steps of each epoch, as the trainer moves it."""
    seen = []
    for _ in range(epochs):
        for step in range(steps):
            step_within_epoch(scheduler, step / steps)
            seen.append(group_lrs(scheduler.optimizer)["decoder"])
            scheduler.optimizer.step()
        step_scheduler(scheduler, {}, None)
    return seen


def test_a_per_step_schedule_follows_the_closed_form_at_every_step():
    args = {"start_anneal": 1, "n_epochs": 3, "eta_min": 1e-5}
    per_step = build_scheduler(make_optimizer(), {"type": "FlatCosineAnnealing", "args": {**args, "per_step": True}})
    seen = lrs_within_epochs(per_step, 3, 4)
    position = [e + s / 4 for e in range(3) for s in range(4)]
    expected = [DECODER_LR if x < 1 else 1e-5 + (DECODER_LR - 1e-5) * (1 + math.cos(math.pi * (x - 1) / 2)) / 2
                for x in position]
    assert seen == pytest.approx(expected)
    assert seen[-1] < DECODER_LR * 0.05  # the last step trains near the floor
    epoch_wise = build_scheduler(make_optimizer(), {"type": "FlatCosineAnnealing", "args": args})
    stepped = lrs_within_epochs(epoch_wise, 3, 4)
    assert stepped[-4:] == pytest.approx([expected[8]] * 4)  # the whole last epoch at half the base rate
    assert per_step.optimizer.param_groups[0]["lr"] == epoch_wise.optimizer.param_groups[0]["lr"] == 1e-5


def test_a_per_step_schedule_ends_at_a_fractional_horizon():
    scheduler = build_scheduler(make_optimizer(), {"type": "FlatCosineAnnealing",
                                                   "args": {"start_anneal": 2, "n_epochs": 8, "per_step": True}})
    assert set_horizon(scheduler, 3.4)
    assert (scheduler.start_anneal, scheduler.n_epochs) == (pytest.approx(0.85), 3.4)  # flat for a quarter
    seen = lrs_within_epochs(scheduler, 4, 10)
    assert seen[33] == pytest.approx(DECODER_LR * (1 + math.cos(math.pi * (3.3 - 0.85) / 2.55)) / 2)
    assert seen[34:] == [0.0] * 6  # past the horizon: the floor
    epoch_wise = build_scheduler(make_optimizer(), {"type": "FlatCosineAnnealing",
                                                    "args": {"start_anneal": 2, "n_epochs": 8}})
    set_horizon(epoch_wise, 3.4)
    assert (epoch_wise.start_anneal, epoch_wise.n_epochs) == (1, 4)  # the epochs that hold it


def test_flat_cosine_resumes_exactly_from_a_weights_only_state_dict():
    block = {"type": "FlatCosineAnnealing", "args": {"start_anneal": 5, "n_epochs": 20, "warmup_epochs": 2}}
    scheduler = build_scheduler(make_optimizer("Ranger"), block)
    straight = lrs_by_epoch(scheduler, 25)

    first = build_scheduler(make_optimizer("Ranger"), block)
    lrs_by_epoch(first, 9)
    saved = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    optimizer = make_optimizer("Ranger")
    resumed = build_scheduler(optimizer, block)
    optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    continued = lrs_by_epoch(resumed, 16)
    assert [continued[e] for e in range(16)] == [straight[e] for e in range(9, 25)]


def test_every_torch_scheduler_is_registered_or_explained():
    names = torch_scheduler_names()
    assert {"StepLR", "MultiStepLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
            "ExponentialLR", "ReduceLROnPlateau", "LinearLR"} <= set(names)
    for name in names:
        if name in NOT_CONFIGURABLE:
            with pytest.raises(ConfigError, match=rf"lr_scheduler\.type: {name} takes Python functions"):
                build_scheduler(make_optimizer(), {"type": name})
        else:
            assert SCHEDULERS.get(name, "lr_scheduler.type") is getattr(lr_scheduler, name)


@pytest.mark.parametrize(
    "block, decoder_lrs",
    [
        ({"type": "StepLR", "args": {"step_size": 2, "gamma": 0.5}}, [1, 1, 0.5, 0.5, 0.25]),
        ({"type": "MultiStepLR", "args": {"milestones": [1, 3], "gamma": 0.1}}, [1, 0.1, 0.1, 0.01, 0.01]),
        ({"type": "CosineAnnealingLR", "args": {"T_max": 4}}, [1, 0.8535534, 0.5, 0.1464466, 0]),
    ],
)
def test_torch_schedulers_build_from_config_and_step_per_epoch(block, decoder_lrs):
    seen = lrs_by_epoch(build_scheduler(make_optimizer(), block), 5)
    assert [seen[e][1] / DECODER_LR for e in range(5)] == pytest.approx(decoder_lrs, abs=1e-6)


def test_no_block_means_no_scheduler_and_stepping_none_is_harmless():
    assert build_scheduler(make_optimizer(), None) is None
    step_scheduler(None, {}, None)


@pytest.mark.parametrize(
    "block, message",
    [
        ({"type": "FlatCosine"}, r"lr_scheduler\.type: unknown lr scheduler 'FlatCosine'\. Did you mean 'FlatCosineAnnealing'\?"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": 300, "n_epochs": 250}},
         r"lr_scheduler\.args\.start_anneal: must be <= n_epochs \(250\), got 300"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": -1, "n_epochs": 250}},
         r"lr_scheduler\.args\.start_anneal: expected an integer number of epochs >= 0"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": 3, "n_epochs": 9, "warmup_epochs": 4}},
         r"lr_scheduler\.args\.warmup_epochs: must be <= start_anneal \(3\)"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": 3, "n_epochs": 9, "eta_min": 1e-4}},
         r"lr_scheduler\.args\.eta_min: must not exceed the lowest base LR \(7e-05\)"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": 3, "n_epochs": 9.5}},
         r"lr_scheduler\.args\.n_epochs: expected an integer number of epochs >= 1"),
        ({"type": "WarmupCosine", "args": {"warmup_epochs": 1, "n_epochs": 3, "per_step": "yes"}},
         r"lr_scheduler\.args\.per_step: expected true or false, got 'yes'"),
        ({"type": "WarmupCosine", "args": {"warmup_epochs": 10, "n_epochs": 5}},
         r"lr_scheduler\.args\.warmup_epochs: must be <= n_epochs \(5\)"),
        ({"type": "FlatCosineAnnealing", "args": {"start_anneal": 3, "n_epoch": 9}},
         r"lr_scheduler\.args\.n_epoch: unknown argument.*Did you mean 'n_epochs'\?"),
        ("ExponentialLR", r"lr_scheduler\.args: missing required argument\(s\) gamma"),
        ({"type": "StepLR", "args": {"step_size": 0}}, r"lr_scheduler\.args\.step_size: expected an integer number of epochs >= 1"),
        ({"type": "MultiStepLR", "args": {"milestones": [5, -2]}}, r"lr_scheduler\.args\.milestones: expected an integer"),
        ({"type": "StepLR", "args": {"step_size": 2, "last_epoch": 4}}, r"lr_scheduler\.args\.last_epoch: set by sever itself"),
        ({"type": "ReduceLROnPlateau", "args": {"mode": "maximum"}}, r"lr_scheduler: cannot build lr scheduler 'ReduceLROnPlateau'"),
    ],
)
def test_config_errors_name_the_key(block, message):
    with pytest.raises(ConfigError, match=message):
        build_scheduler(make_optimizer(), block)


def test_reduce_on_plateau_steps_on_the_monitored_metric():
    block = {"type": "ReduceLROnPlateau", "args": {"mode": "max", "patience": 1, "factor": 0.5}}
    scheduler = build_scheduler(make_optimizer(), block)
    for dice in (0.5, 0.6, 0.6, 0.6):
        step_scheduler(scheduler, {"val_loss": 1.0, "val_dice": torch.tensor(dice)}, "val_dice")
    assert group_lrs(scheduler.optimizer) == pytest.approx({"encoder": ENCODER_LR / 2, "decoder": DECODER_LR / 2})


def test_reduce_on_plateau_without_the_metric_is_a_config_error():
    scheduler = build_scheduler(make_optimizer(), "ReduceLROnPlateau")
    with pytest.raises(ConfigError, match="ReduceLROnPlateau needs a monitored metric"):
        step_scheduler(scheduler, {"val_dice": 0.5}, None)
    with pytest.raises(ConfigError, match=r"monitors 'val_dise'.*Did you mean 'val_dice'\? Logged: val_dice, val_loss"):
        step_scheduler(scheduler, {"val_loss": 1.0, "val_dice": 0.5}, "val_dise")
