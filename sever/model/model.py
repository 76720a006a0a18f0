"""Segmentation and classification networks over segmentation_models_pytorch.

Every network comes from an ``arch`` block and the config's top-level ``classes``::

    classes: 4
    arch:
      type: FPN                      # a name in ARCHITECTURES
      args:
        encoder_name: efficientnet-b5
        encoder_weights: imagenet    # null | a weights name smp knows | /path/to/weights.pth
        in_channels: g               # r | g | b | rgb | rrggbb | an int
        dropout: 0.2                 # Dropout2d before the segmentation head
        decoder_args: {}             # passed to the smp decoder, e.g. decoder_channels

built by ``build_model(config["arch"], config["classes"])``.

Architectures: the smp decoders ``Unet``, ``UnetPlusPlus``, ``FPN``, ``Linknet``,
``MAnet``, ``PSPNet``, ``PAN``, ``DeepLabV3``, ``DeepLabV3Plus``, ``UPerNet`` and
``Segformer`` (all take any encoder of smp's list), plus ``Classifier`` (an encoder
with a pooling + linear head, logits ``(B, classes)``). smp's ``DPT`` is not
offered: it only accepts timm ViT (``tu-``) encoders, and sever's encoders are
smp's own list (``smp.encoders.get_encoder_names()``).

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

import inspect
import logging
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Union

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn

from sever.model.base import BaseModel
from sever.exceptions import ConfigError
from sever.registries import ARCHITECTURES
from sever.utils.registry import did_you_mean

logger = logging.getLogger(__name__)


InChannels = Union[int, str]

COLOURS = "rgb"

POOLINGS = ("avg", "avgmax")

# smp model arguments that sever sets itself: the first four are ``arch.args``,
# ``activation`` and ``aux_params`` would change the logits sever's losses expect.
_NOT_DECODER_ARGS = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params")


def build_model(arch: Any, classes: int, key: str = "arch") -> BaseModel:
    """The model an ``arch`` block describes, with ``classes`` output channels.

    Args:
        arch: ``{"type": NAME, "args": {...}}`` (see the module docstring).
        classes: number of output channels (defect classes), from the config's ``classes``.
        key: the block's dotted path in the config, for error messages.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ConfigError(f"classes: expected a positive integer, got {classes!r}")
    return ARCHITECTURES.build(arch, key, classes=classes, config_key=key)


# ---------------------------------------------------------------- encoders


def _check_encoder_name(encoder_name: Any, key: str) -> None:
    """Raise :class:`ConfigError` unless ``encoder_name`` is in smp's encoder list."""
    names = smp.encoders.get_encoder_names()
    if encoder_name not in names:
        raise ConfigError(
            f"{key}: unknown encoder {encoder_name!r}.{did_you_mean(encoder_name, names)} Valid: {', '.join(names)}"
        )


def _parse_in_channels(in_channels: Any, key: str) -> InChannels:
    """Check ``in_channels``: a positive int, or a non-empty string of the letters r, g, b."""
    if isinstance(in_channels, int) and not isinstance(in_channels, bool) and in_channels >= 1:
        return in_channels
    if isinstance(in_channels, str) and in_channels and not set(in_channels) - set(COLOURS):
        return in_channels
    raise ConfigError(
        f"{key}: expected a positive integer or a string of the letters r, g, b "
        f"(e.g. g, rgb, rrggbb), got {in_channels!r}"
    )


def _check_dropout(dropout: Any, key: str) -> float:
    """Check a dropout probability is a number in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{key}: expected a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def build_encoder(encoder_name: str, encoder_weights: str | None, in_channels: InChannels, key: str) -> nn.Module:
    """An smp encoder (depth 5) with pretrained weights and ``in_channels`` input channels.

    The encoder maps ``(B, C_in, H, W)`` to a list of feature maps, the last
    ``(B, encoder.out_channels[-1], H / 32, W / 32)``. ``key`` is the ``args``
    block's dotted path, for error messages.
    """
    _check_encoder_name(encoder_name, f"{key}.encoder_name")
    in_channels = _parse_in_channels(in_channels, f"{key}.in_channels")
    encoder = smp.encoders.get_encoder(encoder_name, in_channels=3, weights=None)
    _prepare_encoder(encoder, encoder_name, encoder_weights, in_channels, key)
    return encoder


def _prepare_encoder(
    encoder: nn.Module, encoder_name: str, encoder_weights: str | None, in_channels: InChannels, key: str
) -> None:
    """Load ``encoder_weights`` into a freshly built RGB ``encoder``, then give it ``in_channels`` inputs.

    Both models share this: the segmentation model gets its encoder from the smp
    architecture, the classifier from :func:`build_encoder`.
    """
    weights_key = f"{key}.encoder_weights"
    state = _pretrained_state(encoder_name, encoder_weights, weights_key)
    if state is not None:
        _load_encoder_state(encoder, state, encoder_name, encoder_weights, weights_key)
        logger.info("encoder %s: loaded weights %s", encoder_name, encoder_weights)
    set_input_channels(encoder, in_channels, pretrained=state is not None)


def _pretrained_state(encoder_name: str, encoder_weights: Any, key: str) -> Mapping[str, torch.Tensor] | None:
    """The RGB weights ``encoder_weights`` names (None: random init), downloaded or read from a file.

    A whole model's state dict or a sever checkpoint is returned whole;
    :func:`_load_encoder_state` picks the encoder's part.
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
            f"({type(exc).__name__}: {_first_line(exc)}). Either run once with internet access so "
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
    return f"it is not a PyTorch or safetensors weights file ({type(exc).__name__}: {_first_line(exc)})"


def _first_line(exc: Exception, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _load_encoder_state(
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
            f"{key}: {encoder_weights} does not match encoder {encoder_name}: {details or _first_line(exc)}"
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


# ---------------------------------------------------------------- segmentation


class SegmentationModel(BaseModel):
    """An smp segmentation network: images ``(B, C_in, H, W)`` -> logits ``(B, classes, H, W)``.

    Registered once per smp decoder (``Unet``, ``FPN``, ...) as a subclass whose
    ``smp_architecture`` is that smp class. ``encoder`` is the smp encoder;
    ``decoder`` is ``Sequential(decoder, dropout, head)``: the smp decoder, a
    ``Dropout2d(dropout)`` and the segmentation head.

    Any ``H`` and ``W`` work: the input is padded at the bottom and right with
    zeros (the normalised mean) to a multiple of the encoder's output stride
    (32; 16 or 8 for dilated encoders, e.g. DeepLabV3) and the logits are cropped
    back. PAN needs ``H, W >= 128`` (its pyramid halves the stride-16 map three times).

    Args:
        classes: output channels, supplied by sever from the config's ``classes``.
        encoder_name: one of ``smp.encoders.get_encoder_names()``.
        encoder_weights: ``None``, a weights name smp knows for the encoder, or a file path.
        in_channels: a string of r, g, b (recycled pretrained filters) or an int.
        dropout: ``Dropout2d`` probability before the segmentation head, in [0, 1).
        decoder_args: extra keyword arguments of the smp architecture (``decoder_channels``, ...).
        config_key: the block's dotted path in the config, for error messages.
    """

    smp_architecture: type[nn.Module]

    def __init__(
        self,
        classes: int,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        in_channels: InChannels = "g",
        dropout: float = 0.0,
        decoder_args: Mapping[str, Any] | None = None,
        *,
        config_key: str = "arch",
    ):
        key = f"{config_key}.args"
        _check_encoder_name(encoder_name, f"{key}.encoder_name")
        in_channels = _parse_in_channels(in_channels, f"{key}.in_channels")
        dropout = _check_dropout(dropout, f"{key}.dropout")
        decoder_args = self._check_decoder_args(decoder_args, f"{key}.decoder_args")
        net = self.smp_architecture(
            encoder_name=encoder_name, encoder_weights=None, in_channels=3, classes=classes, **decoder_args
        )
        _prepare_encoder(net.encoder, encoder_name, encoder_weights, in_channels, key)
        decoder = nn.Sequential(
            OrderedDict(decoder=net.decoder, dropout=nn.Dropout2d(dropout), head=net.segmentation_head)
        )
        super().__init__(encoder=net.encoder, decoder=decoder)

    @classmethod
    def _check_decoder_args(cls, decoder_args: Any, key: str) -> dict[str, Any]:
        """``decoder_args`` as a dict, checked against the smp architecture's named arguments."""
        if decoder_args is None:
            return {}
        if not isinstance(decoder_args, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(decoder_args).__name__}")
        parameters = inspect.signature(cls.smp_architecture).parameters.values()
        valid = sorted(
            p.name
            for p in parameters
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in _NOT_DECODER_ARGS
        )
        for name in decoder_args:
            if name in _NOT_DECODER_ARGS:
                raise ConfigError(f"{key}.{name}: set by sever, not a decoder argument")
            if name not in valid:
                raise ConfigError(
                    f"{key}.{name}: unknown argument of smp {cls.smp_architecture.__name__}."
                    f"{did_you_mean(name, valid)} Valid: {', '.join(valid)}"
                )
        return dict(decoder_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes, H, W)`` for images ``x`` of shape ``(B, C_in or 1, H, W)``."""
        x = self.as_input(x)
        height, width = x.shape[-2:]
        stride = self.encoder.output_stride
        pad_bottom, pad_right = -height % stride, -width % stride
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom))
        logits = self.decoder(self.encoder(x))
        return logits[..., :height, :width]


SMP_ARCHITECTURES = (
    smp.Unet,
    smp.UnetPlusPlus,
    smp.FPN,
    smp.Linknet,
    smp.MAnet,
    smp.PSPNet,
    smp.PAN,
    smp.DeepLabV3,
    smp.DeepLabV3Plus,
    smp.UPerNet,
    smp.Segformer,
)


def _register_segmentation_model(smp_architecture: type[nn.Module]) -> type[SegmentationModel]:
    """Register a :class:`SegmentationModel` subclass named like ``smp_architecture``."""
    name = smp_architecture.__name__
    subclass = type(
        name,
        (SegmentationModel,),
        {
            "smp_architecture": smp_architecture,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"smp's {name} as a sever :class:`SegmentationModel`.",
        },
    )
    return ARCHITECTURES.register(subclass)


for _architecture in SMP_ARCHITECTURES:
    _register_segmentation_model(_architecture)


# ---------------------------------------------------------------- classification


class ClassificationHead(nn.Module):
    """Global pooling, dropout and a linear layer: features ``(B, C, h, w)`` -> logits ``(B, classes)``.

    ``pooling`` is ``"avg"`` (average pooling, ``C`` features) or ``"avgmax"``
    (average and max pooling concatenated, ``2 C`` features).
    """

    def __init__(self, in_channels: int, classes: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels * (2 if pooling == "avgmax" else 1), classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        if self.pooling == "avgmax":
            pooled = torch.cat([pooled, F.adaptive_max_pool2d(features, 1).flatten(1)], dim=1)
        return self.linear(self.dropout(pooled))


@ARCHITECTURES.register(name="Classifier")
class ClassificationModel(BaseModel):
    """An smp encoder with a :class:`ClassificationHead`: images ``(B, C_in, H, W)`` -> logits ``(B, classes)``.

    For image-level labels, e.g. defect / no defect per class. ``decoder`` is the
    head. ``encoder_name``, ``encoder_weights`` and ``in_channels`` work as in
    :class:`SegmentationModel`; ``dropout`` is applied to the pooled features;
    ``pooling`` is ``"avg"`` or ``"avgmax"``.
    """

    def __init__(
        self,
        classes: int,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        in_channels: InChannels = "g",
        dropout: float = 0.0,
        pooling: str = "avg",
        *,
        config_key: str = "arch",
    ):
        key = f"{config_key}.args"
        dropout = _check_dropout(dropout, f"{key}.dropout")
        if pooling not in POOLINGS:
            raise ConfigError(
                f"{key}.pooling: unknown pooling {pooling!r}.{did_you_mean(pooling, POOLINGS)} "
                f"Valid: {', '.join(POOLINGS)}"
            )
        encoder = build_encoder(encoder_name, encoder_weights, in_channels, key)
        head = ClassificationHead(encoder.out_channels[-1], classes, dropout, pooling)
        super().__init__(encoder=encoder, decoder=head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` for images ``x`` of shape ``(B, C_in or 1, H, W)``."""
        return self.decoder(self.encoder(self.as_input(x))[-1])
