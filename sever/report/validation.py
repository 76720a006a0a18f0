"""Score a run's checkpoint on (part of) its validation split for the report.

One pass of the existing :class:`~sever.inference.predictor.Predictor` over the
chosen images feeds the competition scoring
(:class:`~sever.inference.evaluate.Scoreboard`), the threshold search of
``sever tune`` (:class:`~sever.inference.tune.TuneStatistics`) and the
image-size and defect-size distributions; a second pass over the few best and
worst images draws them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from sever.data_loader.annotations import Annotations
from sever.inference.checkpoints import open_checkpoint
from sever.inference.evaluate import Evaluation, Scoreboard, truth_batch, validation_split
from sever.inference.predictor import Predictor, build_predictor, load_settings
from sever.inference.tiling import valid_tiling
from sever.inference.tune import TuneResult, TuneStatistics
from sever.model.metric import dice_per_image, iou_per_image
from sever.model.postprocess import PostProcessing
from sever.report.gallery import GALLERY_DIR, GalleryImage, gallery_image, present_dice, thumbnail
from sever.report.precision import Curve, PixelCounts, presence_curve, presence_scores
from sever.utils.visualization import outline_masks

logger = logging.getLogger(__name__)

THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 .. 0.95


@dataclass
class Example:
    """One image drawn in a mosaic: its name, its Dice over the classes in its truth or prediction
    (:func:`~sever.report.gallery.present_dice`) and the two panels.

    ``truth`` and ``prediction`` are ``(H, W, 3)`` uint8 RGB: the image with the true and the
    predicted masks outlined in class colours.
    """

    name: str
    dice: float
    truth: np.ndarray
    prediction: np.ndarray


@dataclass
class ValidationScores:
    """What the report shows of the validation split.

    Attributes:
        scored: images predicted; ``total``: images in the split.
        evaluation: per image and class Dice and presence.
        iou: float ``(N, C)`` IoU of each image and class (1 where both masks are empty), rows as
            ``evaluation``'s.
        thresholds: the threshold search over the scored images, or None when the settings
            couple the classes (component domination).
        presence, pixels: per class, the image-level and pixel-level precision-recall curves.
        image_sizes: ``(N, 2)`` int ``(H, W)`` of each scored image.
        defect_areas: per class, the pixel area of every true defect (connected component).
        best, worst: the examples of the mosaics.
        gallery: one record per scored image (thumbnails written under the gallery folder).
    """

    scored: int
    total: int
    checkpoint: Path
    settings: PostProcessing
    evaluation: Evaluation
    iou: np.ndarray
    thresholds: TuneResult | None
    presence: list[Curve]
    pixels: list[Curve]
    image_sizes: np.ndarray
    defect_areas: list[list[int]]
    best: list[Example] = field(default_factory=list)
    worst: list[Example] = field(default_factory=list)
    gallery: list[GalleryImage] = field(default_factory=list)


def spread(count: int, limit: int) -> list[int]:
    """``min(count, limit)`` positions spread evenly over ``range(count)``, ascending."""
    if count <= limit:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def component_areas(masks: np.ndarray) -> list[list[int]]:
    """Pixel areas of the 8-connected components of each class of ``masks (C, H, W)`` uint8."""
    areas = []
    for mask in masks:
        count, _, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask), connectivity=8)
        areas.append(stats[1:count, cv2.CC_STAT_AREA].tolist())
    return areas


def ranked(evaluation: Evaluation, examples: int) -> tuple[list[int], list[int]]:
    """Positions of the ``examples`` best and worst images by their Dice over the classes present in
    the truth or the prediction (:func:`~sever.report.gallery.present_dice`).

    A class absent from both is right by default and would lift every image towards 1, so it is
    left out; an image with no class in either shows nothing and is not ranked. The best are
    chosen first; the worst from the rest, lowest first.
    """
    score = present_dice(evaluation.dice, evaluation.actual, evaluation.predicted)
    candidates = np.flatnonzero(~np.isnan(score))
    order = candidates[np.argsort(-score[candidates], kind="stable")].tolist()
    best = order[:examples]
    worst = [i for i in order[::-1] if i not in best][:examples]
    return best, worst


def _examples(predictor: Predictor, settings: PostProcessing, paths: Sequence[Path], annotations: Annotations,
              dice: dict[str, float]) -> list[Example]:
    """Predict ``paths`` again and draw truth and prediction outlines (same order as ``paths``)."""
    drawn = {}
    for batch in predictor.predict_files(paths, batch_size=1, num_workers=0, description="report examples"):
        masks = settings.apply(batch.probs, batch.class_probs).cpu().numpy()
        truth = truth_batch(annotations, batch.names, tuple(batch.images.shape[-2:])).numpy()
        for name, image, pred, true in zip(batch.names, batch.images.numpy(), masks, truth):
            drawn[name] = Example(name, dice[name], outline_masks(image, true), outline_masks(image, pred))
    return [drawn[Path(path).name] for path in paths]


@dataclass
class _Tally:
    """What one pass over the scored images accumulates besides the scoreboard."""

    classes: int
    gallery_dir: Path | None
    sizes: list = field(default_factory=list)
    areas: list = field(default_factory=list)
    iou: list = field(default_factory=list)
    presence: list = field(default_factory=list)
    gallery: list = field(default_factory=list)
    pixels: PixelCounts = field(init=False)

    def __post_init__(self):
        self.areas = [[] for _ in range(self.classes)]
        self.pixels = PixelCounts(self.classes)

    def update(self, batch, masks, truth, settings: PostProcessing) -> None:
        self.sizes += [tuple(batch.images.shape[-2:])] * len(batch.names)
        self.iou += iou_per_image(masks, truth).tolist()
        self.presence += presence_scores(batch.probs, settings.min_pixels).tolist()
        self.pixels.update(batch.probs, truth, masks)
        for image_truth in truth.numpy():
            for c, class_areas in enumerate(component_areas(image_truth)):
                self.areas[c] += class_areas
        if self.gallery_dir is not None:
            self._draw(batch, masks.cpu().numpy(), truth.numpy())

    def _draw(self, batch, masks: np.ndarray, truth: np.ndarray) -> None:
        dice = dice_per_image(torch.from_numpy(masks), torch.from_numpy(truth)).numpy()
        for index, (name, image) in enumerate(zip(batch.names, batch.images.numpy())):
            thumb = f"{GALLERY_DIR}/{len(self.gallery):06d}.jpg"
            thumbnail(outline_masks(image, truth[index]), outline_masks(image, masks[index]),
                      self.gallery_dir.parent / thumb)
            self.gallery.append(gallery_image(name, dice[index], masks[index], truth[index], thumb))


def score_validation(run_dir: Path, max_images: int, examples: int, postprocess: Path | None,
                     batch_size: int = 4, gallery_dir: Path | None = None) -> ValidationScores:
    """Predict up to ``max_images`` validation images of a segmentation run on the CPU and score them
    (tiled as the run validated, ``trainer.valid_tile``).

    Args:
        run_dir: the run (its best checkpoint, else its newest).
        max_images: cap on the images predicted, spread evenly over the split.
        examples: how many best and worst images the mosaics show.
        postprocess: settings YAML (e.g. from ``sever tune``), or None for the defaults.
        gallery_dir: where to write a thumbnail of every scored image (None: no gallery).

    Raises:
        SeverError: no checkpoint, no validation split, or data that cannot be read.
    """
    opened = open_checkpoint(run_dir)
    predictor = build_predictor([opened], device="cpu", amp="off", tiling=valid_tiling(opened.config))
    settings = load_settings(postprocess, predictor.classes, False)
    paths, annotations = validation_split(predictor.models[0].config)
    chosen = [paths[i] for i in spread(len(paths), max_images)]
    board = Scoreboard(predictor.class_names)
    stats = None
    if not settings.component_domination:
        stats = TuneStatistics(settings, THRESHOLDS, predictor.class_names)
    if gallery_dir is not None:
        gallery_dir.mkdir(parents=True, exist_ok=True)
    tally = _Tally(predictor.classes, gallery_dir)
    for batch in predictor.predict_files(chosen, batch_size, num_workers=0, description="report"):
        masks = settings.apply(batch.probs, batch.class_probs)
        truth = truth_batch(annotations, batch.names, tuple(batch.images.shape[-2:]))
        board.update(batch.names, masks, truth)
        if stats is not None:
            stats.update(batch.names, batch.probs, truth, batch.class_probs)
        tally.update(batch, masks, truth, settings)
    evaluation = board.result()
    best, worst = ranked(evaluation, examples)
    dice = dict(zip(evaluation.image_ids, present_dice(evaluation.dice, evaluation.actual,
                                                       evaluation.predicted).tolist()))
    by_name = {path.name: path for path in chosen}
    drawn = _examples(predictor, settings, [by_name[evaluation.image_ids[i]] for i in best + worst], annotations, dice)
    presence = np.array(tally.presence).reshape(-1, predictor.classes)
    return ValidationScores(
        scored=len(chosen), total=len(paths), checkpoint=predictor.models[0].source, settings=settings,
        evaluation=evaluation, iou=np.array(tally.iou).reshape(-1, predictor.classes),
        thresholds=stats.search((), ()) if stats else None,
        presence=[presence_curve(presence[:, c], evaluation.actual[:, c], evaluation.predicted[:, c])
                  for c in range(predictor.classes)],
        pixels=[tally.pixels.curve(c) for c in range(predictor.classes)],
        image_sizes=np.array(tally.sizes, dtype=np.int64).reshape(-1, 2), defect_areas=tally.areas,
        best=drawn[:len(best)], worst=drawn[len(best):], gallery=tally.gallery,
    )
