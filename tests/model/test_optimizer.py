"""Optimisers: encoder/decoder param groups, config errors, and Ranger (RAdam + Lookahead)."""

import io

import pytest
import torch
import yaml
from torch import nn

from sever.exceptions import ConfigError
from sever.model.optimizer import OPTIMIZERS, Ranger, build_optimizer, group_lrs

WRITE_UP_BLOCK = """
optimizer:
  type: RAdam
  args: {}
  encoder: {lr: 7.0e-5, weight_decay: 3.0e-5}
  decoder: {lr: 3.0e-3, weight_decay: 3.0e-4}
"""


class TinyNet(nn.Module):
    """Stand-in segmentation model: an encoder, a decoder, and one parameter in neither."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.decoder = nn.Conv2d(4, 2, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.decoder(self.encoder(x)) * self.scale


def batch(step):
    """The (image, target) batch of training step ``step``: (2, 1, 8, 8) and (2, 2, 8, 8)."""
    generator = torch.Generator().manual_seed(step)
    return torch.randn(2, 1, 8, 8, generator=generator), torch.rand(2, 2, 8, 8, generator=generator)


def train(model, optimizer, steps):
    """One optimiser step per batch index in ``steps``, on a mean-squared-error loss."""
    for step in steps:
        image, target = batch(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(image), target).backward()
        optimizer.step()


def ids(params):
    return sorted(id(p) for p in params)


def write_up_optimizer(model):
    return build_optimizer(model, yaml.safe_load(WRITE_UP_BLOCK)["optimizer"])


# ---------------------------------------------------------------- param groups


def test_write_up_block_builds_named_groups_with_their_lr_and_weight_decay():
    optimizer = write_up_optimizer(TinyNet())
    assert isinstance(optimizer, torch.optim.RAdam)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["encoder", "decoder"]
    assert (groups["encoder"]["lr"], groups["encoder"]["weight_decay"]) == (7.0e-5, 3.0e-5)
    assert (groups["decoder"]["lr"], groups["decoder"]["weight_decay"]) == (3.0e-3, 3.0e-4)
    assert group_lrs(optimizer) == {"encoder": 7.0e-5, "decoder": 3.0e-3}


def test_every_parameter_in_exactly_one_group_leftovers_in_decoder():
    model = TinyNet()
    groups = {g["name"]: g["params"] for g in write_up_optimizer(model).param_groups}
    assert ids(groups["encoder"]) == ids(model.encoder.parameters())
    assert ids(groups["decoder"]) == ids([*model.decoder.parameters(), model.scale])
    assert ids(groups["encoder"] + groups["decoder"]) == ids(model.parameters())


def test_frozen_encoder_is_owned_and_trains_once_unfrozen():
    model = TinyNet()
    model.encoder.requires_grad_(False)
    optimizer = write_up_optimizer(model)
    encoder_group = next(g for g in optimizer.param_groups if g["name"] == "encoder")
    assert ids(encoder_group["params"]) == ids(model.encoder.parameters())

    frozen = [p.clone() for p in model.encoder.parameters()]
    train(model, optimizer, range(2))
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.encoder.parameters()))
    model.encoder.requires_grad_(True)
    train(model, optimizer, range(2, 4))
    assert not torch.equal(frozen[0], model.encoder[0].weight)


def test_group_args_override_shared_args_and_missing_group_uses_shared():
    block = {"type": "Adam", "args": {"lr": 1e-3, "betas": [0.8, 0.9]}, "encoder": {"lr": 1e-4}}
    groups = {g["name"]: g for g in build_optimizer(TinyNet(), block).param_groups}
    assert groups["encoder"]["lr"] == 1e-4 and groups["decoder"]["lr"] == 1e-3
    assert tuple(groups["encoder"]["betas"]) == tuple(groups["decoder"]["betas"]) == (0.8, 0.9)


def test_no_groups_gives_one_group_named_all():
    model = TinyNet()
    optimizer = build_optimizer(model, {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9}})
    (group,) = optimizer.param_groups
    assert (group["name"], group["lr"], group["momentum"]) == ("all", 0.1, 0.9)
    assert ids(group["params"]) == ids(model.parameters())


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimizer_builds_and_trains(name):
    model = TinyNet()
    block = {"type": name, "encoder": {"lr": 1e-3}, "decoder": {"lr": 1e-2}}
    before = model.decoder.weight.clone()
    train(model, build_optimizer(model, block), range(2))
    assert not torch.equal(before, model.decoder.weight)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "block, message",
    [
        ({"type": "Radam", "args": {"lr": 1e-3}}, r"optimizer\.type: unknown optimizer 'Radam'\. Did you mean 'RAdam'\?"),
        ({"args": {"lr": 1e-3}}, r"optimizer\.type: missing"),
        ({"type": "RAdam", "encodr": {"lr": 1e-3}}, r"optimizer\.encodr: unknown key\. Did you mean 'encoder'\?"),
        ({"type": "RAdam", "encoder": {"lr": 1e-3, "weight_decy": 0.1}, "decoder": {"lr": 1e-3}},
         r"optimizer\.encoder\.weight_decy: unknown argument for RAdam\. Did you mean 'weight_decay'\?"),
        ({"type": "RAdam", "args": {"lr": 1e-3, "params": []}}, r"optimizer\.args\.params: set by sever itself"),
        ({"type": "RAdam", "encoder": {"lr": 1e-4}, "decoder": {"lr": -1e-3}}, r"optimizer\.decoder\.lr: must be >= 0"),
        ({"type": "RAdam", "args": {"lr": 1e-3, "weight_decay": -1.0}}, r"optimizer\.args\.weight_decay: must be >= 0"),
        ({"type": "RAdam", "args": {"lr": "7e-5"}}, r"optimizer\.args\.lr: expected a number.*write 7\.0e-5"),
        ({"type": "Adam", "args": {"lr": 1e-3, "betas": [0.9, 1.5]}}, r"optimizer\.args\.betas: expected two numbers"),
        ({"type": "RAdam", "args": {}}, r"optimizer\.args\.lr: missing"),
        ({"type": "RAdam", "encoder": {"lr": 1e-4}}, r"optimizer\.decoder\.lr: missing \(set it there or in optimizer\.args\)"),
        ({"type": "RAdam", "encoder": [1e-4]}, r"optimizer\.encoder: expected a mapping"),
        ({"type": "Ranger", "args": {"lr": 1e-3, "k": 0}}, r"optimizer\.args\.k: expected an integer >= 1"),
        ({"type": "Ranger", "args": {"lr": 1e-3}, "decoder": {"alpha": 1.5}}, r"optimizer\.decoder\.alpha: expected a number in \(0, 1\]"),
        ("RAdam", r"optimizer: expected a mapping"),
    ],
)
def test_config_errors_name_the_key(block, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(TinyNet(), block)


def test_groups_need_an_encoder_submodule():
    with pytest.raises(ConfigError, match=r"optimizer\.encoder: Linear has no 'encoder' submodule"):
        build_optimizer(nn.Linear(2, 2), {"type": "Adam", "encoder": {"lr": 1e-3}, "decoder": {"lr": 1e-3}})


def test_ranger_rejects_bad_lookahead_arguments_directly():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Invalid lookahead k"):
        Ranger(params, k=2.5)
    with pytest.raises(ValueError, match="Invalid lookahead alpha"):
        Ranger(params, alpha=0.0)


# ---------------------------------------------------------------- Ranger


RADAM_ARGS = {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.01}
TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0])


def quadratic_step(weights, optimizer):
    """One step on the loss sum((w - TARGET)^2 * (1, 2, 3, 4))."""
    optimizer.zero_grad()
    ((weights - TARGET) ** 2 * torch.arange(1.0, 5.0)).sum().backward()
    optimizer.step()


def test_ranger_is_radam_between_syncs_and_pulls_alpha_towards_start_at_step_k():
    start = torch.zeros(4)
    fast, plain = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    ranger = Ranger([fast], k=3, alpha=0.5, **RADAM_ARGS)
    radam = torch.optim.RAdam([plain], **RADAM_ARGS)
    for _ in range(2):
        quadratic_step(fast, ranger)
        quadratic_step(plain, radam)
        torch.testing.assert_close(fast.detach(), plain.detach(), rtol=0, atol=0)
    quadratic_step(fast, ranger)
    quadratic_step(plain, radam)
    halfway = (start + plain.detach()) / 2  # slow weights start at w0; alpha = 0.5
    torch.testing.assert_close(fast.detach(), halfway)
    torch.testing.assert_close(ranger.state[fast]["slow_weights"], halfway)


def test_ranger_matches_lookahead_reference_over_several_cycles():
    k, alpha, steps = 4, 0.3, 11
    fast, reference = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    ranger = Ranger([fast], k=k, alpha=alpha, **RADAM_ARGS)
    radam = torch.optim.RAdam([reference], **RADAM_ARGS)
    slow = reference.detach().clone()
    for step in range(1, steps + 1):
        quadratic_step(fast, ranger)
        quadratic_step(reference, radam)
        if step % k == 0:
            with torch.no_grad():
                slow += alpha * (reference - slow)
                reference.copy_(slow)
    torch.testing.assert_close(fast.detach(), reference.detach())
    assert ranger.state[fast]["lookahead_step"] == steps


def test_ranger_counts_only_steps_a_parameter_takes():
    moving, late = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4), requires_grad=False)
    ranger = Ranger([moving, late], k=2, **RADAM_ARGS)
    for _ in range(3):
        quadratic_step(moving, ranger)
    assert len(ranger.state[late]) == 0 and torch.equal(late, torch.zeros(4))
    late.requires_grad_(True)
    ranger.zero_grad()
    ((moving - TARGET) ** 2 + (late - TARGET) ** 2).sum().backward()
    ranger.step()
    assert ranger.state[moving]["lookahead_step"] == 4
    assert ranger.state[late]["lookahead_step"] == 1
    torch.testing.assert_close(ranger.state[late]["slow_weights"], torch.zeros(4))


def test_ranger_closure_returns_loss_and_steps():
    weights = nn.Parameter(torch.zeros(4))
    ranger = Ranger([weights], **RADAM_ARGS)

    def closure():
        ranger.zero_grad()
        loss = ((weights - TARGET) ** 2).sum()
        loss.backward()
        return loss

    assert ranger.step(closure).item() == pytest.approx(float((TARGET**2).sum()))
    assert ranger.state[weights]["lookahead_step"] == 1


def test_ranger_runs_step_hooks_once_even_after_a_radam_exists():
    torch.optim.RAdam([nn.Parameter(torch.zeros(1))])  # makes torch wrap RAdam.step with its hook runner
    weights = nn.Parameter(torch.zeros(4))
    ranger = Ranger([weights], **RADAM_ARGS)
    calls = []
    ranger.register_step_pre_hook(lambda *_: calls.append("pre"))
    ranger.register_step_post_hook(lambda *_: calls.append("post"))
    quadratic_step(weights, ranger)
    assert calls == ["pre", "post"]
    assert ranger.state[weights]["lookahead_step"] == 1


def test_ranger_state_dict_loads_weights_only_and_resumes_identically():
    block = {"type": "Ranger", "args": {"k": 5, "alpha": 0.5}, "encoder": {"lr": 1e-3}, "decoder": {"lr": 1e-2}}
    model = TinyNet()
    optimizer = build_optimizer(model, block)
    train(model, optimizer, range(7))
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    train(model, optimizer, range(7, 15))

    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    resumed = TinyNet()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = build_optimizer(resumed, block)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert [g["name"] for g in resumed_optimizer.param_groups] == ["encoder", "decoder"]
    train(resumed, resumed_optimizer, range(7, 15))
    for expected, actual in zip(model.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---------------------------------------------------------------- fused steps (a GPU option)


def test_fused_is_an_optimizer_argument_that_steps_as_the_plain_optimizer_does():
    # SGD: torch's fused and plain kernels agree to rounding (its fused Adam takes another path near eps)
    block = {"type": "SGD", "encoder": {"lr": 1e-2}, "decoder": {"lr": 3e-2}, "args": {"momentum": 0.9}}
    plain_model, fused_model = TinyNet(), TinyNet()
    plain = build_optimizer(plain_model, block)
    fused = build_optimizer(fused_model, {**block, "args": {**block["args"], "fused": True}})
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    train(plain_model, plain, range(3))
    train(fused_model, fused, range(3))
    for mine, theirs in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert not torch.equal(fused_model.scale, torch.ones(1)), "it trained"
    adamw = build_optimizer(TinyNet(), {"type": "AdamW", "args": {"lr": 1e-3, "fused": True}})
    assert adamw.defaults["fused"] is True


def test_fused_on_an_optimizer_without_fused_kernels_names_the_key():
    with pytest.raises(ConfigError, match=r"optimizer\.args.*fused"):
        build_optimizer(TinyNet(), {"type": "RAdam", "args": {"lr": 1e-3, "fused": True}})
