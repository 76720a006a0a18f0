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

and return ``image`` float32 tensor ``(1, h, w)`` normalised with
``(x / 255 - mean) / std`` and ``mask`` uint8 tensor ``(C, h, w)`` (the loss
casts it). Training pipelines crop to ``crop_size`` when the set has one; the
evaluation pipeline only normalises, keeping the full image (the model pads to
a multiple of 32 itself).

Seeding: ``pipeline.set_random_seed(seed)`` (a non-negative int) makes the
next call a deterministic function of ``seed``. The data layer calls it before
every sample with a seed derived from (run seed, epoch, sample index), so the
augmentation does not depend on the number of workers.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from albumentations.pytorch import ToTensorV2

from sever.exceptions import DataError
from sever.utils.registry import Registry

TRANSFORMS = Registry("augmentation")

GRAY_MEAN = 0.3439  # mean of the Severstal training images, as a fraction of 255
GRAY_STD = 0.0383
SIZE_MULTIPLE = 32  # segmentation_models_pytorch needs H and W divisible by 32


class SeverCompose(A.Compose):
    """``A.Compose`` for one grayscale image and its mask, with independent seeding.

    It differs from ``A.Compose`` in two ways:

    - the image is checked and brought to ``(H, W, 1)`` here, the one place
      where the grayscale layout is handled;
    - :meth:`set_random_seed` gives every transform its own seed spawned from
      the given one. Plain ``A.Compose`` seeds every transform with the same
      value, so e.g. a horizontal and a vertical flip with ``p=0.5`` would
      always fire together.
    """

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        if "image" in data:
            data["image"] = as_grayscale_hwc(data["image"])
        return super().__call__(*args, force_apply=force_apply, **data)

    def set_random_seed(self, seed: int | None) -> None:
        """Seed this pipeline; ``None`` draws fresh entropy for every transform."""
        super().set_random_seed(seed)
        if seed is not None:
            _seed_children(self, np.random.SeedSequence(seed))


def _seed_children(compose: BaseCompose, sequence: np.random.SeedSequence) -> None:
    """Give each transform under ``compose`` a distinct seed spawned from ``sequence``."""
    children = [t for t in compose.transforms if isinstance(t, (BasicTransform, BaseCompose))]
    for child, child_sequence in zip(children, sequence.spawn(len(children))):
        child.set_random_seed(int(child_sequence.generate_state(1)[0]))
        if isinstance(child, BaseCompose):
            _seed_children(child, child_sequence)


def as_grayscale_hwc(image: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W)`` or ``(H, W, 1)`` image as ``(H, W, 1)``; anything else is a DataError."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        raise DataError(
            f"augmentation input: expected a uint8 grayscale image of shape (H, W) or (H, W, 1), "
            f"got {image.dtype} {image.shape}"
        )
    return image.reshape(image.shape[0], image.shape[1], 1)


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
    """

    def __init__(
        self,
        height: int | None = None,
        width: int | None = None,
        mean: float = GRAY_MEAN,
        std: float = GRAY_STD,
    ):
        self._crop = _check_crop(height, width)
        if not std > 0:
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean = float(mean)
        self.std = float(std)

    @property
    def crop_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the training crop, or None when training sees full images.

        The data layer checks it against the image size before training:
        a crop larger than the image cannot be taken.
        """
        return self._crop

    def build(self, train: bool) -> A.Compose:
        """The training pipeline (``train=True``) or the evaluation pipeline.

        Both map ``image (H, W)`` uint8 and ``mask (H, W, C)`` uint8 to
        ``image (1, h, w)`` float32 and ``mask (C, h, w)`` uint8 tensors;
        evaluation keeps ``(h, w) = (H, W)``.
        """
        body = self._train_transforms() if train else []
        return SeverCompose([*body, A.Normalize(mean=self.mean, std=self.std), ToTensorV2(transpose_mask=True)])

    def _random_crop(self) -> list[A.BasicTransform]:
        """A random crop to ``crop_size``, or nothing without one."""
        return [A.RandomCrop(*self._crop)] if self._crop else []

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        """The random part of the training pipeline, applied to uint8 data."""
        raise NotImplementedError


@TRANSFORMS.register
class HeavyCropTransforms(TransformSet):
    """The write-up's recipe: defect-seeking or random crop, one of CLAHE/blur/sharpen, flips.

    Half the crops are taken onto a defect when the mask has any
    (``CropNonEmptyMaskIfExists``), half anywhere.
    """

    def __init__(self, height: int, width: int, mean: float = GRAY_MEAN, std: float = GRAY_STD):
        super().__init__(height, width, mean, std)
        if self._crop is None:
            raise ValueError("HeavyCropTransforms needs a crop height and width")

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        height, width = self._crop
        return [
            A.OneOf([A.CropNonEmptyMaskIfExists(height, width), A.RandomCrop(height, width)], p=1),
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
    ):
        super().__init__(height, width, mean, std)
        self.brightness_limit = _check_limit("brightness_limit", brightness_limit)
        self.contrast_limit = _check_limit("contrast_limit", contrast_limit)
        self.shift_limit = _check_limit("shift_limit", shift_limit)
        self.scale_limit = _check_limit("scale_limit", scale_limit)

    def _train_transforms(self) -> list[A.BasicTransform | BaseCompose]:
        return [
            *self._random_crop(),
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
        return [*self._random_crop(), A.HorizontalFlip(p=0.5)]
