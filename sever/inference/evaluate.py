"""Score predictions with the competition metric and the presence figures the seeds report.

The score is the mean Dice over every image-and-class pair (an empty prediction
on an empty mask scores 1), computed by :func:`sever.model.metric.dice_per_image`.
Beside it, per class: the mean Dice, and the image-level presence confusion
(a class is *present* in an image when its mask has any pixel): true and false
positive images, false negatives, true negatives, precision and recall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.data_loader.data_loaders import SPLIT_KEYS, SteelDataLoader, config_split
from sever.data_loader.datasets import image_size, list_images
from sever.exceptions import ConfigError, DataError
from sever.inference.outputs import SavedProbabilities
from sever.inference.predictor import Predictor, class_labels
from sever.model.metric import dice_per_image
from sever.model.postprocess import PostProcessing
from sever.registries import DATA_LOADERS
from sever.utils.config import OutputClasses, output_classes
from sever.utils.registry import parse_spec

logger = logging.getLogger(__name__)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with NaN where the denominator is 0 (undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


@dataclass
class Evaluation:
    """Per image and class scores of a set of predictions.

    Attributes:
        image_ids: the N images scored.
        dice: float64 ``(N, C)`` competition Dice of each image and class.
        predicted: bool ``(N, C)``: the prediction has pixels of the class.
        actual: bool ``(N, C)``: the ground truth has pixels of the class.
        class_names: C labels for the report (:func:`~sever.inference.predictor.class_labels`).
    """

    image_ids: list[str]
    dice: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    class_names: list[str]

    @property
    def mean_dice(self) -> float:
        """The competition score: the mean over every image-and-class pair."""
        return float(self.dice.mean())

    @property
    def class_dice(self) -> np.ndarray:
        """``(C,)`` mean Dice of each class over the images."""
        return self.dice.mean(axis=0)

    def confusion(self) -> np.ndarray:
        """int64 ``(C, 2, 2)`` presence confusion per class: ``[[TN, FP], [FN, TP]]`` (rows: truth)."""
        pred, true = self.predicted, self.actual
        return np.stack(
            [
                np.stack([(~true & ~pred).sum(0), (~true & pred).sum(0)], axis=-1),
                np.stack([(true & ~pred).sum(0), (true & pred).sum(0)], axis=-1),
            ],
            axis=1,
        ).astype(np.int64)

    @property
    def false_positive_images(self) -> np.ndarray:
        """``(C,)`` images predicted to have the class that do not."""
        return self.confusion()[:, 0, 1]

    def precision(self) -> np.ndarray:
        """``(C,)`` presence precision ``TP / (TP + FP)``; NaN when the class is never predicted."""
        confusion = self.confusion()
        return _ratio(confusion[:, 1, 1], confusion[:, 1, 1] + confusion[:, 0, 1])

    def recall(self) -> np.ndarray:
        """``(C,)`` presence recall ``TP / (TP + FN)``; NaN when the class is never present."""
        confusion = self.confusion()
        return _ratio(confusion[:, 1, 1], confusion[:, 1, 1] + confusion[:, 1, 0])

    def table(self) -> str:
        """A plain-text report: the score, then one line per class."""
        confusion, precision, recall = self.confusion(), self.precision(), self.recall()
        width = max(len("class"), *(len(name) for name in self.class_names))
        header = f"{'class':<{width}}  {'Dice':>6}  {'present':>7}  {'TP':>5}  {'FP':>5}  {'FN':>5}  {'TN':>5}  " \
                 f"{'precision':>9}  {'recall':>6}"
        lines = [
            f"mean Dice {self.mean_dice:.4f} over {len(self.image_ids)} images x {len(self.class_names)} classes",
            "",
            header,
        ]
        for c, name in enumerate(self.class_names):
            (tn, fp), (fn, tp) = confusion[c]
            lines.append(
                f"{name:<{width}}  {self.class_dice[c]:>6.4f}  {tp + fn:>7}  {tp:>5}  {fp:>5}  {fn:>5}  "
                f"{tn:>5}  {_fmt(precision[c]):>9}  {_fmt(recall[c]):>6}"
            )
        lines.append(f"{'mean':<{width}}  {self.mean_dice:>6.4f}")
        lines += ["", "present: images with the class in the ground truth; TP/FP/FN/TN: images by predicted and true",
                  "presence (FP: false positive images); precision/recall of presence ('-': undefined, 0/0)"]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


@dataclass
class Scoreboard:
    """Accumulates :class:`Evaluation` rows one batch at a time."""

    class_names: list[str]
    image_ids: list[str] = field(default_factory=list)
    rows: list[tuple[list, list, list]] = field(default_factory=list)  # per image: Dice, predicted, present

    def update(self, names: Sequence[str], pred: Tensor, truth: Tensor) -> None:
        """Score a batch: ``names`` (B,), masks ``pred`` and ``truth`` ``(B, C, H, W)`` (nonzero = defect)."""
        # Python lists, not small arrays: see TuneStatistics (small long-lived allocations fragment the heap)
        dice = dice_per_image(pred, truth).tolist()
        predicted, actual = (pred.flatten(2) != 0).any(-1).tolist(), (truth.flatten(2) != 0).any(-1).tolist()
        self.image_ids += list(names)
        self.rows += zip(dice, predicted, actual)

    def result(self) -> Evaluation:
        if not self.rows:
            raise DataError("nothing to evaluate: no images")
        dice, predicted, actual = (np.array(parts, dtype=dtype) for parts, dtype in
                                   zip(zip(*self.rows), (np.float64, bool, bool)))
        return Evaluation(list(self.image_ids), dice, predicted, actual, list(self.class_names))


def masks_tensor(masks_hwc: np.ndarray) -> Tensor:
    """A decoded ``(H, W, C)`` uint8 mask as a ``(1, C, H, W)`` tensor (no copy)."""
    return torch.from_numpy(masks_hwc).permute(2, 0, 1).unsqueeze(0)


def truth_batch(annotations: Annotations, names: Sequence[str], shape: tuple[int, int]) -> Tensor:
    """The true masks of ``names`` (all of size ``shape``) as uint8 ``(B, C, H, W)``."""
    return torch.cat([masks_tensor(annotations.decode(annotations.index[name], shape)) for name in names])


# ----------------------------------------------------------------------------- CSV against CSV


def parse_size(text: str) -> tuple[int, int]:
    """``"256x1600"`` -> ``(256, 1600)``."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise ConfigError(f"--size: expected HEIGHTxWIDTH, e.g. 256x1600, got {text!r}")
    return int(height), int(width)


def _aligned_annotations(pred_csv: Path, truth_csv: Path, classes: int,
                         image_ids: Sequence[str] | None) -> tuple[Annotations, Annotations]:
    """Both CSVs over one image list: ``image_ids``, or every image either CSV lists."""
    if image_ids is None:
        image_ids = read_rle_csv(truth_csv, classes).image_ids
        image_ids = read_rle_csv(pred_csv, classes, image_ids=image_ids).image_ids
    pred = read_rle_csv(pred_csv, classes, image_ids=image_ids)
    truth = read_rle_csv(truth_csv, classes, image_ids=image_ids)
    for annotations in (pred, truth):
        missing = annotations.ids_not_in(image_ids)
        if missing:
            raise DataError(f"{annotations.source}: {len(missing)} ImageId(s) are not in the image folder, "
                            f"e.g. {missing[0]!r}")
    return pred, truth


def evaluate_csv(pred_csv: str | Path, truth_csv: str | Path, classes: int = 4, image_dir: str | Path | None = None,
                 size: tuple[int, int] | None = None, class_names: Sequence[str] | None = None) -> Evaluation:
    """Score a submission CSV against a labelled CSV (either Kaggle format, each).

    Args:
        pred_csv, truth_csv: the predictions and the ground truth.
        classes: number of classes (ClassIds 1..classes).
        image_dir: the images; they define the image list (images neither CSV mentions
            are defect-free) and each image's size.
        size: ``(H, W)`` of every image, when ``image_dir`` is not given; the images are
            then every ImageId either CSV lists.
    """
    if image_dir is None and size is None:
        raise ConfigError("give the image folder (--images DIR) or the image size (--size HxW)")
    image_ids = list_images(image_dir) if image_dir is not None else None
    pred, truth = _aligned_annotations(Path(pred_csv), Path(truth_csv), classes, image_ids)
    board = Scoreboard(class_labels(class_names, classes))
    for position, name in enumerate(pred.image_ids):
        shape = size if size is not None else image_size(Path(image_dir) / name)
        board.update([name], masks_tensor(pred.decode(position, shape)), masks_tensor(truth.decode(position, shape)))
    return board.result()


# ----------------------------------------------------------------------------- a run's validation split


def validation_split(config: dict, outputs: OutputClasses | None = None) -> tuple[list[Path], Annotations]:
    """The image paths and annotations of a run's validation split, rebuilt from its config.

    The split is a deterministic function of the data and the config's seed, so this is
    the split the run validated on. Only the data folder is read: no datasets, loaders
    or pre-flight check are built. The annotations hold the classes of ``outputs``
    (default: the run's own, its ``train_classes``; a composition's: every class).

    Raises:
        ConfigError: the run is no SteelDataLoader run, or it held out no images.
    """
    name, args = parse_spec(config["data_loader"], "data_loader")
    if DATA_LOADERS.get(name, "data_loader.type") is not SteelDataLoader:
        raise ConfigError(f"data_loader.type: the validation split of a {name} run is not read here; "
                          f"--split val scores SteelDataLoader runs")
    split = config_split(args, classes=config["classes"], class_names=config.get("class_names"),
                         seed=config["seed"])
    annotations, paths = split.valid()
    if not paths:
        raise ConfigError(f"run {config['name']!r} held out no validation images (validation_split: 0; a study's "
                          "final model trains on all of them): score a study out-of-fold with sever evaluate -m STUDY "
                          "--oof, or predict other labelled images and score them with sever evaluate --pred")
    return paths, annotations.for_outputs(outputs or output_classes(config))


def _split_of(config: dict) -> tuple:
    """What decides a run's split: its data loader's type, split arguments and seed (not its train_classes)."""
    name, args = parse_spec(config["data_loader"], "data_loader")
    return name, {key: args.get(key) for key in SPLIT_KEYS}, config["seed"]


def predictor_split(predictor: Predictor) -> tuple[list[Path], Annotations]:
    """The validation split of the predictor's first model, with the prediction's classes
    (a warning if other models split differently)."""
    first = predictor.models[0].config
    for loaded in predictor.models[1:] + predictor.classifiers:
        if _split_of(loaded.config) != _split_of(first):
            logger.warning("%s was trained on another split: it may have seen some of these validation images",
                           loaded.source)
    return validation_split(first, predictor.outputs)


def evaluate_predictions(predictor: Predictor, settings: PostProcessing, paths: Sequence[Path],
                         annotations: Annotations, batch_size: int = 8, num_workers: int = 2) -> Evaluation:
    """Predict ``paths``, post-process with ``settings`` and score against ``annotations``."""
    board = Scoreboard(predictor.class_names)
    for batch in predictor.predict_files(paths, batch_size, num_workers, description="evaluate"):
        masks = settings.apply(batch.probs, batch.class_probs)
        truth = truth_batch(annotations, batch.names, tuple(batch.images.shape[-2:])).to(masks.device)
        board.update(batch.names, masks, truth)
    return board.result()


def check_same_classes(saved: Sequence[SavedProbabilities]) -> None:
    """DataError unless every source of saved probabilities has one class count and the same classifier use."""
    first = saved[0]
    for other in saved[1:]:
        if (other.classes, other.gated) != (first.classes, first.gated):
            raise DataError(
                f"{other.directories[0]} holds {other.classes} classes (classifier probabilities: {other.gated}) "
                f"but {first.directories[0]} {first.classes} ({first.gated}): out-of-fold maps of one study "
                f"must come from models of one class count")


def evaluate_saved(sources: Sequence[tuple[SavedProbabilities, Annotations]], settings: PostProcessing,
                   class_names: Sequence[str], batch_size: int = 8) -> Evaluation:
    """Post-process the union of saved probabilities with ``settings`` and score each against its true masks."""
    check_same_classes([saved for saved, _ in sources])
    board = Scoreboard(list(class_names))
    for saved, truth in sources:
        for batch in saved.batches(batch_size):
            masks = settings.apply(batch.probs, batch.class_probs)
            board.update(batch.names, masks, truth_batch(truth, batch.names, tuple(masks.shape[-2:])))
    return board.result()
