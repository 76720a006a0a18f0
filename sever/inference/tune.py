"""Search per-class post-processing settings on a labelled split.

The competition metric is a mean over image-and-class pairs, and every
post-processing step but component domination treats each class on its own
(see :mod:`sever.model.postprocess`), so the best settings of each class can be
searched separately and the combination is the best overall: exact, not greedy.

One pass over the images gathers, for every candidate probability threshold,
each image's and class's pixel count after steps 1-4 and its Dice with the mask
kept (:func:`~sever.model.metric.dice_per_image`), plus the Dice with the mask
wiped. Every combination of minimum pixel count (and ``c_factor`` with a
classifier) is then scored from those numbers alone, with the same
:meth:`~sever.model.postprocess.PostProcessing.keep` that prediction uses: no
probability map is kept in memory. The base settings (defaults or
``--postprocess FILE``) are always among the candidates, and a class keeps them
unless a candidate scores strictly higher, so the tuned score is never below
the base score on the split it was tuned on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.exceptions import ConfigError, DataError
from sever.inference.evaluate import check_same_classes, predictor_split, truth_batch
from sever.inference.outputs import SavedProbabilities
from sever.inference.predictor import Predictor, class_labels, load_settings
from sever.model.metric import dice_per_image
from sever.model.postprocess import PostProcessing

logger = logging.getLogger(__name__)

DEFAULT_MIN_PIXELS = (0, 200, 400, 600, 800, 1000, 1500, 2000, 3000, 4000)
DEFAULT_C_FACTORS = (1.0, 2.0, 5.0, 10.0, 20.0)


def _candidates(values: Sequence, base: Sequence, name: str, valid) -> list:
    """Sorted union of the searched ``values`` and the base settings' values."""
    for value in values:
        if not valid(value):
            raise ConfigError(f"--{name}: invalid candidate {value!r}")
    return sorted(set(values) | set(base))


class TuneStatistics:
    """Per image and class numbers from which every candidate setting is scored.

    Args:
        base: the settings tuned from (their other options are kept).
        thresholds: candidate probability thresholds (the base ones are added).
        class_names: C labels for the report.
    """

    def __init__(self, base: PostProcessing, thresholds: Sequence[float], class_names: Sequence[str]):
        if base.component_domination:
            raise ConfigError("component_domination couples the classes, so they cannot be tuned one by one; "
                              "tune without it")
        self.base = base
        self.thresholds = _candidates(thresholds, base.threshold, "thresholds", lambda t: 0 < t < 1)
        self.class_names = list(class_names)
        self.image_ids: list[str] = []
        self._kept: list[list[Tensor]] = [[] for _ in self.thresholds]  # Dice with the mask kept, (B, C) each
        self._counts: list[list[Tensor]] = [[] for _ in self.thresholds]  # pixels after steps 1-4, (B, C)
        self._wiped: list[Tensor] = []  # Dice with the mask wiped, (B, C)
        self._class_probs: list[Tensor] = []

    def update(self, names: Sequence[str], probs: Tensor, truth: Tensor, class_probs: Tensor | None = None) -> None:
        """Add a batch: uint8 probabilities and true masks ``(B, C, H, W)``, classifier ``(B, C)``."""
        if (class_probs is not None) != self.base.gated:
            raise DataError("classifier probabilities are needed for every image when tuning with a classifier, "
                            "and only then")
        classes = probs.shape[1]
        for index, threshold in enumerate(self.thresholds):
            masks = self.base.replace(threshold=(threshold,) * classes).pixel_masks(probs)
            self._kept[index].append(dice_per_image(masks, truth).cpu())
            self._counts[index].append(masks.flatten(2).sum(-1).cpu())
        self._wiped.append(dice_per_image(torch.zeros_like(truth), truth).cpu())
        if class_probs is not None:
            self._class_probs.append(class_probs.float().cpu())
        self.image_ids += list(names)

    def search(self, min_pixels: Sequence[int] = DEFAULT_MIN_PIXELS,
               c_factors: Sequence[float] = DEFAULT_C_FACTORS) -> TuneResult:
        """Score every combination of threshold, min_pixels (and c_factor) per class; pick the best."""
        if not self.image_ids:
            raise DataError("nothing to tune on: no images")
        base = self.base
        pixels = _candidates(min_pixels, base.min_pixels, "min-pixels", lambda m: isinstance(m, int) and m >= 0)
        factors = _candidates(c_factors, base.c_factor, "c-factors", lambda f: f >= 1) if base.gated else [None]
        wiped = torch.cat(self._wiped)
        class_probs = torch.cat(self._class_probs) if base.gated else None
        classes = wiped.shape[1]
        scores = np.zeros((len(self.thresholds), len(pixels), len(factors), classes))
        for t, threshold in enumerate(self.thresholds):
            kept, counts = torch.cat(self._kept[t]), torch.cat(self._counts[t])
            for m, minimum in enumerate(pixels):
                for f, factor in enumerate(factors):
                    settings = base.replace(min_pixels=(minimum,) * classes,
                                            c_factor=None if factor is None else (factor,) * classes)
                    keep = settings.keep(counts, class_probs)
                    scores[t, m, f] = torch.where(keep, kept, wiped).mean(0).numpy()
        return TuneResult(base, self.thresholds, pixels, factors, scores, list(self.image_ids), self.class_names)


@dataclass
class TuneResult:
    """Every candidate's per-class mean Dice and the best settings.

    Attributes:
        scores: ``(T, M, F, C)`` mean Dice of class c with threshold ``thresholds[t]``,
            min_pixels ``min_pixels[m]`` and c_factor ``c_factors[f]`` (``[None]`` without
            a classifier).
    """

    base: PostProcessing
    thresholds: list[float]
    min_pixels: list[int]
    c_factors: list[float | None]
    scores: np.ndarray
    image_ids: list[str]
    class_names: list[str]

    def _index(self, settings: PostProcessing, c: int) -> tuple[int, int, int]:
        factor = None if settings.c_factor is None else settings.c_factor[c]
        return (self.thresholds.index(settings.threshold[c]), self.min_pixels.index(settings.min_pixels[c]),
                self.c_factors.index(factor))

    def _best_index(self, c: int) -> tuple[int, int, int]:
        """The best candidate of class ``c``; the base one unless another scores strictly higher."""
        base = self._index(self.base, c)
        best = np.unravel_index(np.argmax(self.scores[..., c]), self.scores.shape[:3])
        return tuple(int(i) for i in best) if self.scores[best + (c,)] > self.scores[base + (c,)] else base

    @property
    def base_scores(self) -> np.ndarray:
        """``(C,)`` per-class mean Dice of the base settings."""
        return np.array([self.scores[self._index(self.base, c) + (c,)] for c in range(len(self.class_names))])

    @property
    def best_scores(self) -> np.ndarray:
        """``(C,)`` per-class mean Dice of the best settings."""
        return np.array([self.scores[self._best_index(c) + (c,)] for c in range(len(self.class_names))])

    @property
    def best(self) -> PostProcessing:
        """The base settings with each class's best threshold, min_pixels (and c_factor)."""
        picks = [self._best_index(c) for c in range(len(self.class_names))]
        return self.base.replace(
            threshold=tuple(self.thresholds[t] for t, _, _ in picks),
            min_pixels=tuple(self.min_pixels[m] for _, m, _ in picks),
            c_factor=None if self.c_factors == [None] else tuple(self.c_factors[f] for _, _, f in picks),
        )

    def tables(self) -> str:
        """Per class, the mean Dice of every threshold (rows) and min_pixels (columns) tried."""
        return "\n\n".join(self._class_table(c, name) for c, name in enumerate(self.class_names))

    def _class_table(self, c: int, name: str) -> str:
        grid = self.scores[..., c].max(axis=2)  # best c_factor in each cell
        best, base = self._best_index(c), self._index(self.base, c)
        title = f"{name}: mean Dice by threshold (rows) and min_pixels (columns); [tuned] (base)"
        if self.c_factors != [None]:
            title += "; each cell at its best c_factor"
        lines = [title, "threshold " + "".join(f"{m:>10}" for m in self.min_pixels)]
        for t, threshold in enumerate(self.thresholds):
            cells = []
            for m in range(len(self.min_pixels)):
                text = f"{grid[t, m]:.4f}"
                if (t, m) == best[:2]:
                    text = f"[{text}]"
                elif (t, m) == base[:2]:
                    text = f"({text})"
                cells.append(f"{text:>10}")
            lines.append(f"{threshold:<10.2f}" + "".join(cells))
        if self.c_factors != [None]:
            t, m, _ = best
            tried = "  ".join(f"{f:g}: {self.scores[t, m, i, c]:.4f}" for i, f in enumerate(self.c_factors))
            lines.append(f"c_factor at threshold {self.thresholds[t]:g}, min_pixels {self.min_pixels[m]}: {tried}")
        return "\n".join(lines)

    def summary(self) -> str:
        """Base against tuned, per class and overall."""
        best, base_scores, best_scores = self.best, self.base_scores, self.best_scores
        width = max(len("class"), *(len(name) for name in self.class_names))
        lines = [f"{'class':<{width}}  {'base':>6}  {'tuned':>6}  {'threshold':>9}  {'min_pixels':>10}  {'c_factor':>8}"]
        for c, name in enumerate(self.class_names):
            factor = "-" if best.c_factor is None else f"{best.c_factor[c]:g}"
            lines.append(f"{name:<{width}}  {base_scores[c]:>6.4f}  {best_scores[c]:>6.4f}  "
                         f"{best.threshold[c]:>9g}  {best.min_pixels[c]:>10}  {factor:>8}")
        lines.append(f"{'mean':<{width}}  {base_scores.mean():>6.4f}  {best_scores.mean():>6.4f}")
        lines.append(f"({len(self.image_ids)} images)")
        return "\n".join(lines)

    def write(self, path: str | Path, source: str) -> Path:
        """Write the best settings as YAML for ``sever predict --postprocess``, with a comment header."""
        header = (f"# sever tune on {source}: mean Dice {self.best_scores.mean():.4f} "
                  f"(base settings {self.base_scores.mean():.4f}) over {len(self.image_ids)} images\n")
        path = Path(path)
        try:
            path.write_text(header + self.best.to_yaml(), encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path


# ----------------------------------------------------------------------------- sources


def statistics_from_run(predictor: Predictor, base: PostProcessing, thresholds: Sequence[float],
                        batch_size: int = 8, num_workers: int = 2) -> TuneStatistics:
    """Predict the validation split of the predictor's first run once and gather the statistics."""
    paths, annotations = predictor_split(predictor)
    stats = TuneStatistics(base, thresholds, predictor.class_names)
    for batch in predictor.predict_files(paths, batch_size, num_workers, description="tune"):
        truth = truth_batch(annotations, batch.names, tuple(batch.images.shape[-2:])).to(batch.probs.device)
        stats.update(batch.names, batch.probs, truth, batch.class_probs)
    return stats


def statistics_from_files(probs_dir: str | Path, truth_csv: str | Path, postprocess: str | Path | None,
                          thresholds: Sequence[float], class_names: Sequence[str] | None = None,
                          batch_size: int = 8) -> TuneStatistics:
    """Gather the statistics from a ``--save-probs`` folder and the true masks of its images.

    The images are the folder's; ground-truth rows for other images are ignored.
    """
    saved = SavedProbabilities([probs_dir])
    truth = read_rle_csv(truth_csv, saved.classes, image_ids=saved.names)
    return statistics_from_saved([(saved, truth)], postprocess, thresholds, class_names, batch_size)


def statistics_from_saved(sources: Sequence[tuple[SavedProbabilities, Annotations]], postprocess: str | Path | None,
                          thresholds: Sequence[float], class_names: Sequence[str] | None = None,
                          batch_size: int = 8) -> TuneStatistics:
    """Gather the statistics from the union of saved probabilities, each with the true masks of its images.

    A study's out-of-fold maps are one source per fold (every labelled image once).

    Raises:
        DataError: sources of different class counts, or with and without classifier probabilities.
    """
    first = sources[0][0]
    check_same_classes([saved for saved, _ in sources])
    stats = TuneStatistics(load_settings(postprocess, first.classes, first.gated), thresholds,
                           class_labels(class_names, first.classes))
    for saved, truth in sources:
        for batch in saved.batches(batch_size):
            stats.update(batch.names, batch.probs, truth_batch(truth, batch.names, batch.probs.shape[-2:]),
                         batch.class_probs)
    return stats
