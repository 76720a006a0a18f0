"""Detection data: VOC images and boxes, mosaic, augmentation, and the loader built from a config::

    task: detection
    class_names: [crazing, inclusion, patches, pitted_surface, rolled-in_scale, scratches]
    data_loader:
      type: VOCDataLoader
      args: {data_dir: data/raw/neu-det, batch_size: 16, validation_split: 0.1}
    augmentation:
      type: DetectionTransforms
      args: {train_aug: false, mosaic: 0.0}     # the seed's runs: no augmentation, --no-mosaic

Images are read grey (:func:`~sever.data_loader.datasets.read_grey`) and repeated
into three channels for torchvision's RGB backbones. Items are
``(image (3, H, W) float32 in [0, 1], {"boxes": (N, 4) float32, "labels": (N,) int64})``
with boxes as in :mod:`sever.data_loader.voc`; batches are lists (images differ in size).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from sever.data_loader.augmentation import SeverCompose
from sever.data_loader.data_loaders import check_shards, make_loaders, stratified_split
from sever.data_loader.datasets import read_grey
from sever.data_loader.sources import DataFolder
from sever.data_loader.voc import ImageBoxes, check_box, seed_validation_folders
from sever.exceptions import ConfigError, DataError
from sever.registries import DATA_LOADERS, DATA_SOURCES, TRANSFORMS

logger = logging.getLogger(__name__)

MOSAIC_FILL = 114  # grey of the canvas where no image reaches
MOSAIC_MIN_VISIBLE = 0.25  # a clipped box is kept when at least this fraction of it is on its tile


def mosaic(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
           centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile four images around ``centre`` on a canvas the size of the first.

    Image ``i`` fills quadrant ``i`` (top-left, top-right, bottom-left, bottom-right)
    with its corner nearest the centre placed at the centre, without resizing; what
    falls outside its quadrant is cut off and uncovered canvas is grey 114. Boxes are
    shifted with their image, clipped to its quadrant, and dropped when less than a
    quarter of their area (or less than a pixel of width or height) is left.

    Args:
        images: four uint8 ``(H_i, W_i)`` images.
        boxes: four float ``(N_i, 4)`` ``(x0, y0, x1, y1)`` arrays in their image's pixels.
        labels: four int ``(N_i,)`` arrays.
        centre: ``(fx, fy)``, the centre as fractions of the canvas width and height.

    Returns:
        ``(image (H_0, W_0) uint8, boxes (M, 4) float32, labels (M,) int64)``.
    """
    height, width = images[0].shape[:2]
    cx, cy = int(round(centre[0] * width)), int(round(centre[1] * height))
    canvas = np.full((height, width), MOSAIC_FILL, np.uint8)
    out_boxes, out_labels = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)]
    for quadrant, (image, image_boxes, image_labels) in enumerate(zip(images, boxes, labels)):
        right, bottom = quadrant % 2, quadrant // 2
        region = (cx if right else 0, cy if bottom else 0, width if right else cx, height if bottom else cy)
        h, w = image.shape[:2]
        offset = (cx if right else cx - w, cy if bottom else cy - h)
        x0, y0 = max(region[0], offset[0]), max(region[1], offset[1])
        x1, y1 = min(region[2], offset[0] + w), min(region[3], offset[1] + h)
        if x1 <= x0 or y1 <= y0:
            continue  # the quadrant is empty (centre on the border) or the image misses it
        canvas[y0:y1, x0:x1] = image[y0 - offset[1]:y1 - offset[1], x0 - offset[0]:x1 - offset[0]]
        shifted = np.asarray(image_boxes, np.float32).reshape(-1, 4) + np.array(offset * 2, np.float32)
        clipped = np.clip(shifted, [x0, y0, x0, y0], [x1, y1, x1, y1])
        keep = _visible(shifted, clipped)
        out_boxes.append(clipped[keep])
        out_labels.append(np.asarray(image_labels, np.int64)[keep])
    return canvas, np.concatenate(out_boxes).astype(np.float32), np.concatenate(out_labels)


def _visible(boxes: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: clipped boxes at least a pixel wide and high keeping enough of their area."""
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (w >= 1) & (h >= 1) & (w * h >= MOSAIC_MIN_VISIBLE * area)


@TRANSFORMS.register
class DetectionTransforms:
    """Augmentation of grey images with boxes: the seed's ``--use-train-aug`` and ``--mosaic``.

    Args:
        train_aug: flips, brightness/contrast, gamma and one of blur / motion blur /
            median blur (the seed trains without them).
        mosaic: probability that a training sample is a :func:`mosaic` of itself
            and three random others, tiled around a random centre in the middle
            half of the canvas (0: never, the seed's ``--no-mosaic``).

    Pipelines are called as ``pipeline(image=(H, W) uint8, bboxes=(N, 4), labels=(N,))``
    (albumentations' ``pascal_voc`` format: pixel-edge ``x0, y0, x1, y1``) and return
    the same keys, the image a ``(1, h, w)`` uint8 tensor; boxes leaving the image are clipped.
    Evaluation pipelines change nothing: the model resizes images itself.
    """

    normalization = None  # torchvision's detectors normalise their input themselves

    def __init__(self, train_aug: bool = False, mosaic: float = 0.0):
        if isinstance(mosaic, bool) or not isinstance(mosaic, (int, float)) or not 0 <= mosaic <= 1:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {mosaic!r}")
        self.train_aug = bool(train_aug)
        self.mosaic = float(mosaic)

    def build(self, train: bool) -> A.Compose:
        body = self._train_transforms() if train and self.train_aug else []
        if not body:  # boxes pass through unchanged
            return SeverCompose([])
        return SeverCompose(body, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                                           clip=True, min_area=1.0))

    @staticmethod
    def _train_transforms() -> list:
        return [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.RandomGamma(p=0.3),
            A.OneOf([A.Blur(blur_limit=3), A.MotionBlur(blur_limit=3), A.MedianBlur(blur_limit=3)], p=0.3),
        ]


class DetectionDataset(Dataset):
    """Images with their boxes; items as in the module docstring.

    Args:
        paths: image files, aligned with ``boxes``.
        boxes: one :class:`~sever.data_loader.voc.ImageBoxes` per image.
        transforms: a :class:`DetectionTransforms` pipeline.
        mosaic: probability of a mosaic sample (training only).

    Items may be asked for with ``(index, seed)``: the seed fixes the mosaic draw and the augmentation.
    """

    def __init__(self, paths: Sequence[Path], boxes: Sequence[ImageBoxes], transforms, mosaic: float = 0.0):
        if len(paths) != len(boxes):
            raise ValueError(f"{len(paths)} image paths for {len(boxes)} box sets")
        self.paths = [Path(p) for p in paths]
        self.boxes = list(boxes)
        self.transforms = transforms
        self.mosaic = mosaic

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image (H, W) uint8, boxes (N, 4) float32, labels (N,) int64)`` of sample ``index``.

        Raises:
            DataError: the annotation states another size than the image has, or a box
                lies outside the image.
        """
        image = read_grey(self.paths[index])
        annotation = self.boxes[index]
        where = annotation.source or str(self.paths[index])
        if annotation.size is not None and annotation.size != image.shape:
            raise DataError(f"{where}: states a {annotation.size[1]}x{annotation.size[0]} (WxH) image but "
                            f"{self.paths[index]} is {image.shape[1]}x{image.shape[0]}")
        if annotation.size is None:
            for number, box in enumerate(annotation.boxes, start=1):
                check_box(box, box, image.shape, f"{where}: object {number}")
        return image, annotation.boxes, annotation.labels

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        rng = np.random.default_rng(None if seed is None else [seed, 1])
        if self.mosaic and rng.random() < self.mosaic:
            picks = [index, *rng.integers(0, len(self), size=3).tolist()]
            image, boxes, labels = mosaic(*zip(*(self.load(i) for i in picks)), centre=tuple(rng.uniform(0.25, 0.75, 2)))
        else:
            image, boxes, labels = self.load(index)
        if seed is not None:
            self.transforms.set_random_seed(seed)
        out = self.transforms(image=image, bboxes=boxes, labels=labels)
        grey = out["image"][0].float().div_(255)
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1))}
        return grey.expand(3, -1, -1).contiguous(), target


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A batch as ``(images, targets)`` lists: detection images differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


@DATA_LOADERS.register
class VOCDataLoader:
    """Train and validation loaders over a Pascal VOC dataset (boxes), for ``task: detection``.

    Args:
        data_dir: the dataset folder; the layouts of :mod:`sever.data_loader.voc` are found in it.
        batch_size: images per training batch.
        validation_split: fraction or count of images held out, stratified by the number
            of classes in each image; unused when a validation folder pair exists.
        num_workers: loader processes.
        images, annotations: the training folder names (default: found).
        valid_images, valid_annotations: validation folders (default: the seed's
            ``valid_images/`` + ``valid_annotations/`` when there).
        valid_batch_size: validation batch size (default ``batch_size``).
        pin_memory: pin host memory when training on CUDA.
        classes, class_names, transforms, seed, task: supplied by sever; ``class_names``
            (the config's) are the class names used in the XML files.
        rank, world_size: this process's shard in distributed training, as for
            :class:`~sever.data_loader.data_loaders.SteelDataLoader`.
    """

    def __init__(self, data_dir: str, batch_size: int = 4, validation_split: float | int = 0.1,
                 num_workers: int = 2, images: str | None = None, annotations: str | None = None,
                 valid_images: str | None = None, valid_annotations: str | None = None,
                 valid_batch_size: int | None = None, pin_memory: bool = True,
                 *, classes: int, class_names: list[str] | None = None, transforms, seed: int,
                 task: str = "detection", rank: int = 0, world_size: int = 1):
        if task != "detection":
            raise ConfigError(f"data_loader.type: VOCDataLoader reads boxes, for task: detection (not {task})")
        if class_names is None:
            raise ConfigError("class_names: task detection needs the class names used in the annotation files")
        if not isinstance(transforms, DetectionTransforms):
            raise ConfigError(f"augmentation.type: task detection needs DetectionTransforms, "
                              f"not {type(transforms).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"data_loader.args.batch_size: must be a positive integer, got {batch_size!r}")
        self.data_dir = Path(data_dir)
        train_boxes, train_paths, valid_boxes, valid_paths = self._read(
            images, annotations, valid_images, valid_annotations, classes, class_names, validation_split, seed)
        check_shards(len(train_paths), len(valid_paths), batch_size, world_size)
        self.train_dataset = DetectionDataset(train_paths, train_boxes, transforms.build(train=True), transforms.mosaic)
        self.valid_dataset = (DetectionDataset(valid_paths, valid_boxes, transforms.build(train=False))
                              if valid_paths else None)
        self.train_loader, self.valid_loader = make_loaders(
            self.train_dataset, self.valid_dataset, [np.arange(len(train_paths))], sampler=None,
            batch_size=batch_size, valid_batch_size=valid_batch_size, num_workers=num_workers,
            pin_memory=pin_memory, seed=seed, rank=rank, world_size=world_size, collate_fn=collate_detection)
        logger.info("data: %d training images (%d boxes), %d validation images, from %s", len(train_paths),
                    sum(len(b) for b in train_boxes), len(valid_paths), self.data_dir)

    def _read(self, images, annotations, valid_images, valid_annotations, classes, class_names, validation_split,
              seed):
        """``(train boxes, train paths, valid boxes, valid paths)``: from valid folders, or a stratified split."""
        voc = DATA_SOURCES.get("voc", "data_loader.type")
        boxes, paths = voc.read(DataFolder(self.data_dir, classes, class_names, images=images,
                                           annotations=annotations))
        if valid_images is None and valid_annotations is None:
            valid_images, valid_annotations = seed_validation_folders(self.data_dir, images, annotations) or (None, None)
        if valid_images is not None or valid_annotations is not None:
            valid_boxes, valid_paths = voc.read(DataFolder(self.data_dir, classes, class_names, images=valid_images,
                                                           annotations=valid_annotations))
            return boxes, paths, valid_boxes, valid_paths
        n_classes = np.array([len(np.unique(b.labels)) for b in boxes])
        train_idx, valid_idx = stratified_split(n_classes, validation_split, seed)
        return ([boxes[i] for i in train_idx], [paths[i] for i in train_idx],
                [boxes[i] for i in valid_idx], [paths[i] for i in valid_idx])
