"""Data loaders built from the ``data_loader`` block of an experiment.

::

    data_loader:
      type: SteelDataLoader
      args:
        data_dir: data/raw/severstal-steel-defect-detection
        batch_size: 16
        validation_split: 0.2          # fraction (or a count) held out, stratified
        folds: 5                       # optional: K-fold split instead (validation_split is ignored)
        fold: 0                        # the fold validated on, 0..folds-1 (sever train --folds sets both)
        split_file: STUDY/splits.json  # optional: the saved fold of every image (a study's folds set it)
        num_workers: 4
        check: quick                   # pre-flight data check: quick | full | off
        train_classes: [3]             # optional: train on these ClassIds only (or `any`: one union mask)
        pseudo_csv: pseudo.csv         # optional pseudo-labels for pseudo_images
        sampler:                       # optional; default: shuffle every epoch
          type: WeightedFixedBatchSampler
          args: {weights: [0.88, 0.12]}   # 12% pseudo-labelled samples per batch
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from sever.data_loader.annotations import Annotations
from sever.data_loader.augmentation import PAD_LABEL, SIZE_MULTIPLE
from sever.data_loader.checks import image_header_size, preflight
from sever.data_loader.datasets import ClassificationDataset, SegmentationDataset
from sever.data_loader.sampling import allocate, class_balance_groups
from sever.data_loader.sources import DataFolder, mask_source, read_csv_folder
from sever.exceptions import ConfigError, DataError
from sever.registries import DATA_LOADERS, SAMPLERS
from sever.utils.config import OutputClasses, parse_train_classes

logger = logging.getLogger(__name__)


DATASETS = {"segmentation": SegmentationDataset, "classification": ClassificationDataset}
SPLIT_KEYS = ("data_dir", "validation_split", "csv", "images", "format", "masks", "generate_demo", "folds", "fold",
              "split_file")
"""The ``data_loader.args`` of a SteelDataLoader that decide its training/validation split."""


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


def fold_assignment(has_defect: np.ndarray, folds: int, seed: int,
                    class_names: list[str] | None = None) -> np.ndarray:
    """Assign every image to one of ``folds`` validation folds, stratified by its classes.

    Images are grouped by their class-presence pattern (which classes they show); a
    pattern with fewer than ``folds`` images is merged with the others of its defect
    count, and what is still too rare forms one last group, so every group can reach
    every fold. Within each group the images are shuffled by ``seed`` and dealt to the
    folds in turn, continuing where the previous group stopped, so fold sizes differ by
    at most one image.

    Args:
        has_defect: ``(N, C)`` bool, which classes each image shows.
        folds: K >= 2.
        seed: makes the assignment reproducible.
        class_names: C labels for the warning about classes rarer than ``folds``.

    Returns:
        ``(N,)`` int fold of each image, in ``0..folds-1``.

    Raises:
        ConfigError: ``folds`` is not an integer >= 2 or exceeds the number of images.
    """
    has_defect = np.asarray(has_defect, dtype=bool)
    n, classes = has_defect.shape
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"data_loader.args.folds: must be an integer >= 2, got {folds!r}")
    if folds > n:
        raise ConfigError(f"data_loader.args.folds: {folds} folds for {n} images; at most {n}")
    per_class = has_defect.sum(axis=0)
    for c in np.flatnonzero(per_class < folds):
        name = class_names[c] if class_names else f"class {c + 1}"
        logger.warning("data_loader.args.folds: %s has %d image(s) for %d folds: %d fold(s) validate without it",
                       name, per_class[c], folds, folds - per_class[c])
    patterns = has_defect.astype(np.int64) @ (1 << np.arange(classes, dtype=np.int64))
    groups = _merge_rare(patterns, np.minimum(has_defect.sum(axis=1), 3), folds)
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, dtype=np.int64)
    start = 0
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        assignment[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return assignment


def _merge_rare(patterns: np.ndarray, n_defects: np.ndarray, folds: int) -> np.ndarray:
    """Group labels: each pattern with >= ``folds`` images, else its defect count's, else one rare group (-1)."""
    groups = patterns.copy()
    values, counts = np.unique(patterns, return_counts=True)
    rare = np.isin(patterns, values[counts < folds])
    groups[rare] = -2 - n_defects[rare]  # below every pattern (patterns are >= 0)
    values, counts = np.unique(groups[rare], return_counts=True)
    groups[rare & np.isin(groups, values[counts < folds])] = -1
    return groups


def fold_split(has_defect: np.ndarray, folds: int, fold: int, seed: int,
               class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, valid_indices)`` of fold ``fold`` of :func:`fold_assignment`, each sorted.

    Raises:
        ConfigError: as :func:`fold_assignment`; ``fold`` outside ``0..folds-1``.
    """
    return _fold_indices(fold_assignment(has_defect, folds, seed, class_names), folds, fold)


def _fold_indices(assignment: np.ndarray, folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, valid_indices)`` of fold ``fold`` given each image's fold ``(N,)``."""
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
        raise ConfigError(f"data_loader.args.fold: must be one of 0..{folds - 1} (folds: {folds}), got {fold!r}")
    return np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)


def saved_fold_split(paths: list[Path], data_dir: Path, split_file: str | Path, folds: int,
                     fold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, valid_indices)`` of fold ``fold`` of a study's saved split (``splits.json``).

    Raises:
        DataError: the file is invalid or does not match the images (:func:`sever.study.splits.fold_of_each`).
    """
    from sever.study.splits import fold_of_each, image_key

    assignment = fold_of_each(Path(split_file), [image_key(path, data_dir) for path in paths], folds)
    return _fold_indices(assignment, folds, fold)


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


@dataclass(frozen=True)
class Split:
    """A masks dataset's images and which of them train and which validate.

    Attributes:
        annotations: Annotations ``(N, C)`` of every image, in the source's order.
        paths: the N image paths, aligned with ``annotations``.
        train_indices, valid_indices: sorted int positions into both.
    """

    annotations: Annotations
    paths: list[Path]
    train_indices: np.ndarray
    valid_indices: np.ndarray

    def train(self) -> tuple[Annotations, list[Path]]:
        """The training images' annotations ``(N_train, C)`` and paths."""
        return self._take(self.train_indices)

    def valid(self) -> tuple[Annotations, list[Path]]:
        """The validation images' annotations ``(N_valid, C)`` and paths."""
        return self._take(self.valid_indices)

    def _take(self, indices: np.ndarray) -> tuple[Annotations, list[Path]]:
        return self.annotations.subset(indices), [self.paths[i] for i in indices]


def read_split(data_dir: str | Path, validation_split: float | int = 0.2, csv: str = "train.csv",
               images: str = "train_images", format: str = "kaggle", masks: str = "train_masks",
               generate_demo: bool = False, folds: int | None = None, fold: int = 0,
               split_file: str | None = None, *, classes: int, class_names: list[str] | None = None,
               seed: int) -> Split:
    """Read a masks dataset through its data source and split it, without datasets or loaders.

    The arguments are :class:`SteelDataLoader`'s of the same names; the split is a
    deterministic function of the data, ``validation_split`` (or ``folds`` and
    ``fold``, which replace it: :func:`fold_split`) and ``seed``; with ``folds`` and a
    ``split_file`` (a study's ``splits.json``) the folds are the saved ones instead
    (:func:`saved_fold_split`).

    Raises:
        ConfigError: an unknown ``format``, a ``validation_split`` that leaves no training images,
            more ``folds`` than images or a ``fold`` outside ``0..folds-1``.
        DataError: what the source finds wrong with the folder.
    """
    root = Path(data_dir)
    if generate_demo:
        _ensure_demo_data(root, classes)
    source = mask_source(format, "data_loader.args.format")
    annotations, paths = source.read(DataFolder(root, classes, class_names, images=images, csv=csv, masks=masks))
    if folds is not None and split_file is not None:
        return Split(annotations, paths, *saved_fold_split(paths, root, split_file, folds, fold))
    if folds is not None:
        return Split(annotations, paths, *fold_split(annotations.has_defect(), folds, fold, seed, class_names))
    return Split(annotations, paths, *stratified_split(annotations.n_defects(), validation_split, seed))


def config_split(args: Mapping[str, Any], *, classes: int, class_names: list[str] | None, seed: int) -> Split:
    """The split a SteelDataLoader with ``data_loader.args`` ``args`` trains and validates on."""
    return read_split(**{key: args[key] for key in SPLIT_KEYS if key in args}, classes=classes,
                      class_names=class_names, seed=seed)


def padded_size(height: int, width: int) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of 32, the size a batch holding the image is padded to."""
    return height + -height % SIZE_MULTIPLE, width + -width % SIZE_MULTIPLE


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image (1, h, w), target)`` samples of any sizes into one batch.

    Images and masks are padded at the bottom and right to the batch's largest
    height and width rounded up to a multiple of 32 (:func:`padded_size`):
    images with 0, masks ``(C, h, w)`` with ``PAD_LABEL`` in every channel, so
    the trainer knows every image's own pixels. Targets without spatial
    dimensions (e.g. ``(C,)`` presence) are stacked as they are.

    Returns:
        ``images (B, 1, H, W)`` uint8 and ``targets (B, C, H, W)`` (or ``(B, C)``).
    """
    images, targets = zip(*batch)
    height, width = padded_size(max(i.shape[-2] for i in images), max(i.shape[-1] for i in images))
    spatial = targets[0].ndim == 3
    if all(i.shape[-2:] == (height, width) for i in images):
        return torch.stack(images), torch.stack(targets)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    out_targets = (targets[0].new_full((len(targets), targets[0].shape[0], height, width), PAD_LABEL)
                   if spatial else torch.stack(targets))
    for n, (image, target) in enumerate(batch):
        h, w = image.shape[-2:]
        out_images[n, :, :h, :w] = image
        if spatial:
            out_targets[n, :, :h, :w] = target
    return out_images, out_targets


def size_grouped_batches(sizes: list[tuple[int, int]], indices: range, batch_size: int) -> list[list[int]]:
    """Batches of ``indices`` whose images pad to one size (:func:`padded_size`), at most ``batch_size`` each.

    Every image is then padded exactly as it would be alone, so validation
    scores do not depend on the batch size. Groups come in the order of their
    first image and keep the order of ``indices`` inside.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index in indices:
        groups.setdefault(padded_size(*sizes[index]), []).append(index)
    return [group[start:start + batch_size] for group in groups.values()
            for start in range(0, len(group), batch_size)]


def check_shards(n_train: int, n_valid: int, batch_size: int, world_size: int) -> None:
    """DataError unless every process gets a full training batch and at least one validation image."""
    if n_train < batch_size * world_size:
        raise DataError(
            f"the training split has {n_train} images, fewer than data_loader.args.batch_size "
            f"({batch_size}) x {world_size} process(es): no complete batch can be formed. "
            f"Lower the batch size or validation_split."
        )
    if 0 < n_valid < world_size:
        raise DataError(f"{n_valid} validation images cannot be shared by {world_size} processes")


def make_loaders(train_dataset, valid_dataset, groups: list[np.ndarray], *, sampler: dict | str | None,
                 batch_size: int, valid_batch_size: int | None, num_workers: int, pin_memory: bool, seed: int,
                 rank: int, world_size: int, collate_fn: Callable | None = None,
                 valid_sizes: list[tuple[int, int]] | None = None) -> tuple[DataLoader, DataLoader | None]:
    """The training and validation loaders of any task's datasets.

    Training batches come from the batch sampler ``sampler`` (``{type, args}``; default
    ``ShuffleBatchSampler``) over the index ``groups``, each index paired with its
    augmentation seed (:class:`SeededBatches`); this rank gets ``batch_size`` images of
    each global batch. Validation takes every ``world_size``-th image from ``rank`` in
    batches of ``valid_batch_size`` (default ``batch_size``); None without a validation set.
    With ``valid_sizes`` (each validation image's ``(H, W)``), validation batches
    hold images of one padded size (:func:`size_grouped_batches`). ``collate_fn``
    defaults to :func:`pad_collate`.
    """
    batch_sampler = SAMPLERS.build(sampler or "ShuffleBatchSampler", "data_loader.args.sampler",
                                   groups=groups, batch_size=batch_size, seed=seed,
                                   rank=rank, world_size=world_size)
    if num_workers > 0:
        # OpenCV's thread pool does not survive fork(): a worker touching it can
        # deadlock. Parallelism comes from the workers (torch already gives each
        # one a single thread), so OpenCV runs single-threaded.
        cv2.setNumThreads(0)
    common = dict(num_workers=num_workers, pin_memory=pin_memory and torch.cuda.is_available(),
                  persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                  collate_fn=collate_fn or pad_collate)
    train_loader = DataLoader(train_dataset, batch_sampler=SeededBatches(batch_sampler, seed), **common)
    if valid_dataset is None:
        return train_loader, None
    shard = range(rank, len(valid_dataset), world_size)
    if valid_sizes is None:
        batching = dict(batch_size=valid_batch_size or batch_size, sampler=shard)
    else:
        batching = dict(batch_sampler=size_grouped_batches(valid_sizes, shard, valid_batch_size or batch_size))
    return train_loader, DataLoader(valid_dataset, **batching, **common)


@DATA_LOADERS.register
class SteelDataLoader:
    """Train and validation loaders over a Kaggle-layout steel dataset.

    Args:
        data_dir: folder holding ``images`` and ``csv`` (and the pseudo-label files).
        batch_size: images per training batch.
        validation_split: fraction (float) or count (int) of images held out,
            stratified by number of defect classes per image; 0 for none.
        folds, fold: a stratified K-fold split instead (``folds: K``), validating on
            fold ``fold`` (0..K-1) and training on the others; ``validation_split`` is
            then ignored (:func:`fold_split`). ``sever train --folds K`` sets both.
        split_file: with ``folds``: a study's ``splits.json``, the saved fold of every image,
            used instead of the seed's split (:func:`saved_fold_split`); a study's folds set it.
        num_workers: loader processes (0 loads in the main process).
        csv: masks CSV in either Kaggle format, relative to ``data_dir``.
        images: image folder relative to ``data_dir``.
        format: the data source of the masks, by name (:mod:`sever.data_loader.sources`):
            ``kaggle`` (masks from ``csv``), ``mask_folder`` (PNG masks in ``masks``,
            see :mod:`sever.data_loader.mask_folder`) or any other registered masks source.
        masks: the mask folder relative to ``data_dir`` (``format: mask_folder``).
        train_classes: train on some classes only: a list of ClassIds (1-based, as in the CSV;
            the network gets one output per listed class, in ascending order), or ``any``
            (one output whose mask is the union of every class's). The split is made over
            every class, so runs that differ only here validate on the same images (and
            compose with ``sever predict -m A -m B``). None: every class.
        pseudo_csv: optional pseudo-label CSV for ``pseudo_images`` (training only); the
            images it lists are the pseudo-labelled ones (``sever pseudo-label`` writes it).
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
        mask_cache, cache_dir: removed (the decoded-mask cache did not pay); a config
            that still sets them gets a ConfigError saying so.
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
                 masks: str = "train_masks", check: str = "quick", mask_cache: None = None,
                 cache_dir: None = None, folds: int | None = None, fold: int = 0, split_file: str | None = None,
                 train_classes: list[int] | str | None = None, *, classes: int,
                 class_names: list[str] | None = None, transforms, seed: int, task: str = "segmentation",
                 rank: int = 0, world_size: int = 1):
        _reject_removed(mask_cache=mask_cache, cache_dir=cache_dir)
        _check_positive("batch_size", batch_size)
        if num_workers < 0:
            raise ConfigError(f"data_loader.args.num_workers: must be >= 0, got {num_workers}")
        self.data_dir = Path(data_dir)
        split = read_split(self.data_dir, validation_split, csv, images, format, masks, generate_demo, folds, fold,
                           split_file, classes=classes, class_names=class_names, seed=seed)
        outputs = OutputClasses(classes, parse_train_classes(train_classes, classes))
        if not outputs.complete:
            logger.info("train_classes: the network predicts %s of %d", outputs.describe(), classes)
        sources = [(split.annotations, split.paths)]
        (train_ann, train_paths), (valid_ann, valid_paths) = split.train(), split.valid()
        train_ann, valid_ann = train_ann.for_outputs(outputs), valid_ann.for_outputs(outputs)
        groups = None
        if pseudo_csv is not None:
            pseudo_ann, pseudo_paths = read_csv_folder(self.data_dir / pseudo_images, self.data_dir / pseudo_csv,
                                                       classes, listed_only=True)
            sources.append((pseudo_ann, pseudo_paths))
            pseudo_ann = pseudo_ann.for_outputs(outputs)
            groups = [np.arange(len(train_ann)), len(train_ann) + np.arange(len(pseudo_ann))]
            train_ann, train_paths = train_ann.concat(pseudo_ann), train_paths + pseudo_paths
            logger.info("pseudo-labels: %d images from %s", len(pseudo_ann), pseudo_csv)
        check_shards(len(train_ann), len(valid_ann), batch_size, world_size)
        preflight(sources, check, getattr(transforms, "crop_size", None))
        dataset_class = DATASETS[task]
        self.train_dataset = dataset_class(train_paths, train_ann, transforms.build(train=True))
        self.valid_dataset = (
            dataset_class(valid_paths, valid_ann, transforms.build(train=False))
            if len(valid_ann)
            else None
        )
        if groups is None:
            groups = class_balance_groups(train_ann.has_defect()) if sampler else [np.arange(len(train_ann))]
        self.train_loader, self.valid_loader = make_loaders(
            self.train_dataset, self.valid_dataset, groups, sampler=sampler, batch_size=batch_size,
            valid_batch_size=valid_batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed,
            rank=rank, world_size=world_size, valid_sizes=_sizes(valid_paths))
        logger.info(
            "data: %d training images (%d batches of %d), %d validation images, from %s",
            len(self.train_dataset), len(self.train_loader), batch_size, len(valid_ann), self.data_dir,
        )


def _sizes(paths: list[Path]) -> list[tuple[int, int]]:
    """``(H, W)`` of each image from its header; ``(0, 0)`` for a bad file, which fails when it loads
    (with ``check: off`` that is where the user chose to find it)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(image_header_size(path))
        except DataError:
            sizes.append((0, 0))
    return sizes


def _ensure_demo_data(data_dir: Path, classes: int) -> None:
    from sever.data_loader.demo import make_demo_data

    make_demo_data(data_dir, classes=classes)


def _reject_removed(**options: Any) -> None:
    """ConfigError for a removed option a config still sets (kept as arguments so the message is this one)."""
    for name, value in options.items():
        if value is not None:
            raise ConfigError(
                f"data_loader.args.{name}: the decoded-mask cache was removed (warm, it gave about 2% more "
                f"samples/s on the demo data; see CHANGELOG.rst); delete {name} from the config"
            )


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"data_loader.args.{name}: must be a positive integer, got {value!r}")
