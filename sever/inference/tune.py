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

A chosen value on the edge of its grid (a threshold at either end, the largest
min_pixels or c_factor, or the smallest when above 0 or 1) hints that the best one
lies beyond it: :func:`search_widening` warns and searches again with that grid widened
past its edge by a quarter as many steps again (at least one), up to :data:`WIDENINGS` times
while a chosen value stays on an edge. The statistics of every threshold those widenings can
reach are gathered in the same single pass over the images (:attr:`TuneStatistics.reserve`),
so widening never predicts the images twice.

:func:`tune_run` is the tuning every segmentation run does on its own validation
split at the end of training (``trainer.tune_postprocess``): it writes
``postprocess.yml`` into the run folder and the settings into the checkpoint it
tuned, which ``sever predict/evaluate -m RUN`` then use by default.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.exceptions import ConfigError, DataError
from sever.inference.checkpoints import load_model, open_checkpoint
from sever.inference.evaluate import check_same_classes, predictor_split, truth_batch
from sever.inference.outputs import SavedProbabilities
from sever.inference.predictor import TUNED_FILE, Predictor, class_labels, load_settings, resolve_amp
from sever.inference.tiling import valid_tiling
from sever.model.metric import dice_per_image
from sever.model.postprocess import PostProcessing
from sever.utils import interrupt
from sever.utils.checkpoint import atomic_torch_save
from sever.utils.registry import parse_spec
from sever.utils.time_budget import SPREAD, Deadline, spread_order, until_deadline

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
DEFAULT_MIN_PIXELS = (0, 200, 400, 600, 800, 1000, 1500, 2000, 3000, 4000)
DEFAULT_C_FACTORS = (1.0, 2.0, 5.0, 10.0, 20.0)
# How far each grid may be widened: (lowest, highest) value, and whether its values are whole numbers.
AXES = {"threshold": (0.05, 0.95, False), "min_pixels": (0, None, True), "c_factor": (1.0, None, False)}
# Times a grid is widened while its chosen value stays on an edge: the default thresholds reach
# 0.05..0.95 in two; min_pixels 0..4000 reaches 0..7000 in three.
WIDENINGS = 3


def widening(values: Sequence, axis: str) -> tuple[list, list]:
    """The values a sorted grid gains below and above its ends when widened once.

    Each end is extended by ``len(values) // 4`` (at least 1) steps of the spacing
    at that end, within the axis's limits (:data:`AXES`). A single value is no grid
    and is not widened.
    """
    low, high, whole = AXES[axis]
    values = sorted(values)
    if len(values) < 2:
        return [], []
    steps = range(1, max(1, len(values) // 4) + 1)
    below = [values[0] - k * (values[1] - values[0]) for k in steps]
    above = [values[-1] + k * (values[-1] - values[-2]) for k in steps]
    tidy = (lambda v: int(round(v))) if whole else (lambda v: round(v, 6))
    return ([tidy(v) for v in below if v >= low - 1e-9][::-1],
            [tidy(v) for v in above if high is None or v <= high + 1e-9])


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
        self.grid = _candidates(thresholds, base.threshold, "thresholds", lambda t: 0 < t < 1)
        widest = self.grid
        for _ in range(WIDENINGS):
            widest = sorted(set(widest).union(*widening(widest, "threshold")))
        self.reserve = sorted(set(widest) - set(self.grid))  # gathered now, searched only when widened
        self.thresholds = sorted(set(self.grid) | set(self.reserve))
        self.class_names = list(class_names)
        self.image_ids: list[str] = []
        # One row of C numbers per image, kept as Python lists, not as small tensors: small
        # long-lived heap allocations between each batch's large temporary masks fragmented
        # glibc's heap, and 1000 NEU-Seg out-of-fold images took 17 GB instead of 0.8 GB.
        self._kept: list[list[list[float]]] = [[] for _ in self.thresholds]  # Dice with the mask kept
        self._counts: list[list[list[int]]] = [[] for _ in self.thresholds]  # pixels after steps 1-4
        self._wiped: list[list[float]] = []  # Dice with the mask wiped
        self._class_probs: list[list[float]] = []

    def update(self, names: Sequence[str], probs: Tensor, truth: Tensor, class_probs: Tensor | None = None) -> None:
        """Add a batch: uint8 probabilities and true masks ``(B, C, H, W)``, classifier ``(B, C)``."""
        if (class_probs is not None) != self.base.gated:
            raise DataError("classifier probabilities are needed for every image when tuning with a classifier, "
                            "and only then")
        classes = probs.shape[1]
        for index, threshold in enumerate(self.thresholds):
            masks = self.base.replace(threshold=(threshold,) * classes).pixel_masks(probs)
            self._kept[index] += dice_per_image(masks, truth).tolist()
            self._counts[index] += masks.flatten(2).sum(-1).tolist()
        self._wiped += dice_per_image(torch.zeros_like(truth), truth).tolist()
        if class_probs is not None:
            self._class_probs += class_probs.float().tolist()
        self.image_ids += list(names)

    def search(self, min_pixels: Sequence[int] = DEFAULT_MIN_PIXELS,
               c_factors: Sequence[float] = DEFAULT_C_FACTORS, thresholds: Sequence[float] | None = None) -> TuneResult:
        """Score every combination of threshold, min_pixels (and c_factor) per class; pick the best.

        ``thresholds`` must be among :attr:`thresholds`; None searches :attr:`grid`.
        """
        if not self.image_ids:
            raise DataError("nothing to tune on: no images")
        searched = sorted(set(self.grid if thresholds is None else thresholds))
        base = self.base
        pixels = _candidates(min_pixels, base.min_pixels, "min-pixels", lambda m: isinstance(m, int) and m >= 0)
        factors = _candidates(c_factors, base.c_factor, "c-factors", lambda f: f >= 1) if base.gated else [None]
        wiped = torch.tensor(self._wiped, dtype=torch.float64)
        class_probs = torch.tensor(self._class_probs, dtype=torch.float32) if base.gated else None
        classes = wiped.shape[1]
        scores = np.zeros((len(searched), len(pixels), len(factors), classes))
        survivors = np.zeros(scores.shape, dtype=np.int64)
        for t, threshold in enumerate(searched):
            gathered = self.thresholds.index(threshold)
            kept = torch.tensor(self._kept[gathered], dtype=torch.float64)
            counts = torch.tensor(self._counts[gathered], dtype=torch.int64)
            for m, minimum in enumerate(pixels):
                for f, factor in enumerate(factors):
                    settings = base.replace(min_pixels=(minimum,) * classes,
                                            c_factor=None if factor is None else (factor,) * classes)
                    keep = settings.keep(counts, class_probs)
                    scores[t, m, f] = torch.where(keep, kept, wiped).mean(0).numpy()
                    survivors[t, m, f] = (keep & (counts > 0)).sum(0).numpy()
        return TuneResult(base, searched, pixels, factors, scores, list(self.image_ids), self.class_names,
                          wiped.mean(0).numpy(), survivors)


@dataclass
class TuneResult:
    """Every candidate's per-class mean Dice and the best settings.

    Attributes:
        scores: ``(T, M, F, C)`` mean Dice of class c with threshold ``thresholds[t]``,
            min_pixels ``min_pixels[m]`` and c_factor ``c_factors[f]`` (``[None]`` without
            a classifier).
        empty_scores: ``(C,)`` mean Dice of the empty predictor (every mask wiped) on the same
            images: the share of images without the class, what predicting nothing scores.
        survivors: ``(T, M, F, C)`` images on which class c keeps a non-empty mask with those
            settings (0: the settings switch the class off on these images).
    """

    base: PostProcessing
    thresholds: list[float]
    min_pixels: list[int]
    c_factors: list[float | None]
    scores: np.ndarray
    image_ids: list[str]
    class_names: list[str]
    empty_scores: np.ndarray
    survivors: np.ndarray

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
    def best_survivors(self) -> np.ndarray:
        """``(C,)`` images on which each class keeps a non-empty mask with the best settings."""
        return np.array([self.survivors[self._best_index(c) + (c,)] for c in range(len(self.class_names))])

    def recorded_scores(self) -> dict[str, list]:
        """What a run's checkpoint (``postprocess_scores``) and a study's ``study.yml`` keep of this search:
        per class, the default and tuned mean Dice, the empty predictor's, and the images the tuned settings
        keep a mask on (:mod:`sever.inference.learning` judges from them whether each class was learned)."""
        return {"default": self.base_scores.tolist(), "tuned": self.best_scores.tolist(),
                "empty": [float(v) for v in self.empty_scores], "survivors": [int(v) for v in self.best_survivors],
                "images": len(self.image_ids)}

    @property
    def best(self) -> PostProcessing:
        """The base settings with each class's best threshold, min_pixels (and c_factor)."""
        picks = [self._best_index(c) for c in range(len(self.class_names))]
        return self.base.replace(
            threshold=tuple(self.thresholds[t] for t, _, _ in picks),
            min_pixels=tuple(self.min_pixels[m] for _, m, _ in picks),
            c_factor=None if self.c_factors == [None] else tuple(self.c_factors[f] for _, _, f in picks),
        )

    def edges(self) -> list[tuple[str, str, float]]:
        """``(class name, axis, value)`` of each chosen value on a widenable edge of its grid."""
        grids = {"threshold": self.thresholds, "min_pixels": self.min_pixels, "c_factor": self.c_factors}
        best, found = self.best, []
        for axis, grid in grids.items():
            if grid == [None]:
                continue
            below, above = widening(grid, axis)
            chosen = getattr(best, axis)
            for name, value in zip(self.class_names, chosen):
                if (below and value == min(grid)) or (above and value == max(grid)):
                    found.append((name, axis, value))
        return found

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


def search_widening(stats: TuneStatistics, min_pixels: Sequence[int] = DEFAULT_MIN_PIXELS,
                    c_factors: Sequence[float] = DEFAULT_C_FACTORS) -> TuneResult:
    """Search the grids; while a chosen value is on an edge, warn and search again with that grid
    widened, up to :data:`WIDENINGS` times."""
    result = stats.search(min_pixels, c_factors)
    for _ in range(WIDENINGS):
        edges = result.edges()
        if not edges:
            return result
        for name, axis, value in edges:
            logger.info("%s: the best %s, %g, is on the edge of its grid; widening the %s grid", name, axis, value,
                        axis)
        axes = {axis for _, axis, _ in edges}
        wider = {axis: sorted(set(grid).union(*widening(grid, axis))) if axis in axes else list(grid)
                 for axis, grid in (("threshold", result.thresholds), ("min_pixels", result.min_pixels),
                                    ("c_factor", result.c_factors if stats.base.gated else []))}
        result = stats.search(wider["min_pixels"], wider["c_factor"] or c_factors, wider["threshold"])
    for name, axis, value in result.edges():
        logger.warning("%s: the best %s, %g, is still on the edge of the grid widened %d times; search further "
                       "with --%s", name, axis, value, WIDENINGS,
                       {"threshold": "thresholds", "min_pixels": "min-pixels", "c_factor": "c-factors"}[axis])
    return result


# ----------------------------------------------------------------------------- sources


def statistics_from_run(predictor: Predictor, base: PostProcessing, thresholds: Sequence[float],
                        batch_size: int = 8, num_workers: int = 2, deadline: Deadline | None = None) -> TuneStatistics:
    """Predict the validation split of the predictor's first run once and gather the statistics.

    With a ``deadline`` the images come in :func:`~sever.utils.time_budget.spread_order` and the
    prediction stops when it comes, so the tuning uses an even subset of them (said so).
    """
    paths, annotations = predictor_split(predictor)
    stats = TuneStatistics(base, thresholds, predictor.class_names)
    if deadline is not None:
        paths = [paths[i] for i in spread_order(len(paths))]
    batches = predictor.predict_files(paths, batch_size, num_workers, description="tune")
    for batch in until_deadline(batches, deadline, len(paths), "tuning", lambda batch: len(batch.names)):
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
    try:
        truth = read_rle_csv(truth_csv, saved.classes, image_ids=saved.names)
    except DataError as exc:
        raise DataError(f"{exc}; the probabilities in {probs_dir} hold {saved.classes} classes: tune them "
                        f"against labels of those classes") from None
    return statistics_from_saved([(saved, truth)], postprocess, thresholds, class_names, batch_size)


def statistics_from_saved(sources: Sequence[tuple[SavedProbabilities, Annotations]], postprocess: str | Path | None,
                          thresholds: Sequence[float], class_names: Sequence[str] | None = None,
                          batch_size: int = 8, deadline: Deadline | None = None) -> TuneStatistics:
    """Gather the statistics from the union of saved probabilities, each with the true masks of its images.

    A study's out-of-fold maps are one source per fold (every labelled image once). With a
    ``deadline`` every source is read in :func:`~sever.utils.time_budget.spread_order`, an even
    share of each in turn, until it comes: the tuning then uses an even subset (said so).

    Raises:
        DataError: sources of different class counts, or with and without classifier probabilities.
    """
    first = sources[0][0]
    check_same_classes([saved for saved, _ in sources])
    stats = TuneStatistics(load_settings(postprocess, first.classes, first.gated), thresholds,
                           class_labels(class_names, first.classes))
    total = sum(len(saved.names) for saved, _ in sources)
    parts = _spread_parts(sources) if deadline is not None else sources
    pairs = ((batch, truth) for saved, truth in parts for batch in saved.batches(batch_size))
    pairs = interrupt.checked(pairs, "tuning on saved probabilities")
    for batch, truth in until_deadline(pairs, deadline, total, "tuning", lambda pair: len(pair[0].names)):
        stats.update(batch.names, batch.probs, truth_batch(truth, batch.names, batch.probs.shape[-2:]),
                     batch.class_probs)
    return stats


def _spread_parts(sources, parts: int = SPREAD):
    """``sources`` as ``parts`` rounds: round r holds each source's r-th share of its images in spread order."""
    for part in range(parts):
        for saved, truth in sources:
            order = [saved.names[i] for i in spread_order(len(saved.names))]
            share = order[part * len(order) // parts:(part + 1) * len(order) // parts]
            if share:
                view = copy.copy(saved)
                view.names = share
                yield view, truth


def tune_run(root: str | Path, device: torch.device | str = "cpu", deadline: Deadline | None = None,
             data_config: Mapping | None = None) -> TuneResult:
    """Tune a finished segmentation run on its own validation split and store the result.

    The run's best checkpoint (else its newest) predicts the validation split once (tiled
    as the run validated, ``trainer.valid_tile``); the
    defaults are the base settings and the default grids are searched
    (:func:`search_widening`). The best settings go to ``<run>/postprocess.yml`` and,
    under ``postprocess``, into that checkpoint, beside ``postprocess_scores``: the
    per-class mean Dice of the default and the tuned settings, the empty predictor's, and the
    images each class keeps a mask on (:meth:`TuneResult.recorded_scores`).

    ``data_config``: the config the run trains with now (a resumed run's ``--set`` values, e.g.
    its data moved to another folder); its ``data_loader`` and ``trainer`` blocks place the
    split instead of those stored in the checkpoint, which an older best epoch may hold.

    Raises:
        ConfigError: the run held out no validation images, or its split is not one
            sever can rebuild (see :func:`~sever.inference.evaluate.validation_split`).
    """
    opened = open_checkpoint(root)
    device = torch.device(device)
    loaded = load_model(opened, device)
    if data_config is not None:
        loaded.config = {**loaded.config, "data_loader": data_config["data_loader"], "trainer": data_config["trainer"]}
    predictor = Predictor([loaded], device=device, amp=resolve_amp("auto", device), tiling=valid_tiling(loaded.config))
    _, args = parse_spec(loaded.config["data_loader"], "data_loader")
    stats = statistics_from_run(predictor, PostProcessing.default(predictor.classes), DEFAULT_THRESHOLDS,
                                args.get("batch_size", 8), args.get("num_workers", 0), deadline)
    result = search_widening(stats, DEFAULT_MIN_PIXELS)
    result.write(Path(root) / TUNED_FILE, f"the validation split of {opened.source}")
    state = dict(opened.state, postprocess=result.best.to_mapping(),
                 postprocess_scores=result.recorded_scores())
    atomic_torch_save(state, opened.source)
    return result
