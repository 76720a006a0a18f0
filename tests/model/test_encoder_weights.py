"""sever.model.encoder_weights on bare smp encoders: key stripping, first-conv recycling, one-line errors."""

import pytest
import segmentation_models_pytorch as smp
import torch

from sever.exceptions import ConfigError, first_line
from sever.model.encoder_weights import load_encoder_state, parse_in_channels, prepare_encoder


def encoder(seed):
    torch.manual_seed(seed)
    return smp.encoders.get_encoder("resnet18", in_channels=3, weights=None).eval()


def assert_same_state(module, state):
    own = module.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[key], value) for key, value in state.items())


def test_the_encoder_part_of_a_whole_checkpoint_is_found_under_its_prefix():
    donor = encoder(1).state_dict()
    # A model whose state dict holds another, smaller "encoder." (an auxiliary head) beside the real one:
    # the prefix matching most of the encoder's keys wins.
    state = {f"net.encoder.{name}": value for name, value in donor.items()}
    state["net.aux.encoder.conv1.weight"] = torch.zeros_like(donor["conv1.weight"])
    state["net.decoder.head.weight"] = torch.zeros(4, 16, 3, 3)
    target = encoder(2)
    load_encoder_state(target, state, "resnet18", "whole.pth", "arch.args.encoder_weights")
    assert_same_state(target, donor)


def test_weights_of_another_encoder_name_the_key_and_the_missing_keys():
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7)}
    with pytest.raises(ConfigError, match=r"^arch\.args\.encoder_weights: w\.pth does not match encoder resnet18: "
                                          r"\d+ missing key\(s\), e\.g\. bn1\.weight"):
        load_encoder_state(encoder(0), state, "resnet18", "w.pth", "arch.args.encoder_weights")


def test_prepare_encoder_loads_the_file_then_recycles_the_colours_asked_for(tmp_path):
    donor = encoder(3).state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1, "state_dict": {f"encoder.{name}": value for name, value in donor.items()}}, path)
    target = encoder(4)
    prepare_encoder(target, "resnet18", str(path), "bgg", "arch.args")
    rgb = donor["conv1.weight"]
    assert target.conv1.weight.shape == (64, 3, 7, 7)
    assert torch.equal(target.conv1.weight[:, 0], rgb[:, 2])
    assert torch.allclose(target.conv1.weight[:, 1:], rgb[:, 1:2].expand(-1, 2, -1, -1) / 2)
    assert torch.equal(target.layer1[0].conv1.weight, donor["layer1.0.conv1.weight"])
    # Fed one grey image in every channel, "bgg" answers as the green and blue filters summed.
    grey = torch.randn(1, 1, 64, 64)
    reference = encoder(5)
    reference.load_state_dict(donor)
    with torch.no_grad():
        reference.conv1.weight[:, 0] = 0
        expected = reference.conv1(grey.expand(-1, 3, -1, -1))
        assert torch.allclose(target.conv1(grey.expand(-1, 3, -1, -1)), expected, atol=1e-5)


def test_without_weights_only_the_channel_count_changes():
    target = encoder(6)
    before = {key: value.clone() for key, value in target.state_dict().items() if key != "conv1.weight"}
    prepare_encoder(target, "resnet18", None, "g", "arch.args")
    assert target.conv1.in_channels == 1
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


@pytest.mark.parametrize("value", [0, True, "", "rgbx", 1.5])
def test_in_channels_must_be_a_count_or_colour_letters(value):
    with pytest.raises(ConfigError, match=r"^arch\.args\.in_channels: expected a positive integer"):
        parse_in_channels(value, "arch.args.in_channels")


def test_first_line_skips_blank_lines_and_cuts_long_ones():
    assert first_line(ValueError("\n  first  \nsecond")) == "first"
    assert first_line(ValueError("")) == "no details"
    long = first_line(ValueError("x" * 400), limit=20)
    assert long == "x" * 17 + "..."
