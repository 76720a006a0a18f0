"""Named augmentation sets for grayscale steel images and their defect masks.

A *transform set* is a small class registered in :data:`TRANSFORMS`: its
constructor takes the set's parameters (crop size, strengths, normalisation
statistics) and :meth:`TransformSet.build` returns the albumentations pipeline
for training or for evaluation::

    augmentation:
      type: HeavyCropTransforms
      args: {height: 256, width: 416}

Pipelines are called as ``pipeline(image=image, mask=mask)`` with

- ``image``: uint8 ``(H, W)`` or ``(H, W, 1)`` grayscale,
- ``mask``: uint8 ``(H, W, C)`` 0/1, one channel per defect class (optional),

and return ``image`` uint8 tensor ``(1, h, w)`` and ``mask`` uint8 tensor
``(C, h, w)`` (the loss casts it). Training pipelines crop to ``crop_size`` when
the set has one; the evaluation pipeline keeps the full image (the model pads
to a multiple of 32 itself).

Normalisation: a set's :attr:`TransformSet.normalization` maps a uint8 batch to
the model's float32 input, ``(x / 255 - mean) / std``. The trainer and the
predictor apply it after the batch reaches the device, so the loader workers,
pinned memory and the host-to-device copy carry a quarter of the bytes of
float32 images.

Cropping: the crop is always a training pipeline's first step, and where it
goes is a :class:`CropPolicy` (random, or onto a defect) that the pipeline
exposes as ``pipeline.crop``. Called on full-size arrays, the pipeline places
the crop from the mask itself; the training dataset instead places it from
the RLE runs before decoding anything (:meth:`SeverCompose.crop_window`),
decodes only the window and calls :meth:`SeverCompose.after_crop`. Both give
the same output for the same seed.

Images smaller than the crop: on an axis where the image is smaller than the
crop, the whole image is taken at a random offset inside the crop and the rest
is padded (``pad_mode``: ``constant`` with ``pad_value``, or ``reflect``). The
mask is padded with :data:`PAD_LABEL` in every class channel, so the trainer
knows the padded pixels and leaves them out of the loss and the metrics
(padding never teaches "background"). Images at least as large as the crop
take the crop-first fast path unchanged.

Seeding: ``pipeline.set_random_seed(seed)`` (a non-negative int) makes the
next call a deterministic function of ``seed``. The data layer calls it before
every sample with a seed derived from (run seed, epoch, sample index), so the
augmentation does not depend on the number of workers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.core.composition import BaseCompose
import torch

from sever.data_loader.rle import Runs, mask_runs, union_runs
from sever.exceptions import DataError
from sever.registries import TRANSFORMS


GRAY_MEAN = 0.3439  # mean of the Severstal training images, as a fraction of 255
GRAY_STD = 0.0383
PIXEL_SCALE = 255.0  # grey levels to the fractions the statistics are given in
SIZE_MULTIPLE = 32  # segmentation_models_pytorch needs H and W divisible by 32
PAD_LABEL = 255  # mask value of pixels that are padding, not image: no class, left out of losses and metrics
MIN_IMAGE_SIDE = 8  # smallest image height or width sever trains on (reflection needs a few pixels)
PAD_MODES = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


@dataclass(frozen=True)
class CropPolicy:
    """Where a ``height x width`` training crop goes, from the positions of the defect pixels.

    With probability ``defect_probability``, when the sample has any defect,
    the crop is placed onto one, as albumentations 2.0.8's
    ``CropNonEmptyMaskIfExists`` does: a pixel is drawn uniformly among the
    defect pixels of all classes together (their union), the window is put
    so that pixel falls at a uniformly random offset inside it, then shifted
    to lie inside the image. Otherwise the window is uniform over the image,
    as ``RandomCrop``. The write-up's ``OneOf([CropNonEmptyMaskIfExists,
    RandomCrop])`` is ``defect_probability=0.5``; 0 is a plain random crop.

    On an axis where the image is smaller than the crop, the window holds the
    whole image at a uniformly random offset: its start is negative, and
    :meth:`cut` pads the missing part with ``pad_mode`` (``constant`` with the
    grey level ``pad_value``, or ``reflect``) and the mask with :data:`PAD_LABEL`.
    """

    height: int
    width: int
    defect_probability: float = 0.0
    pad_mode: str = "constant"
    pad_value: int = 0

    def window(self, rng: np.random.Generator, shape: Sequence[int], defects: Sequence[Runs]) -> tuple[int, int]:
        """``(top, left)`` of the crop in an image of ``shape = (H, W)``; negative on an axis the crop exceeds.

        Args:
            rng: the only source of randomness.
            defects: the defect runs of the image's masks, one ``(starts0, lengths)``
                pair per class (column-major pixel numbers, as in ``rle.py``).

        Raises:
            DataError: a side of the image is shorter than :data:`MIN_IMAGE_SIDE`.
        """
        height, width = (int(n) for n in shape[:2])
        if min(height, width) < MIN_IMAGE_SIDE:
            raise DataError(f"a {height}x{width} image is too small to train on (sides of at least "
                            f"{MIN_IMAGE_SIDE} pixels are needed, the rest of the crop is padded)")
        if self.defect_probability and rng.random() < self.defect_probability:
            starts0, lengths = union_runs(defects)
            if starts0.size:
                row, column = _defect_pixel(rng, starts0, lengths, height)
                return _onto(rng, row, height, self.height), _onto(rng, column, width, self.width)
        return _uniform(rng, height, self.height), _uniform(rng, width, self.width)

    def cut(self, image: np.ndarray, mask: np.ndarray | None, top: int, left: int,
            decoded_columns: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``(height, width)`` crop at ``(top, left)`` of ``image (H, W, 1)`` and ``mask (H, W', C)``.

        ``mask`` may hold only the columns from ``decoded_columns`` on (the
        window's, as the dataset decodes them); padding, where the window
        leaves the image, is added to both.
        """
        rows = slice(max(top, 0), top + self.height)
        image = image[rows, max(left, 0) : left + self.width]
        if mask is not None:
            mask = mask[rows, max(left, 0) - decoded_columns : left + self.width - decoded_columns]
        pads = (max(-top, 0), self.height - max(-top, 0) - image.shape[0],
                max(-left, 0), self.width - max(-left, 0) - image.shape[1])
        if not any(pads):
            return image, mask
        padded = cv2.copyMakeBorder(image, *pads, PAD_MODES[self.pad_mode], value=self.pad_value)
        image = padded.reshape(self.height, self.width, 1)
        if mask is not None:
            layers = [cv2.copyMakeBorder(np.ascontiguousarray(mask[:, :, k]), *pads, cv2.BORDER_CONSTANT,
                                         value=PAD_LABEL) for k in range(mask.shape[2])]
            mask = np.stack(layers, axis=2)
        return image, mask


def _uniform(rng: np.random.Generator, size: int, crop: int) -> int:
    """Start of a ``crop``-long window uniform over a ``size``-long axis (negative: the axis is padded)."""
    if crop <= size:
        return int(rng.integers(size - crop + 1))
    return -int(rng.integers(crop - size + 1))


def _onto(rng: np.random.Generator, pixel: int, size: int, crop: int) -> int:
    """Start of a ``crop``-long window holding ``pixel`` at a random offset, shifted inside the axis."""
    if crop <= size:
        return min(max(pixel - int(rng.integers(crop)), 0), size - crop)
    return _uniform(rng, size, crop)  # the whole axis is in the window: the pixel is in it anywhere


def _defect_pixel(rng: np.random.Generator, starts0: np.ndarray, lengths: np.ndarray, height: int) -> tuple[int, int]:
    """``(row, column)`` of a pixel drawn uniformly from the runs of a mask ``height`` pixels high."""
    ends = np.cumsum(lengths)
    number = int(rng.integers(ends[-1]))  # the number-th defect pixel in column-major order
    run = int(np.searchsorted(ends, number, side="right"))
    pixel = int(starts0[run]) + number - int(ends[run] - lengths[run])
    column, row = divmod(pixel, height)
    return row, column


class SeverCompose(A.Compose):
    """``A.Compose`` for one grayscale image and its mask, with a crop policy and independent seeding.

    It differs from ``A.Compose`` in three ways:

    - the image is checked and brought to ``(H, W, 1)`` here, the one place
      where the grayscale layout is handled;
    - ``crop`` (a :class:`CropPolicy` or None) is applied before ``transforms``;
      :meth:`crop_window` and :meth:`after_crop` let a caller that knows the
      defect runs crop the data itself;
    - :meth:`set_random_seed` seeds one pair of generators that the crop and
      every transform draw from in turn. Plain ``A.Compose`` seeds every
      transform's own generators with the same value, so e.g. a horizontal and
      a vertical flip with ``p=0.5`` would always fire together.
    """

    def __init__(self, transforms: list, crop: CropPolicy | None = None, **compose_options: Any):
        super().__init__(transforms, **compose_options)
        self.crop = crop

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        """Crop (with a crop policy), then apply the transforms, to full-size data."""
        if self.crop is not None and "image" in data:
            data = self._cropped(data)
        return self.after_crop(*args, force_apply=force_apply, **data)

    def _cropped(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with its image and mask cut to the window placed from the mask's defect pixels."""
        image = as_grayscale_hwc(data["image"])
        mask = data.get("mask")
        if mask is not None:
            mask = np.asarray(mask).reshape(*image.shape[:2], -1)
        defects = [] if mask is None else [mask_runs(mask.any(axis=2))]
        top, left = self.crop_window(image.shape, defects)
        image, mask = self.crop.cut(image, mask, top, left)
        cropped = {**data, "image": image}
        if mask is not None:
            cropped["mask"] = mask
        return cropped

    def crop_window(self, shape: Sequence[int], defects: Sequence[Runs]) -> tuple[int, int]:
        """``(top, left)`` of this call's crop (see :meth:`CropPolicy.window`); needs a crop."""
        return self.crop.window(self.random_generator, shape, defects)

    def after_crop(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        """The pipeline without its crop, for data already cropped at :meth:`crop_window`."""
        if "image" in data:
            data["image"] = as_grayscale_hwc(data["image"])
        return _as_tensors(super().__call__(*args, force_apply=force_apply, **data))

    def set_random_seed(self, seed: int | None) -> None:
        """Seed this pipeline; ``None`` draws fresh entropy.

        The crop, then each transform in turn, draw from one numpy and one
        Python generator seeded here and shared through ``set_random_state``.
        """
        self.seed = seed
        self.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _as_tensors(data: dict[str, Any]) -> dict[str, Any]:
    """``image (h, w, 1)`` and ``mask (h, w, C)`` arrays as ``(1, h, w)`` and ``(C, h, w)`` tensors.

    The mask is made channel-first and contiguous with ``cv2.split``: a third of
    the time of torch's copy of a permuted view, and contiguous masks collate
    into batches twice as fast.
    """
    if "image" in data:
        data["image"] = torch.from_numpy(data["image"].transpose(2, 0, 1))
    if "mask" in data:
        mask = data["mask"]
        data["mask"] = torch.from_numpy(np.stack(cv2.split(mask)) if mask.ndim == 3 else mask[None])
    return data


def as_grayscale_hwc(image: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W)`` or ``(H, W, 1)`` image as ``(H, W, 1)``; anything else is a DataError."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        raise DataError(
            f"augmentation input: expected a uint8 grayscale image of shape (H, W) or (H, W, 1), "
            f"got {image.dtype} {image.shape}"
        )
    return image.reshape(image.shape[0], image.shape[1], 1)


@dataclass(frozen=True)
class Normalization:
    """The grey normalisation ``(x / 255 - mean) / std`` of a model's input.

    Args:
        mean, std: grey statistics as fractions of 255 (``std > 0``).
    """

    mean: float
    std: float

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float32 images normalised, from uint8 ``images`` of any shape (e.g. ``(B, 1, H, W)``).

        The result has the shape, device and memory format of ``images``.
        """
        return images.to(torch.float32, copy=True).div_(PIXEL_SCALE).sub_(self.mean).div_(self.std)


def _check_crop(height: int | None, width: int | None) -> tuple[int, int] | None:
    """``(height, width)``, or None when both are None; raises ValueError otherwise."""
    if height is None and width is None:
        return None
    for name, value in (("height", height), ("width", width)):
        valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not valid or value <= 0 or value % SIZE_MULTIPLE:
            raise ValueError(
                f"crop {name} must be a positive multiple of {SIZE_MULTIPLE} "
                f"(the models need H and W divisible by {SIZE_MULTIPLE}), got {value!r}"
            )
    return int(height), int(width)


def _check_padding(pad_mode: str, pad_value: int) -> None:
    """ValueError unless ``pad_mode`` is a known mode and ``pad_value`` a grey level 0-255."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be a grey level from 0 to 255, got {pad_value!r}")


def _check_limit(name: str, value: float) -> float:
    """A strength in [0, 1); raises ValueError otherwise."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class TransformSet:
    """Base of the registered sets: normalisation, crop size and ``build``.

    Args:
        height, width: training crop size, positive multiples of 32, or both
            None for no crop.
        mean, std: grayscale statistics as fractions of 255.
        pad_mode: how a crop larger than the image is filled: ``constant``
            (the grey level ``pad_value``) or ``reflect`` (the image mirrored
            about its edge pixels). Padded pixels are left out of the loss.
        pad_value: the grey level (0-255) of ``constant`` padding.

    A subclass defines its random transforms (:meth:`_train_transforms`, after
    the crop) and, with :attr:`defect_crop_probability`, where its crop goes.
    """

    defect_crop_probability = 0.0  # see CropPolicy; 0: crops are uniformly random

    def __init__(
        self,
        height: int | None = None,
        width: int | None = None,
        mean: float = GRAY_MEAN,
        std: float = GRAY_STD,
        pad_mode: str = "constant",
        pad_value: int = 0,
    ):
        self._crop = _check_crop(height, width)
        if not std > 0:
            raise ValueError(f"std must be positive, got {std!r}")
        _check_padding(pad_mode, pad_value)
        self.pad_mode, self.pad_value = pad_mode, int(pad_value)
        self.normalization = Normalization(float(mean), float(std))

    @property
    def crop_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the training crop, or None when training sees full images.

        An image smaller than the crop is padded to it (:class:`CropPolicy`).
        """
        return self._crop

    @property
    def crop_policy(self) -> CropPolicy | None:
        """Where training crops go, or None when training sees full images."""
        if self._crop is None:
            return None
        return CropPolicy(*self._crop, self.defect_crop_probability, self.pad_mode, self.pad_value)

    def build(self, train: bool) -> SeverCompose:
        """The training pipeline (``train=True``) or the evaluation pipeline.

        Both map ``image (H, W)`` uint8 and ``mask (H, W, C)`` uint8 to
        ``image (1, h, w)`` and ``mask (C, h, w)`` uint8 tensors (see
        :attr:`normalization` for the model's input); evaluation keeps
        ``(h, w) = (H, W)``. The training pipeline crops first, by :attr:`crop_policy`.
        """
        if not train:
            return SeverCompose([])
        return SeverCompose(self._train_transforms(), crop=self.crop_policy)

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        """The random part of the training pipeline after the crop, applied to uint8 data."""
        raise NotImplementedError


@TRANSFORMS.register
class HeavyCropTransforms(TransformSet):
    """The write-up's recipe: defect-seeking or random crop, one of CLAHE/blur/sharpen, flips.

    Half the crops are taken onto a defect when the mask has any (the
    write-up's ``OneOf([CropNonEmptyMaskIfExists, RandomCrop])``, see
    :class:`CropPolicy`), half anywhere.
    """

    defect_crop_probability = 0.5

    def __init__(self, height: int, width: int, mean: float = GRAY_MEAN, std: float = GRAY_STD,
                 pad_mode: str = "constant", pad_value: int = 0):
        super().__init__(height, width, mean, std, pad_mode, pad_value)
        if self._crop is None:
            raise ValueError("HeavyCropTransforms needs a crop height and width")

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        return [
            A.OneOf(
                [A.CLAHE(p=0.5), A.GaussianBlur(blur_limit=3, p=0.3), A.Sharpen(alpha=(0.2, 0.3), p=0.3)],
                p=1,
            ),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ]


@TRANSFORMS.register
class MediumTransforms(TransformSet):
    """Optional random crop, flips, mild brightness/contrast, small shift/scale (no rotation).

    Args:
        brightness_limit, contrast_limit: at most this fraction up or down.
        shift_limit: translation as a fraction of the image size, each axis.
        scale_limit: zoom in ``[1 - scale_limit, 1 + scale_limit]``; borders reflect.
    """

    def __init__(
        self,
        height: int | None = None,
        width: int | None = None,
        brightness_limit: float = 0.1,
        contrast_limit: float = 0.1,
        shift_limit: float = 0.05,
        scale_limit: float = 0.1,
        mean: float = GRAY_MEAN,
        std: float = GRAY_STD,
        pad_mode: str = "constant",
        pad_value: int = 0,
    ):
        super().__init__(height, width, mean, std, pad_mode, pad_value)
        self.brightness_limit = _check_limit("brightness_limit", brightness_limit)
        self.contrast_limit = _check_limit("contrast_limit", contrast_limit)
        self.shift_limit = _check_limit("shift_limit", shift_limit)
        self.scale_limit = _check_limit("scale_limit", scale_limit)

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        return [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(self.brightness_limit, self.contrast_limit, p=0.5),
            *self._shift_scale(),
        ]

    def _shift_scale(self) -> list[A.BasicTransform]:
        """An affine shift/scale without rotation, or nothing when both limits are 0."""
        if not (self.shift_limit or self.scale_limit):
            return []
        return [
            A.Affine(
                scale=(1 - self.scale_limit, 1 + self.scale_limit),
                translate_percent=(-self.shift_limit, self.shift_limit),
                rotate=0,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            )
        ]


@TRANSFORMS.register
class LightTransforms(TransformSet):
    """Optional random crop and a horizontal flip."""

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        return [A.HorizontalFlip(p=0.5)]
