"""``sever pseudo-label``: confident predictions of unlabelled images as training labels.

The images are predicted as ``sever predict`` predicts them (the same
:class:`~sever.inference.predictor.Predictor`: ensembles, studies, TTA, tiles,
classifiers) and post-processed with the same settings. An image is kept when the
prediction is confident for **every** class (:class:`ConfidenceRule`):

- *band*: at most ``max_uncertain`` of its pixels have a probability strictly between
  ``low`` and ``high`` (a class confidently absent has nearly every pixel below ``low``,
  one confidently present has its defect above ``high`` and only a thin uncertain rim);
- *peak* (optional, ``min_peak``): the class's largest pixel probability is either at
  most ``low`` (nothing there) or at least ``min_peak`` (something clearly there), so a
  faint blob drops the image however small it is;
- with classifiers, each class probability is at most ``low`` or at least ``high``.

"No defect" is a label too: a confidently empty image is kept with empty masks. The
kept images are written in the original ``ImageId_ClassId,EncodedPixels`` format, every
class of every kept image on its own row, which is what the pseudo-label sampler reads
(``data_loader.args.pseudo_csv`` with ``pseudo_images`` the predicted folder: the images
the CSV lists are the pseudo-labelled ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from sever.data_loader.datasets import list_images
from sever.exceptions import ConfigError
from sever.inference.outputs import write_predictions
from sever.inference.predictor import PredictionBatch, Predictor
from sever.model.postprocess import PROB_SCALE, PostProcessing

logger = logging.getLogger(__name__)

PSEUDO_FORMAT = "original"  # lists every class of every kept image, empty masks included


@dataclass(frozen=True)
class ConfidenceRule:
    """When a predicted image is confident enough to train on (module docstring).

    Attributes:
        low, high: the uncertain probability band ``(low, high)``, ``0 <= low < high <= 1``.
        max_uncertain: the largest share of an image's pixels, per class, inside the band (0..1).
        min_peak: a class's largest probability must be <= ``low`` or >= ``min_peak``; None: no such check.
    """

    low: float = 0.2
    high: float = 0.8
    max_uncertain: float = 0.02
    min_peak: float | None = None

    def check(self, spell: Callable[[str], str]) -> ConfidenceRule:
        """Itself, or ConfigError naming the offending setting as ``spell(field)`` spells it (a key, an option)."""
        if not 0 <= self.low < self.high <= 1:
            raise ConfigError(f"{spell('low')} and {spell('high')}: need 0 <= low < high <= 1, got "
                              f"{self.low} and {self.high}")
        if not 0 <= self.max_uncertain <= 1:
            raise ConfigError(f"{spell('max_uncertain')}: a share of pixels in [0, 1], got {self.max_uncertain}")
        if self.min_peak is not None and not self.low < self.min_peak <= 1:
            raise ConfigError(f"{spell('min_peak')}: must be in ({self.low}, 1] (above low), got {self.min_peak}")
        return self

    def confident(self, probs: Tensor, class_probs: Tensor | None = None) -> Tensor:
        """Which images to keep.

        Args:
            probs: ``(B, C, H, W)`` uint8 probabilities (``q`` stands for ``q / 255``).
            class_probs: ``(B, C)`` float classifier probabilities, or None.

        Returns:
            ``(B,)`` bool.
        """
        low, high = self.low * PROB_SCALE, self.high * PROB_SCALE
        flat = probs.flatten(2)
        uncertain = ((flat > low) & (flat < high)).float().mean(-1)
        keep = (uncertain <= self.max_uncertain).all(1)
        if self.min_peak is not None:
            peak = flat.amax(-1).float()
            keep &= ((peak <= low) | (peak >= self.min_peak * PROB_SCALE)).all(1)
        if class_probs is not None:
            keep &= ((class_probs <= self.low) | (class_probs >= self.high)).all(1)
        return keep


@dataclass
class PseudoLabels:
    """What :func:`pseudo_label` kept.

    Attributes:
        kept: the images written.
        dropped: the images predicted but not confident.
        class_images: ``(C,)`` kept images with each class (after post-processing).
        output: the CSV written.
        seconds: prediction and writing time.
    """

    kept: int
    dropped: int
    class_images: np.ndarray
    output: Path
    seconds: float

    def describe(self, class_names: Sequence[str]) -> str:
        per_class = ", ".join(f"{name} {count}" for name, count in zip(class_names, self.class_images.tolist()))
        total = self.kept + self.dropped
        return (f"pseudo-labels: kept {self.kept} of {total} images ({self.dropped} dropped as not confident); "
                f"kept images with each class: {per_class} (the others labelled defect-free); wrote {self.output}")


class _Confident:
    """The batches of a predictor cut down to their confident images, counting those dropped."""

    def __init__(self, batches: Iterable[PredictionBatch], rule: ConfidenceRule):
        self.batches, self.rule = batches, rule
        self.dropped = 0

    def __iter__(self) -> Iterator[PredictionBatch]:
        for batch in self.batches:
            keep = self.rule.confident(batch.probs, batch.class_probs)
            self.dropped += int((~keep).sum())
            if not keep.any():
                continue
            index = torch.nonzero(keep).flatten()
            yield PredictionBatch(
                names=[batch.names[i] for i in index.tolist()],
                images=batch.images[index.cpu()] if batch.images is not None else None,
                probs=batch.probs[index],
                class_probs=batch.class_probs[index] if batch.class_probs is not None else None,
            )


def pseudo_label(predictor: Predictor, settings: PostProcessing, image_dir: str | Path, output: str | Path,
                 rule: ConfidenceRule = ConfidenceRule(), batch_size: int = 8, num_workers: int = 2,
                 classes: int | None = None) -> PseudoLabels:
    """Predict every image of ``image_dir`` and write the confident ones to ``output`` (original format).

    Args:
        predictor: the models, TTA and classifiers (as ``sever predict`` builds them).
        settings: post-processing of the written masks.
        rule: which images are confident enough.
        classes: the class count the labels are for (a study's config), checked against the
            predictor's before anything is predicted; None: the predictor's.

    Raises:
        DataError: ``image_dir`` is missing or holds no images (naming it).
        ConfigError: ``classes`` or the settings' class count differs from the models'.
    """
    image_dir = Path(image_dir)
    names = list_images(image_dir)
    if classes is not None and classes != predictor.classes:
        raise ConfigError(f"the models ({predictor.models[0].source}) predict {predictor.classes} classes but the "
                          f"pseudo-labels are for {classes}")
    if settings.classes != predictor.classes:
        raise ConfigError(f"post-processing settings are for {settings.classes} classes, the models predict "
                          f"{predictor.classes}")
    batches = _Confident(predictor.predict_files([image_dir / name for name in names], batch_size, num_workers,
                                                 description="pseudo-label"), rule)
    summary = write_predictions(batches, settings, output, PSEUDO_FORMAT, outputs=predictor.outputs)
    result = PseudoLabels(summary.images, batches.dropped, summary.class_images, summary.output, summary.seconds)
    logger.info("%s", result.describe(predictor.class_names))
    if result.kept == 0:
        logger.warning("pseudo-labels: no image of %s was confident enough; loosen the rule (a wider max_uncertain, "
                       "a narrower low..high band)", image_dir)
    return result
