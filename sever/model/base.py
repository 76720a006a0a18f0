"""The interface every sever model implements.

A model is an ``encoder`` (the pretrained backbone) and a ``decoder`` (everything
after it, heads included). These two modules are the optimiser's parameter
groups, with their own learning rates and weight decays, so every parameter of
the model belongs to exactly one of them.
"""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class BaseModel(nn.Module, abc.ABC):
    """An ``encoder`` + ``decoder`` network whose encoder can be frozen.

    Args:
        encoder: the backbone; its parameters form the "encoder" group.
        decoder: every other module holding parameters (decoder and heads).

    Subclasses implement :meth:`forward` and must not register parameters
    outside ``encoder`` and ``decoder``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self._encoder_frozen = False

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``x`` of shape ``(B, C_in, H, W)``."""

    @property
    def in_channels(self) -> int:
        """``C_in``: the input channels of the encoder's first convolution."""
        return next(m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)).in_channels

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """Grey images ``(B, 1, H, W)`` repeated to ``(B, C_in, H, W)``; other inputs unchanged.

        Datasets and the predictor yield one grey channel whatever ``in_channels``
        the model was built with (``rgb``, ``rrggbb``, ...), so the model repeats it.
        """
        channels = self.in_channels
        return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 and channels > 1 else x

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def trainable_parameters(self) -> int:
        """Number of scalar parameters with ``requires_grad``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.trainable_parameters()}"

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and its BatchNorm statistics stay fixed.

        The encoder's BatchNorm layers stay in eval mode until
        :meth:`unfreeze_encoder`, whatever ``train()`` calls happen meanwhile.
        """
        self._set_encoder_trainable(False)

    def unfreeze_encoder(self) -> None:
        """Train the encoder again; its BatchNorm layers follow the model's mode."""
        self._set_encoder_trainable(True)

    def train(self, mode: bool = True) -> BaseModel:
        """``nn.Module.train``, except that a frozen encoder's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self._encoder_frozen:
            self._set_encoder_norm_mode(False)
        return self

    def _set_encoder_trainable(self, trainable: bool) -> None:
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(trainable)
        self._encoder_frozen = not trainable
        self._set_encoder_norm_mode(self.training and trainable)

    def _set_encoder_norm_mode(self, training: bool) -> None:
        for module in self.encoder.modules():
            if isinstance(module, _BatchNorm):
                module.train(training)
