"""Datasets over steel images and their run-length encoded masks.

Images are read as one grey channel (the Severstal JPEGs are three identical
channels); masks are decoded from RLE and stay uint8. When the training
pipeline crops, the crop window is chosen from the RLE runs before decoding,
and only the window's columns are decoded (a column range is one contiguous
pixel range of the column-major RLE).
A dataset item can be asked for with a plain index or with ``(index, seed)``:
the seed makes that sample's augmentation reproducible whatever worker runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sever.data_loader.annotations import Annotations
from sever.data_loader.rle import Runs, decode_runs
from sever.exceptions import DataError, RLEError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_JPEG_END = b"\xff\xd9"


def list_images(image_dir: str | Path) -> list[str]:
    """Sorted image file names in ``image_dir``.

    Raises:
        DataError: the folder does not exist or holds no images.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: {image_dir}")
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not names:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    return names


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W)`` uint8 grey.

    Raises:
        DataError: the file is missing, unreadable, not an image, or a truncated JPEG.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
    if path.suffix.lower() in (".jpg", ".jpeg") and data[-2:].tobytes() != _JPEG_END:
        raise DataError(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file."""
    return read_grey(path).shape[:2]


def _split_key(key: Any) -> tuple[int, int | None]:
    if isinstance(key, tuple):
        index, seed = key
        return int(index), int(seed)
    return int(key), None


class SegmentationDataset(Dataset):
    """Images with one binary mask per defect class.

    Args:
        paths: image files, aligned with ``annotations``.
        annotations: per-image, per-class RLE strings.
        transforms: an albumentations pipeline taking ``image (H, W)`` uint8 and
            ``mask (H, W, C)`` uint8 and returning tensors. A
            :class:`~sever.data_loader.augmentation.SeverCompose` with a ``crop``
            gets only the crop window decoded (see :meth:`load_crop`).

    Items: ``(image (1, h, w) uint8, mask (C, h, w) uint8)``; the trainer normalises
    the images on its device (see ``TransformSet.normalization``). Mask pixels that
    are padding, not image, hold ``PAD_LABEL`` (255) in every channel.
    """

    def __init__(self, paths: Sequence[Path], annotations: Annotations, transforms):
        if len(paths) != len(annotations):
            raise ValueError(f"{len(paths)} image paths for {len(annotations)} annotated images")
        self.paths = [Path(p) for p in paths]
        self.annotations = annotations
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.paths)

    def _runs(self, index: int, shape: tuple[int, int]) -> list[Runs]:
        """Sample ``index``'s per-class runs; RLEError naming the CSV row and the image."""
        try:
            return self.annotations.runs(index, shape)
        except RLEError as exc:
            raise RLEError(f"{exc} (image {self.paths[index]}, {shape[0]}x{shape[1]})") from exc

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(image (H, W), mask (H, W, C))`` uint8 pair of sample ``index``."""
        image = read_grey(self.paths[index])
        return image, decode_runs(self._runs(index, image.shape), image.shape)

    def load_crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(image (h, w, 1), mask (h, w, C))`` uint8 crop that ``transforms.crop`` places.

        The window comes from ``transforms.crop_window`` (seeded with the
        pipeline), given the runs' pixel positions; only its columns are decoded.
        Where the window leaves a smaller image, both are padded
        (:meth:`~sever.data_loader.augmentation.CropPolicy.cut`).
        """
        path = self.paths[index]
        image = read_grey(path)
        runs = self._runs(index, image.shape)
        try:
            top, left = self.transforms.crop_window(image.shape, runs)
        except DataError as exc:
            raise DataError(f"{path}: {exc} (augmentation.args sets the crop)") from None
        first = max(left, 0)
        columns = (first, min(left + self.transforms.crop.width, image.shape[1]))
        mask = decode_runs(runs, image.shape, columns)
        return self.transforms.crop.cut(image[:, :, None], mask, top, left, decoded_columns=first)

    def _transformed(self, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = _split_key(key)
        if seed is not None:
            self.transforms.set_random_seed(seed)
        if getattr(self.transforms, "crop", None) is None:
            image, mask = self.load(index)
            out = self.transforms(image=image, mask=mask)
        else:
            image, mask = self.load_crop(index)
            out = self.transforms.after_crop(image=image, mask=mask)
        return out["image"], out["mask"]

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transformed(key)


class ClassificationDataset(SegmentationDataset):
    """Images with per-class defect presence, measured on the (augmented) mask.

    Items: ``(image (1, h, w) uint8, presence (C,) float32 0/1)`` — a crop
    that misses every defect of a class is labelled defect-free for it.
    """

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._transformed(key)
        return image, (mask == 1).flatten(1).any(dim=1).float()
