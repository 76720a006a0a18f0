"""Sliding-window (tiled) prediction of images larger than a tile.

An image of ``H x W`` is cut into tiles of at most ``tile_h x tile_w`` whose starts
step by ``tile * (1 - overlap)`` rounded down to a multiple of the network stride (32,
at least one stride) along each axis. The last start is the first multiple of 32 at
which a tile reaches the image's end, so that tile may be up to 31 pixels shorter (the
model pads it, as it pads the whole image). Every start on the stride grid keeps each
tile's feature grid aligned with the whole image's. An axis that fits in one tile has
one tile of the image's length: an image no larger than the tile is predicted whole.

Each tile's probabilities ``(C, h, w)`` are multiplied by a blending weight
``w(y, x) = a(y) * b(x)`` and added into a float32 sum the size of the output map;
the sum is then divided by the summed weights at each pixel, so every pixel is a
weighted mean of the tiles covering it (weights summing to one). With the tiles on
a grid, the summed weights are ``A(y) * B(x)`` with ``A`` and ``B`` the sums of the
1-D weights over the tile starts, so no full-size weight map is ever made. The 1-D
weights of a tile of length ``L``, at pixel centre ``t = i + 0.5``:

- ``gaussian``: ``exp(-((t - L/2) / (L/8))^2 / 2)``: 1 at the centre, 0.14 a quarter
  tile from the edge, 3e-4 at the edge, so a pixel takes most from the tile it sits
  nearest the centre of;
- ``linear``: ``min(1, t / m, (L - t) / m)`` with ``m = overlap * L`` pixels (all 1 without
  overlap): 1 in the middle, falling linearly to ``~0`` across the overlapping margin, so
  two tiles overlapping by exactly ``m`` cross-fade and the middle of a tile is its own.

Both are positive everywhere, so the image's own edges (covered by one tile) keep that
tile's values exactly. The memory a tiled prediction needs beyond the image and its
output map is that of one forward pass over ``batch`` tiles (one model and TTA view at a time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from sever.exceptions import ConfigError
from sever.tasks import task_of
from sever.utils.registry import parse_spec

NETWORK_STRIDE = 32  # encoders' output stride; the dilated ones (16, 8) divide it
BLENDS = ("gaussian", "linear")
GAUSSIAN_SIGMA = 1 / 8  # of the tile length
DEFAULT_OVERLAP = 0.25


def parse_tile(text: str, option: str = "--tile") -> tuple[int, int]:
    """``"512x768"`` -> ``(512, 768)`` (height, width).

    Raises:
        ConfigError: not ``HEIGHTxWIDTH`` in whole numbers, naming ``option``.
    """
    match = re.fullmatch(r"\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*", text)
    if match is None:
        raise ConfigError(f"{option}: expected HEIGHTxWIDTH in pixels, e.g. 512x512, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_tile(height: int, width: int, option: str = "--tile") -> None:
    """ConfigError, naming ``option``, unless both sides are positive multiples of :data:`NETWORK_STRIDE`."""
    size = f"{height}x{width}"
    if height <= 0 or width <= 0:
        raise ConfigError(f"{option}: {size}: height and width must be positive")
    if height < NETWORK_STRIDE or width < NETWORK_STRIDE:
        raise ConfigError(f"{option}: {size} is smaller than the network stride {NETWORK_STRIDE}")
    if height % NETWORK_STRIDE or width % NETWORK_STRIDE:
        raise ConfigError(f"{option}: {size}: height and width must be multiples of the network stride "
                          f"{NETWORK_STRIDE}")


def valid_tiling(config: dict) -> Tiling | None:
    """The tiling a run validates with (``trainer.valid_tile``, ``trainer.valid_overlap``), or None: whole images.

    Validation, the self-tuning at the end of training and ``sever evaluate/tune -m RUN
    --split val`` (without ``--tile``) all predict the validation images this way. Tiles
    are blended by ``gaussian`` weights, ``data_loader.args.valid_batch_size`` (else
    ``batch_size``, else 8) tiles per forward pass.

    Raises:
        ConfigError: a bad tile, naming the key (the overlap's range is checked with the
            config, :mod:`sever.utils.config`); tiles for a task whose runs
            ``--tile`` does not tile (only ``-m`` runs are).
    """
    trainer = config.get("trainer", {})
    if trainer.get("valid_tile") is None:
        return None
    if not task_of(config).pixel_maps:
        raise ConfigError(f"trainer.valid_tile: a {config['task']} run is validated on whole images; "
                          f"only segmentation runs are tiled")
    height, width = parse_tile(str(trainer["valid_tile"]), "trainer.valid_tile")
    check_tile(height, width, "trainer.valid_tile")
    _, args = parse_spec(config["data_loader"], "data_loader")
    return Tiling(height, width, trainer.get("valid_overlap", DEFAULT_OVERLAP), "gaussian",
                  args.get("valid_batch_size") or args.get("batch_size", 8))


@dataclass(frozen=True)
class Tiling:
    """How large images are cut into tiles and blended back.

    Args:
        height, width: tile size in pixels, positive multiples of :data:`NETWORK_STRIDE`.
        overlap: share of a tile shared with its neighbour along each axis, in [0, 1).
        blend: ``gaussian`` or ``linear`` weights (see the module docstring).
        batch: tiles per forward pass (times the TTA views).

    Raises:
        ConfigError: a bad value, naming its option (``--tile``, ``--overlap``, ``--blend``,
            ``--batch-size``).
    """

    height: int
    width: int
    overlap: float = DEFAULT_OVERLAP
    blend: str = "gaussian"
    batch: int = 8

    def __post_init__(self):
        check_tile(self.height, self.width)
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap: {self.overlap} is outside [0, 1)")
        if self.blend not in BLENDS:
            raise ConfigError(f"--blend: {self.blend!r} is not one of {', '.join(BLENDS)}")
        if self.batch < 1:
            raise ConfigError(f"--batch-size: {self.batch} tiles per forward pass; expected >= 1")

    def fits(self, height: int, width: int) -> bool:
        """Whether an image of ``height x width`` is predicted whole (one tile)."""
        return height <= self.height and width <= self.width

    def spans(self, length: int, tile: int) -> list[tuple[int, int]]:
        """``(start, length)`` of the tiles along an axis of ``length`` pixels for tiles of ``tile``."""
        if tile >= length:
            return [(0, length)]
        step = max(NETWORK_STRIDE, math.floor(tile * (1 - self.overlap) / NETWORK_STRIDE) * NETWORK_STRIDE)
        starts = list(range(0, length - tile, step))
        starts.append(math.ceil((length - tile) / NETWORK_STRIDE) * NETWORK_STRIDE)
        return [(start, min(tile, length - start)) for start in starts]

    def weights(self, length: int, tiles: int) -> Tensor:
        """float32 ``(length,)`` 1-D blending weights of a tile (all 1 when the axis has one tile)."""
        if tiles == 1:
            return torch.ones(length)
        centres = torch.arange(length, dtype=torch.float64) + 0.5
        if self.blend == "gaussian":
            weights = torch.exp(-0.5 * ((centres - length / 2) / (GAUSSIAN_SIGMA * length)) ** 2)
        else:
            margin = self.overlap * length
            weights = torch.ones(length, dtype=torch.float64)
            if margin > 0:
                weights = torch.minimum(weights, torch.minimum(centres, length - centres) / margin)
        return weights.float()

    def axis_weights(self, length: int, tile: int, device: torch.device) -> tuple[list[tuple[int, int]], dict, Tensor]:
        """An axis's tile spans, each span length's 1-D weights, and their sum ``(length,)`` over the spans."""
        spans = self.spans(length, tile)
        weights = {size: self.weights(size, len(spans)).to(device) for size in {size for _, size in spans}}
        total = torch.zeros(length, dtype=torch.float32, device=device)
        for start, size in spans:
            total[start:start + size] += weights[size]
        return spans, weights, total

    @torch.inference_mode()
    def predict(self, segment: Callable[[Tensor], Tensor], image: Tensor, classes: int) -> Tensor:
        """Blended probabilities of one image, predicted tile by tile.

        Tiles of one shape go through ``segment`` :attr:`batch` at a time (the last row and
        column of tiles may be shorter: their starts stay on the network's stride grid).

        Args:
            segment: maps tiles ``(N, h, w)`` of ``image`` to float probabilities ``(N, C, h, w)``
                in [0, 1] on the image's device.
            image: ``(H, W)`` grey image: uint8, or normalised float (validation).
            classes: C.

        Returns:
            float32 ``(C, H, W)`` probabilities in [0, 1]: the sum buffer, divided in place.
        """
        height, width = image.shape
        rows, row_weights, row_total = self.axis_weights(height, self.height, image.device)
        columns, column_weights, column_total = self.axis_weights(width, self.width, image.device)
        total = torch.zeros(classes, height, width, dtype=torch.float32, device=image.device)
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for y, h in rows:
            for x, w in columns:
                by_shape.setdefault((h, w), []).append((y, x))
        for (h, w), starts in by_shape.items():
            tile_weights = row_weights[h][:, None] * column_weights[w][None, :]
            for first in range(0, len(starts), self.batch):
                chunk = starts[first:first + self.batch]
                probs = segment(torch.stack([image[y:y + h, x:x + w] for y, x in chunk])).float()
                for (y, x), tile_probs in zip(chunk, probs):
                    total[:, y:y + h, x:x + w].addcmul_(tile_probs, tile_weights)
        total.div_(row_total[None, :, None])
        return total.div_(column_total[None, None, :])
