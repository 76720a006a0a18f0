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

``in_channels`` and ``encoder_weights`` (a pretrained name, a local file) are
read by :mod:`sever.model.encoder_weights`, which loads the weights into every
architecture's encoder and adapts its first conv.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Mapping

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from sever.model.base import BaseModel
from sever.exceptions import ConfigError
from sever.model.encoder_weights import InChannels, parse_in_channels, prepare_encoder
from sever.registries import ARCHITECTURES
from sever.utils.registry import did_you_mean

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
    in_channels = parse_in_channels(in_channels, f"{key}.in_channels")
    encoder = smp.encoders.get_encoder(encoder_name, in_channels=3, weights=None)
    prepare_encoder(encoder, encoder_name, encoder_weights, in_channels, key)
    return encoder


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
        in_channels = parse_in_channels(in_channels, f"{key}.in_channels")
        dropout = _check_dropout(dropout, f"{key}.dropout")
        decoder_args = self._check_decoder_args(decoder_args, f"{key}.decoder_args")
        net = self.smp_architecture(
            encoder_name=encoder_name, encoder_weights=None, in_channels=3, classes=classes, **decoder_args
        )
        prepare_encoder(net.encoder, encoder_name, encoder_weights, in_channels, key)
        decoder = nn.Sequential(
            OrderedDict(decoder=net.decoder, dropout=nn.Dropout2d(dropout), head=net.segmentation_head)
        )
        super().__init__(encoder=net.encoder, decoder=decoder)
        self._smp_args = dict(encoder_name=encoder_name, classes=classes, **decoder_args)

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

    def to_smp(self) -> nn.Module:
        """This network as a plain smp model of the same weights, in eval mode on the CPU.

        smp names the decoder ``decoder`` and the head ``segmentation_head`` where sever
        has ``decoder.decoder`` and ``decoder.head`` (sever's ``Dropout2d`` holds no
        weights); the weights are loaded strictly. The smp model takes ``(B, C_in, H, W)``
        normalised images with ``H, W`` multiples of the encoder's output stride (it pads
        nothing) and gives the same logits ``(B, classes, H, W)``.
        """
        renamed = {"decoder.decoder.": "decoder.", "decoder.head.": "segmentation_head."}
        state = {}
        for name, tensor in self.state_dict().items():
            prefix = next((p for p in renamed if name.startswith(p)), "")
            state[renamed[prefix] + name[len(prefix):] if prefix else name] = tensor
        net = self.smp_architecture(encoder_weights=None, in_channels=self.in_channels, **self._smp_args)
        net.load_state_dict(state, strict=True)
        return net.eval()


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
