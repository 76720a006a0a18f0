"""Pretrained encoder weights and the encoder's input channels, for every architecture.

An architecture (:mod:`sever.model.model`) builds its smp encoder for RGB input
with random weights and hands it to :func:`prepare_encoder`, which loads
``encoder_weights`` and then gives the encoder ``in_channels`` input channels.

``in_channels`` (the write-up's grayscale input): a string of the letters ``r``,
``g``, ``b`` builds one input channel per letter whose first-conv filters are that
colour's pretrained filters. ``"g"`` is a one-channel model whose first conv is
exactly the pretrained green filters; ``"rgb"`` keeps the pretrained conv;
``"rrggbb"`` has six channels and each copy of a colour is divided by the number of
times the colour appears, so a grey image fed to all six channels gives the same
response as the same image fed to all three channels of ``"rgb"``. An int sets the
channel count and, with pretrained weights, follows smp (1: sum of the RGB filters;
otherwise the RGB filters cycled and scaled by 3 / count). Without pretrained
weights only the channel count matters: a changed first conv is freshly initialised.

``encoder_weights``: ``null`` (random), a name smp knows for the encoder
(``imagenet``, ``advprop``, ``ssl``, ...; downloaded from the Hugging Face hub
into its cache), or a local file: ``.safetensors``, or anything
``torch.load(weights_only=True)`` reads holding an encoder state dict, a whole
model's state dict or a sever checkpoint (``{"state_dict": ...}``). The weights
are RGB weights; ``in_channels`` is applied after they are loaded.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Union

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import constants as hf_constants
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn

from sever.exceptions import ConfigError, first_line
from sever.utils.registry import did_you_mean

logger = logging.getLogger(__name__)

InChannels = Union[int, str]

COLOURS = "rgb"


def parse_in_channels(in_channels: Any, key: str) -> InChannels:
    """Check ``in_channels``: a positive int, or a non-empty string of the letters r, g, b."""
    if isinstance(in_channels, int) and not isinstance(in_channels, bool) and in_channels >= 1:
        return in_channels
    if isinstance(in_channels, str) and in_channels and not set(in_channels) - set(COLOURS):
        return in_channels
    raise ConfigError(
        f"{key}: expected a positive integer or a string of the letters r, g, b "
        f"(e.g. g, rgb, rrggbb), got {in_channels!r}"
    )


def prepare_encoder(
    encoder: nn.Module, encoder_name: str, encoder_weights: str | None, in_channels: InChannels, key: str
) -> None:
    """Load ``encoder_weights`` into a freshly built RGB ``encoder``, then give it ``in_channels`` inputs.

    Every architecture of :mod:`sever.model.model` calls this on its encoder
    (depth 5, as smp builds it with ``in_channels=3, weights=None``); ``key`` is
    the ``arch.args`` block's dotted path, for error messages.
    """
    weights_key = f"{key}.encoder_weights"
    state = _pretrained_state(encoder_name, encoder_weights, weights_key)
    if state is not None:
        load_encoder_state(encoder, state, encoder_name, encoder_weights, weights_key)
        logger.info("encoder %s: loaded weights %s", encoder_name, encoder_weights)
    set_input_channels(encoder, in_channels, pretrained=state is not None)


def _pretrained_state(encoder_name: str, encoder_weights: Any, key: str) -> Mapping[str, torch.Tensor] | None:
    """The RGB weights ``encoder_weights`` names (None: random init), downloaded or read from a file.

    A whole model's state dict or a sever checkpoint is returned whole;
    :func:`load_encoder_state` picks the encoder's part.
    """
    if encoder_weights is None:
        return None
    known = smp.encoders.encoders[encoder_name]["pretrained_settings"]
    if not isinstance(encoder_weights, str):
        raise ConfigError(f"{key}: expected null, a weights name or a file path, got {encoder_weights!r}")
    if encoder_weights in known:
        return _download_weights(encoder_name, encoder_weights, key)
    path = Path(encoder_weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}: {encoder_weights!r} is neither a weights name of encoder {encoder_name} "
            f"({', '.join(known)}) nor an existing file.{did_you_mean(encoder_weights, known)}"
        )
    return _read_weights_file(path, key)


def _download_weights(encoder_name: str, weights: str, key: str) -> Mapping[str, torch.Tensor]:
    """smp's pretrained weights ``weights`` of ``encoder_name``, from the Hugging Face hub or its cache.

    smp downloads (``hf_hub_download``) while building an encoder; a failure
    (offline, hub unreachable, corrupt cache) becomes a one-paragraph
    :class:`ConfigError` saying how to get the file another way.
    """
    try:
        donor = smp.encoders.get_encoder(encoder_name, weights=weights)
    except (OSError, SafetensorError) as exc:  # huggingface_hub's errors are OSErrors
        settings = smp.encoders.encoders[encoder_name]["pretrained_settings"][weights]
        url = f"https://huggingface.co/{settings['repo_id']}/resolve/{settings['revision']}/model.safetensors"
        raise ConfigError(
            f"{key}: the {weights!r} weights of encoder {encoder_name} could not be downloaded "
            f"({type(exc).__name__}: {first_line(exc)}). Either run once with internet access so "
            f"they are cached (in {hf_constants.HF_HUB_CACHE}), or download {url} and set "
            f"encoder_weights: /path/to/model.safetensors"
        ) from None
    return donor.state_dict()


def _read_weights_file(path: Path, key: str) -> Mapping[str, torch.Tensor]:
    """The state dict in ``path``: a ``.safetensors`` file or a weights-only ``torch.save`` file."""
    try:
        if path.suffix == ".safetensors":
            loaded = load_safetensors(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises many kinds (UnpicklingError, EOFError, KeyError, RuntimeError, ...)
    # on bytes that are not a weights-only checkpoint; all mean the same to the user.
    except Exception as exc:
        raise ConfigError(f"{key}: cannot read {path}: {_unreadable_reason(exc)}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, Mapping) and all(isinstance(v, torch.Tensor) for v in loaded.values())):
        raise ConfigError(
            f"{key}: {path} holds no state dict (a mapping of names to tensors) "
            "nor a checkpoint with a 'state_dict' entry"
        )
    return loaded


def _unreadable_reason(exc: Exception) -> str:
    """One line on why a weights file could not be loaded, without torch's advice to load unsafely."""
    if isinstance(exc, pickle.UnpicklingError):
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        return (
            "it is not a weights file, or it holds Python objects that safe loading "
            "(torch.load with weights_only=True) refuses"
            + (f" (here {refused.group(1)})" if refused else "")
            + "; save plain tensors, e.g. torch.save(model.state_dict(), path)"
        )
    return f"it is not a PyTorch or safetensors weights file ({type(exc).__name__}: {first_line(exc)})"


def load_encoder_state(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], encoder_name: str, encoder_weights: str, key: str
) -> None:
    """Load RGB weights into ``encoder``; ``state`` may be a whole model's or checkpoint's state dict.

    The encoder's entries are those under the prefix (``""``, ``"encoder."``,
    ``"net.encoder."``, ...) that matches most of the encoder's keys. Shape or
    key mismatches raise :class:`ConfigError` with counts and examples.
    """
    own = encoder.state_dict()
    state = _strip_encoder_prefix(state, own.keys())
    mismatched = [name for name, value in state.items() if name in own and value.shape != own[name].shape]
    if mismatched:
        name = mismatched[0]
        raise ConfigError(
            f"{key}: {encoder_weights} does not fit encoder {encoder_name}: {len(mismatched)} tensor(s) "
            f"have another shape, e.g. {name}: {tuple(state[name].shape)} in the weights, "
            f"{tuple(own[name].shape)} in the encoder. Give RGB (3-channel) weights of this encoder; "
            "in_channels adapts them"
        )
    incompatible: dict[str, list[str]] = {}

    def record(module: nn.Module, keys: Any) -> None:
        incompatible.update(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys))

    handle = encoder.register_load_state_dict_post_hook(record)
    try:
        encoder.load_state_dict(dict(state))  # smp's encoders drop their classifier keys first
    except RuntimeError as exc:
        details = "; ".join(
            f"{len(names)} {kind} key(s), e.g. {', '.join(names[:3])}"
            for kind, names in incompatible.items()
            if names
        )
        raise ConfigError(
            f"{key}: {encoder_weights} does not match encoder {encoder_name}: {details or first_line(exc)}"
        ) from None
    finally:
        handle.remove()


def _strip_encoder_prefix(state: Mapping[str, torch.Tensor], own_keys: Any) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under its best encoder prefix, with the prefix removed."""
    own_keys = set(own_keys)
    prefixes = {""} | {name[: name.index("encoder.") + len("encoder.")] for name in state if "encoder." in name}

    def matches(prefix: str) -> int:
        return sum(name.startswith(prefix) and name[len(prefix):] in own_keys for name in state)

    best = max(sorted(prefixes, key=len), key=matches)  # max keeps the first: shortest on ties
    return {name[len(best):]: value for name, value in state.items() if name.startswith(best)}


def recycle_rgb_filters(weight: torch.Tensor, colours: str) -> torch.Tensor:
    """First-conv filters for the input channels ``colours``, taken from RGB filters.

    Args:
        weight: ``(C_out, 3, kH, kW)`` filters of a conv reading R, G, B.
        colours: one letter of ``r``, ``g``, ``b`` per new input channel.

    Returns:
        ``(C_out, len(colours), kH, kW)``: channel ``i`` holds the filters of colour
        ``colours[i]`` divided by the number of times that colour appears in
        ``colours``, so feeding the same image to every copy of a colour gives the
        response of the RGB conv.
    """
    index = [COLOURS.index(colour) for colour in colours]
    scale = torch.tensor([1.0 / colours.count(colour) for colour in colours], dtype=weight.dtype)
    return weight[:, index] * scale.view(1, -1, 1, 1)


def set_input_channels(encoder: nn.Module, in_channels: InChannels, pretrained: bool) -> None:
    """Make an RGB ``encoder`` read ``in_channels`` channels, recycling its loaded RGB stem filters.

    smp's ``set_in_channels`` reshapes the stem (the convs reading the 3 image
    channels: one in most encoders, two parallel branches in MobileOne); for a
    colour string with ``pretrained`` weights, each stem's filters are then
    replaced by :func:`recycle_rgb_filters` of its RGB filters.
    """
    if isinstance(in_channels, int):
        encoder.set_in_channels(in_channels, pretrained=pretrained)
        return
    stems = [(conv, conv.weight.detach().clone()) for conv in encoder.modules() if _reads_rgb(conv)]
    encoder.set_in_channels(len(in_channels), pretrained=pretrained)
    if pretrained:
        with torch.no_grad():
            for conv, rgb_weight in stems:
                conv.weight.copy_(recycle_rgb_filters(rgb_weight, in_channels))


def _reads_rgb(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.in_channels == 3
