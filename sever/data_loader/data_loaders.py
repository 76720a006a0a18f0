"""Data loaders built from the ``data_loader`` block of an experiment.

::

    data_loader:
      type: SteelDataLoader
      args:
        data_dir: data/raw/severstal-steel-defect-detection
        batch_size: 16
        validation_split: 0.2          # fraction (or a count) held out, stratified
        num_workers: 4
        check: quick                   # pre-flight data check: quick | full | off
        mask_cache: disk               # keep decoded masks: off | memory | disk
        pseudo_csv: pseudo.csv         # optional pseudo-labels for pseudo_images
        sampler:                       # optional; default: shuffle every epoch
          type: WeightedFixedBatchSampler
          args: {weights: [0.88, 0.12]}   # 12% pseudo-labelled samples per batch
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from sever.data_loader.checks import preflight
from sever.data_loader.datasets import (
    ClassificationDataset,
    SegmentationDataset,
    image_size,
    list_images,
)
from sever.data_loader.mask_cache import open_mask_cache
from sever.data_loader.mask_folder import read_mask_folder
from sever.data_loader.process import Annotations, read_rle_csv
from sever.data_loader.sampling import SAMPLERS, allocate, class_balance_groups
from sever.exceptions import ConfigError, DataError
from sever.registries import DATA_LOADERS

logger = logging.getLogger(__name__)


DATASETS = {"segmentation": SegmentationDataset, "classification": ClassificationDataset}
SOURCE_FORMATS = ("kaggle", "mask_folder")


def stratified_split(n_defects: np.ndarray, validation: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into train and validation, stratified by defect count.

    Args:
        n_defects: ``(N,)`` number of defect classes present in each image;
            counts of 3 or more form one stratum.
        validation: a fraction in ``[0, 1)`` or a number of images; the
            held-out count is exact and shared across strata by largest remainder.
        seed: makes the split reproducible.

    Returns:
        ``(train_indices, valid_indices)``, each sorted.
    """
    n = len(n_defects)
    fraction = validation / n if isinstance(validation, int) and not isinstance(validation, bool) else validation
    if not 0 <= fraction < 1:
        raise ConfigError(f"data_loader.args.validation_split: {validation} leaves no training images out of {n}")
    rng = np.random.default_rng(seed)
    strata, sizes = np.unique(np.minimum(np.asarray(n_defects), 3), return_counts=True)
    per_stratum = allocate(sizes / max(n, 1), int(round(fraction * n)))
    valid = []
    for stratum, take in zip(strata, per_stratum):
        members = np.flatnonzero(np.minimum(n_defects, 3) == stratum)
        valid.append(rng.permutation(members)[:take])
    valid_idx = np.sort(np.concatenate(valid)) if valid else np.array([], dtype=int)
    train_idx = np.setdiff1d(np.arange(n), valid_idx)
    return train_idx, valid_idx


class SeededBatches:
    """Pairs each index of a batch sampler with an augmentation seed.

    Seeds are drawn from ``(seed, epoch, batch)``, so every sample's augmentation
    is the same in a resumed run and whichever worker loads it.
    """

    def __init__(self, batch_sampler, seed: int):
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.batch_sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for number, batch in enumerate(self.batch_sampler, start=self.start_batch):
            rng = np.random.default_rng([self.seed, self.epoch, number])
            seeds = rng.integers(0, 2**31 - 1, size=len(batch))
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]


@DATA_LOADERS.register
class SteelDataLoader:
    """Train and validation loaders over a Kaggle-layout steel dataset.

    Args:
        data_dir: folder holding ``images`` and ``csv`` (and the pseudo-label files).
        batch_size: images per training batch.
        validation_split: fraction (float) or count (int) of images held out,
            stratified by number of defect classes per image; 0 for none.
        num_workers: loader processes (0 loads in the main process).
        csv: masks CSV in either Kaggle format, relative to ``data_dir``.
        images: image folder relative to ``data_dir``.
        format: ``kaggle`` (masks from ``csv``) or ``mask_folder`` (PNG masks in
            ``masks``, see :mod:`sever.data_loader.mask_folder`).
        masks: the mask folder relative to ``data_dir`` (``format: mask_folder``).
        pseudo_csv: optional pseudo-label CSV for ``pseudo_images`` (training only).
        pseudo_images: folder of the pseudo-labelled images.
        sampler: optional ``{type, args}`` of a weighted batch sampler; its groups
            are [train, pseudo] with pseudo-labels, else one per rarest class.
        valid_batch_size: batch size for validation (default ``batch_size``).
        pin_memory: pin host memory when training on CUDA.
        generate_demo: write the synthetic demo dataset into ``data_dir`` first
            if it is not there (``experiments/demo.yml``).
        check: pre-flight check of every image and mask before training
            (``quick``, ``full`` also decodes every image, ``off``); see
            :mod:`sever.data_loader.checks`.
        mask_cache: keep decoded masks between epochs for training and
            validation: ``off``, ``memory`` (in each loader process) or ``disk``
            (``.npy`` files); see :mod:`sever.data_loader.mask_cache`.
        cache_dir: the folder of the disk cache (default
            ``data_dir/.sever-cache/masks``); checked for writing at start-up.
        classes, class_names, transforms, seed, task: supplied by sever from the config.
        rank, world_size: this process's shard in distributed training; every
            rank gets ``batch_size`` images of each global batch and a disjoint
            slice of the validation images.
    """

    def __init__(self, data_dir: str, batch_size: int = 16, validation_split: float | int = 0.2,
                 num_workers: int = 2, csv: str = "train.csv", images: str = "train_images",
                 pseudo_csv: str | None = None, pseudo_images: str = "test_images",
                 sampler: dict | str | None = None, valid_batch_size: int | None = None,
                 pin_memory: bool = True, generate_demo: bool = False, format: str = "kaggle",
                 masks: str = "train_masks", check: str = "quick", mask_cache: str = "off",
                 cache_dir: str | None = None, *, classes: int,
                 class_names: list[str] | None = None, transforms, seed: int, task: str = "segmentation",
                 rank: int = 0, world_size: int = 1):
        _check_positive("batch_size", batch_size)
        if num_workers < 0:
            raise ConfigError(f"data_loader.args.num_workers: must be >= 0, got {num_workers}")
        self.data_dir = Path(data_dir)
        if generate_demo:
            _ensure_demo_data(self.data_dir, classes)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.seed = seed
        self.transforms = transforms
        dataset_class = DATASETS[task]

        if format not in SOURCE_FORMATS:
            raise ConfigError(f"data_loader.args.format: {format!r} is not one of {', '.join(SOURCE_FORMATS)}")
        if format == "kaggle":
            annotations, paths = load_split_source(self.data_dir, images, csv, classes)
        else:
            annotations, paths = read_mask_folder(self.data_dir / images, self.data_dir / masks, classes, class_names)
        sources = [(annotations, paths)]
        train_idx, valid_idx = stratified_split(annotations.n_defects(), validation_split, seed)
        train_ann, train_paths = annotations.subset(train_idx), [paths[i] for i in train_idx]
        groups = None
        if pseudo_csv is not None:
            pseudo_ann, pseudo_paths = load_split_source(self.data_dir, pseudo_images, pseudo_csv, classes)
            sources.append((pseudo_ann, pseudo_paths))
            groups = [np.arange(len(train_ann)), len(train_ann) + np.arange(len(pseudo_ann))]
            train_ann, train_paths = train_ann.concat(pseudo_ann), train_paths + pseudo_paths
            logger.info("pseudo-labels: %d images from %s", len(pseudo_ann), pseudo_csv)
        if len(train_ann) < batch_size * world_size:
            raise DataError(
                f"the training split has {len(train_ann)} images, fewer than data_loader.args.batch_size "
                f"({batch_size}) x {world_size} process(es): no complete batch can be formed. "
                f"Lower the batch size or validation_split."
            )
        if 0 < len(valid_idx) < world_size:
            raise DataError(f"{len(valid_idx)} validation images cannot be shared by {world_size} processes")
        cache = open_mask_cache(mask_cache, cache_dir, self.data_dir / ".sever-cache" / "masks")
        preflight(sources, check, getattr(transforms, "crop_size", None))
        self.train_dataset = dataset_class(train_paths, train_ann, transforms.build(train=True), cache)
        self.valid_dataset = (
            dataset_class([paths[i] for i in valid_idx], annotations.subset(valid_idx), transforms.build(train=False),
                          cache)
            if len(valid_idx)
            else None
        )
        if groups is None:
            groups = class_balance_groups(train_ann.has_defect()) if sampler else [np.arange(len(train_ann))]
        batch_sampler = SAMPLERS.build(sampler or "ShuffleBatchSampler", "data_loader.args.sampler",
                                       groups=groups, batch_size=batch_size, seed=seed,
                                       rank=rank, world_size=world_size)
        self.train_loader = self._loader(self.train_dataset, batch_sampler=SeededBatches(batch_sampler, seed))
        self.valid_loader = (
            self._loader(self.valid_dataset, batch_size=valid_batch_size or batch_size,
                         sampler=range(rank, len(self.valid_dataset), world_size))
            if self.valid_dataset is not None
            else None
        )
        logger.info(
            "data: %d training images (%d batches of %d), %d validation images, from %s",
            len(self.train_dataset), len(batch_sampler), batch_size, len(valid_idx), self.data_dir,
        )

    def _loader(self, dataset, **kwargs: Any) -> DataLoader:
        if self.num_workers > 0:
            # OpenCV's thread pool does not survive fork(): a worker touching it can
            # deadlock. Parallelism comes from the workers (torch already gives each
            # one a single thread), so OpenCV runs single-threaded.
            cv2.setNumThreads(0)
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )


def load_split_source(data_dir: Path, images: str, csv: str, classes: int) -> tuple[Annotations, list[Path]]:
    """Annotations for every image in ``data_dir/images`` and their paths.

    Raises:
        DataError: the folder or CSV is missing, or the CSV names images that are not on disk.
    """
    image_dir = data_dir / images
    names = list_images(image_dir)
    csv_path = data_dir / csv
    if not csv_path.is_file():
        raise DataError(f"masks CSV not found: {csv_path}")
    annotations = read_rle_csv(csv_path, classes, image_ids=names)
    missing = annotations.ids_not_in(names)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{csv_path}: {len(missing)} ImageId(s) have no image in {image_dir}: {shown}")
    return annotations, [image_dir / name for name in annotations.image_ids]


def _ensure_demo_data(data_dir: Path, classes: int) -> None:
    from sever.data_loader.demo import make_demo_data

    make_demo_data(data_dir, classes=classes)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"data_loader.args.{name}: must be a positive integer, got {value!r}")
