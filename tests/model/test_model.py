"""BaseModel and the model factory: building, channel recycling, weights, padding, freezing."""

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from torch import nn

from sever.model.base import BaseModel
from sever.exceptions import ConfigError
from sever.model.encoder_weights import recycle_rgb_filters, set_input_channels
from sever.model.model import (
    ARCHITECTURES,
    ClassificationModel,
    SegmentationModel,
    build_encoder,
    build_model,
)

SEGMENTATION_NAMES = [name for name in ARCHITECTURES.names() if name not in ("Classifier", "FasterRCNN")]

# Where each encoder keeps the conv that reads the image.
STEMS = {
    "resnet18": "conv1",
    "efficientnet-b0": "_conv_stem",
    "se_resnext50_32x4d": "layer0.conv1",
    "inceptionv4": "features.0.conv",
}


def arch(type_, **args):
    return {"type": type_, "args": {"encoder_name": "resnet18", **args}}


def rgb_encoder(name="resnet18"):
    """A 3-channel encoder with random weights: the stand-in for pretrained weights."""
    torch.manual_seed(0)
    return smp.encoders.get_encoder(name, in_channels=3, weights=None).eval()


@pytest.fixture(scope="module")
def resnet18_file(module_tmp):
    """(path, state dict) of a random resnet18 encoder saved with torch.save."""
    state = rgb_encoder().state_dict()
    path = module_tmp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


class Refused:
    """A custom class: torch.load(weights_only=True) refuses to unpickle it."""


# ---------------------------------------------------------------- registry and validation


def test_every_smp_decoder_is_registered_except_dpt():
    assert set(SEGMENTATION_NAMES) == {
        "Unet", "UnetPlusPlus", "FPN", "Linknet", "MAnet", "PSPNet", "PAN",
        "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer",
    }
    assert "DPT" not in ARCHITECTURES


@pytest.mark.parametrize("name", SEGMENTATION_NAMES)
def test_every_decoder_builds_and_runs_on_one_channel_input(name):
    model = ARCHITECTURES.build(arch(name), "arch", classes=4).eval()
    assert isinstance(model, SegmentationModel) and type(model).__name__ == name
    size = 128 if name == "PAN" else 64  # PAN's pyramid needs at least 128 pixels
    with torch.no_grad():
        logits = model(torch.randn(1, 1, size, size))
    assert logits.shape == (1, 4, size, size)
    assert torch.isfinite(logits).all()


def test_unknown_architecture_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"arch\.type: unknown architecture 'FNP'\. Did you mean 'FPN'\?"):
        build_model(arch("FNP"), classes=4)


def test_unknown_encoder_suggests_and_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_model(arch("Unet", encoder_name="efficientnet_b5"), classes=4)
    message = str(info.value)
    assert message.startswith("arch.args.encoder_name: unknown encoder 'efficientnet_b5'")
    assert "Did you mean 'efficientnet-b5'?" in message
    assert "resnet18" in message and "se_resnext50_32x4d" in message


def test_errors_name_the_key_given_to_build_model():
    with pytest.raises(ConfigError, match=r"^gate\.arch\.args\.encoder_name: "):
        build_model({"type": "Classifier", "args": {"encoder_name": "resnet81"}}, classes=4, key="gate.arch")


@pytest.mark.parametrize(
    "args, match",
    [
        ({"in_channels": "rgx"}, r"arch\.args\.in_channels: expected .* got 'rgx'"),
        ({"in_channels": 0}, r"arch\.args\.in_channels"),
        ({"in_channels": True}, r"arch\.args\.in_channels"),
        ({"dropout": 1.0}, r"arch\.args\.dropout: expected a probability in \[0, 1\), got 1\.0"),
        ({"dropout": -0.1}, r"arch\.args\.dropout"),
        ({"decoder_args": {"decoder_chanels": [8, 8, 8, 8, 8]}}, r"decoder_chanels: .*Did you mean 'decoder_channels'"),
        ({"decoder_args": {"classes": 2}}, r"arch\.args\.decoder_args\.classes: set by sever"),
        ({"decoder_args": {"activation": "sigmoid"}}, r"decoder_args\.activation: set by sever"),
        ({"classes": 2}, r"arch\.args\.classes: set by sever itself"),
    ],
)
def test_invalid_arguments_raise_config_error(args, match):
    with pytest.raises(ConfigError, match=match):
        build_model(arch("Unet", **args), classes=4)


@pytest.mark.parametrize("classes", [0, 2.5, True])
def test_build_model_rejects_a_bad_class_count(classes):
    with pytest.raises(ConfigError, match="^classes: expected a positive integer"):
        build_model(arch("Unet"), classes=classes)


def test_decoder_args_reach_the_smp_decoder():
    model = build_model(arch("FPN", decoder_args={"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}), 2)
    assert model.decoder.head[0].in_channels == 32
    assert model.decoder.decoder.p5.out_channels == 64


def test_dropout_sits_before_the_segmentation_head():
    model = build_model(arch("Unet", dropout=0.2), classes=4)
    assert list(model.decoder.named_children())[1] == ("dropout", model.decoder.dropout)
    assert isinstance(model.decoder.dropout, nn.Dropout2d) and model.decoder.dropout.p == 0.2


# ---------------------------------------------------------------- input channels


@pytest.mark.parametrize("name", list(STEMS))
def test_g_recycles_the_green_filters_exactly(name):
    encoder = rgb_encoder(name)
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    stem = STEMS[name] + ".weight"
    set_input_channels(encoder, "g", pretrained=True)
    after = encoder.state_dict()
    assert after[stem].shape[1] == 1
    assert torch.equal(after[stem], before[stem][:, 1:2])
    assert all(torch.equal(after[key], before[key]) for key in before if key != stem)
    with torch.no_grad():
        features = encoder(torch.randn(1, 1, 64, 64))
    assert features[-1].shape[-2:] == (2, 2)


def test_colour_strings_pick_and_reorder_filters():
    rgb = torch.randn(8, 3, 3, 3)
    assert torch.equal(recycle_rgb_filters(rgb, "rgb"), rgb)
    assert torch.equal(recycle_rgb_filters(rgb, "b"), rgb[:, 2:3])
    assert torch.equal(recycle_rgb_filters(rgb, "bgr"), rgb.flip(1))


def test_rrggbb_scaling_gives_duplicated_grey_the_rgb_response(resnet18_file):
    path, _ = resnet18_file
    rgb = build_encoder("resnet18", str(path), "rgb", "arch.args").eval()
    doubled = build_encoder("resnet18", str(path), "rrggbb", "arch.args").eval()
    assert torch.allclose(doubled.conv1.weight[:, 2], rgb.conv1.weight[:, 1] / 2)
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = rgb(grey.expand(-1, 3, -1, -1))[-1]
        actual = doubled(grey.expand(-1, 6, -1, -1))[-1]
    assert torch.allclose(actual, expected, atol=1e-5)
    colour = torch.randn(2, 3, 64, 64)  # each colour fed to both of its copies
    with torch.no_grad():
        assert torch.allclose(doubled(colour.repeat_interleave(2, dim=1))[-1], rgb(colour)[-1], atol=1e-5)


def test_int_channels_follow_smp_with_pretrained_weights(resnet18_file):
    path, state = resnet18_file
    rgb_weight = state["conv1.weight"]
    one = build_encoder("resnet18", str(path), 1, "arch.args")
    assert torch.allclose(one.conv1.weight, rgb_weight.sum(1, keepdim=True))
    five = build_encoder("resnet18", str(path), 5, "arch.args")
    assert torch.allclose(five.conv1.weight[:, 4], rgb_weight[:, 1] * 3 / 5)


def test_channel_count_without_weights():
    model = build_model(arch("Unet", in_channels=5), classes=2).eval()
    assert model.encoder.conv1.in_channels == 5
    letters = build_model(arch("Unet", in_channels="rrggbb"), classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 5, 64, 64)).shape == (1, 2, 64, 64)
        assert letters(torch.randn(1, 6, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("type_", ["FPN", "Classifier"])
def test_grey_input_is_repeated_to_every_input_channel(type_):
    """Datasets yield one grey channel; an ``rgb`` model sees it in all three."""
    model = build_model(arch(type_, in_channels="rgb"), classes=2).eval()
    assert model.in_channels == 3
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(grey), model(grey.expand(-1, 3, -1, -1).contiguous()))


# ---------------------------------------------------------------- padding


def test_unaligned_input_is_padded_and_cropped_back():
    model = build_model(arch("Unet"), classes=4).eval()
    image = torch.randn(1, 1, 200, 200)
    with torch.no_grad():
        logits = model(image)
        padded = model(F.pad(image, (0, 24, 0, 24)))
    assert logits.shape == (1, 4, 200, 200)
    assert torch.equal(logits, padded[..., :200, :200])


def test_aligned_input_is_untouched():
    model = build_model(arch("FPN"), classes=4).eval()
    image = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(image), model.decoder(model.encoder(image)))


def test_padding_follows_a_dilated_encoders_stride():
    model = build_model(arch("DeepLabV3Plus"), classes=3).eval()
    assert model.encoder.output_stride == 16
    with torch.no_grad():
        assert model(torch.randn(1, 1, 72, 100)).shape == (1, 3, 72, 100)


# ---------------------------------------------------------------- encoder weights


def test_local_weights_round_trip(tmp_path):
    first = build_model(arch("Unet", in_channels="rgb"), classes=4)
    path = tmp_path / "encoder.pth"
    torch.save(first.encoder.state_dict(), path)
    second = build_model(arch("FPN", in_channels="rgb", encoder_weights=str(path)), classes=2)
    assert second.encoder.state_dict().keys() == first.encoder.state_dict().keys()
    for name, value in first.encoder.state_dict().items():
        assert torch.equal(second.encoder.state_dict()[name], value), name


@pytest.mark.parametrize("wrap", ["smp_model", "sever_checkpoint", "net_checkpoint", "safetensors"])
def test_weights_from_whole_models_and_checkpoints(tmp_path, resnet18_file, wrap):
    _, state = resnet18_file
    decoder = {"decoder.head.0.weight": torch.zeros(4, 16, 3, 3)}
    encoder_state = {f"encoder.{name}": value for name, value in state.items()}
    path = tmp_path / "weights.pth"
    if wrap == "smp_model":
        torch.save({**encoder_state, **decoder}, path)
    elif wrap == "sever_checkpoint":
        torch.save({"epoch": 3, "state_dict": {**encoder_state, **decoder}}, path)
    elif wrap == "net_checkpoint":
        torch.save({"state_dict": {f"net.{name}": value for name, value in {**encoder_state, **decoder}.items()}}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({name: value.contiguous() for name, value in state.items()}, str(path))
    model = build_model(arch("Unet", encoder_weights=str(path)), classes=4)
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"][:, 1:2])
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_missing_weights_file_or_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match=r"arch\.args\.encoder_weights: .*neither a weights name .*nor an existing file"):
        build_model(arch("Unet", encoder_weights=str(tmp_path / "nope.pth")), classes=4)
    with pytest.raises(ConfigError, match=r"imagenet, ssl, swsl\) nor an existing file\. Did you mean 'imagenet'\?"):
        build_model(arch("Unet", encoder_weights="imagenett"), classes=4)


@pytest.mark.parametrize("content", ["garbage", "empty", "custom_class"])
def test_unreadable_weights_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif content == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"conv1.weight": torch.zeros(1), "extra": Refused()}, path)
    with pytest.raises(ConfigError) as info:
        build_model(arch("Unet", encoder_weights=str(path)), classes=4)
    message = str(info.value)
    assert message.startswith(f"arch.args.encoder_weights: cannot read {path}: ")
    assert "\n" not in message
    if content == "custom_class":
        assert f"weights_only=True) refuses (here {Refused.__module__}.Refused)" in message


def test_weights_of_another_encoder_report_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(rgb_encoder("efficientnet-b0").state_dict(), path)
    with pytest.raises(ConfigError) as info:
        build_model(arch("Unet", encoder_weights=str(path)), classes=4)
    message = str(info.value)
    assert message.startswith(f"arch.args.encoder_weights: {path} does not match encoder resnet18: ")
    assert "missing key(s), e.g. conv1.weight" in message and "unexpected key(s), e.g. _conv_stem.weight" in message


def test_one_channel_weights_are_refused_with_shapes(tmp_path):
    path = tmp_path / "grey.pth"
    torch.save(build_model(arch("Unet", in_channels="g"), classes=4).state_dict(), path)
    with pytest.raises(ConfigError, match=r"does not fit encoder resnet18: 1 tensor\(s\) .* conv1\.weight: \(64, 1, 7, 7\) in the weights, \(64, 3, 7, 7\) in the encoder"):
        build_model(arch("Unet", encoder_weights=str(path)), classes=4)


def test_imagenet_download_offline_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        build_model(arch("FPN", encoder_weights="imagenet"), classes=4)
    message = str(info.value)
    assert message.startswith(
        "arch.args.encoder_weights: the 'imagenet' weights of encoder resnet18 could not be downloaded "
        "(LocalEntryNotFoundError: "
    )
    assert f"cached (in {tmp_path})" in message
    assert "https://huggingface.co/smp-hub/resnet18.imagenet/resolve/" in message
    assert message.endswith("set encoder_weights: /path/to/model.safetensors")
    assert "\n" not in message
    assert info.value.__suppress_context__  # no huggingface_hub traceback chained to it


# ---------------------------------------------------------------- BaseModel behaviour


def test_base_model_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        BaseModel(nn.Linear(1, 1), nn.Linear(1, 1))


@pytest.mark.parametrize("spec", [arch("Unet"), arch("DeepLabV3Plus", dropout=0.1), arch("Classifier", pooling="avgmax")])
def test_encoder_and_decoder_partition_the_parameters(spec):
    model = build_model(spec, classes=4)
    encoder = {id(p) for p in model.encoder.parameters()}
    decoder = {id(p) for p in model.decoder.parameters()}
    assert encoder and decoder and not encoder & decoder
    assert encoder | decoder == {id(p) for p in model.parameters()}
    assert all(name.startswith(("encoder.", "decoder.")) for name in model.state_dict())


def test_trainable_parameter_count_and_str():
    model = build_model(arch("Linknet"), classes=4)
    total = sum(p.numel() for p in model.parameters())
    assert model.trainable_parameters() == total
    assert str(model).endswith(f"\nTrainable parameters: {total}")
    model.freeze_encoder()
    assert model.trainable_parameters() == sum(p.numel() for p in model.decoder.parameters())
    assert str(model).endswith(f"Trainable parameters: {model.trainable_parameters()}")


def test_freeze_keeps_encoder_batchnorm_in_eval_through_train():
    model = build_model(arch("Unet"), classes=4)
    encoder_norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    decoder_norms = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    model.freeze_encoder()
    model.train()
    assert model.encoder_frozen
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not any(m.training for m in encoder_norms)
    assert all(m.training for m in decoder_norms)
    running_mean = model.encoder.bn1.running_mean.clone()
    model(torch.randn(2, 1, 64, 64)).mean().backward()
    assert torch.equal(model.encoder.bn1.running_mean, running_mean)
    assert model.encoder.conv1.weight.grad is None

    model.unfreeze_encoder()
    assert not model.encoder_frozen
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(m.training for m in encoder_norms)
    model.eval()
    assert not any(m.training for m in encoder_norms + decoder_norms)


def test_unfreeze_in_eval_mode_leaves_batchnorm_in_eval():
    model = build_model(arch("Classifier"), classes=2).eval()
    model.freeze_encoder()
    model.unfreeze_encoder()
    assert not any(m.training for m in model.encoder.modules())


# ---------------------------------------------------------------- classifier


@pytest.mark.parametrize("pooling, features", [("avg", 512), ("avgmax", 1024)])
def test_classifier_shapes(pooling, features):
    model = build_model(arch("Classifier", pooling=pooling, dropout=0.3), classes=3)
    assert isinstance(model, ClassificationModel)
    assert model.decoder.linear.in_features == features and model.decoder.dropout.p == 0.3
    assert model(torch.randn(2, 1, 64, 80)).shape == (2, 3)


def test_classifier_shares_the_weights_handling(resnet18_file):
    path, state = resnet18_file
    model = build_model(arch("Classifier", encoder_weights=str(path), in_channels="r"), classes=1)
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"][:, :1])
    with pytest.raises(ConfigError, match=r"arch\.args\.pooling: unknown pooling 'max'\. Did you mean 'avgmax'\?"):
        build_model(arch("Classifier", pooling="max"), classes=1)
