"""Label issues: which labelled images' masks are most likely wrong, from a study's out-of-fold maps.

Every labelled image of a study is predicted by the fold that never trained on it (its
out-of-fold probabilities, :func:`sever.study.tuning.oof_sources`), so where that prediction
confidently disagrees with the label, the label is suspect. Each (image, class) is scored and
given one kind:

- ``missing mask``: the label has no mask of the class, the prediction confidently has one;
- ``spurious mask``: the label has a mask the prediction confidently leaves empty there;
- ``wrong class``: a spurious mask whose pixels the prediction marks as another class (that
  class's own label then usually reads as a missing mask);
- ``poor outline``: both have the class but overlap little (IoU below ``outline_iou``).

The score is cleanlab's: :func:`cleanlab.segmentation.rank.get_label_quality_scores`
(``softmin`` of every pixel's predicted probability of its given label, dominated by the
worst-agreeing pixels) gives a quality in [0, 1]; the score is ``1 - quality``, so higher is
more suspect and scores of every kind rank together.

cleanlab expects one class per pixel (labels ``(N, H, W)``, probabilities ``(N, K, H, W)``
that sum to one), while sever's classes are independent sigmoids whose masks may overlap. So
each class is its own 2-class problem, background against the class: labels are the class's
mask, probabilities ``[1 - p_c, p_c]``. That needs no rule for overlapping pixels and keeps a
class's score from hiding behind another's; the one cross-class kind, a wrong class, is found
after scoring by comparing a spurious mask with the other classes' confident predictions.
A confident prediction is the study's post-processed one (its tuned thresholds, one class per
pixel and component steps, ``postprocess.yml``) before the minimum-size wipe: a small labelled
defect that the prediction finds is not called spurious because it is smaller than ``min_pixels``;
a missing mask needs a confident prediction of at least ``min_pixels`` (and one) pixels.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sever.exceptions import CheckpointError, ConfigError, DataError
from sever.inference.evaluate import check_same_classes, truth_batch
from sever.inference.outputs import SavedProbabilities
from sever.inference.predictor import class_labels, load_settings
from sever.model.postprocess import PROB_SCALE, PostProcessing
from sever.study.folder import STUDY_FILE, StudyPaths, is_study
from sever.study.tuning import class_names, oof_images, oof_sources
from sever.utils import interrupt

logger = logging.getLogger(__name__)

KINDS = ("missing mask", "spurious mask", "wrong class", "poor outline")
OUTLINE_IOU = 0.5  # a labelled and a predicted mask overlapping less than this are a poor outline
MISSED_COVER = 0.1  # a labelled mask whose pixels are predicted (as its class) less than this is unconfirmed
OTHER_COVER = 0.5  # ... and, when another class's prediction covers this much of it, a wrong class
TEMPERATURE = 0.1  # cleanlab's softmin temperature (its default): lower leans on the worst pixels
CSV_COLUMNS = ("image", "class", "kind", "score")


@dataclass(frozen=True)
class LabelIssue:
    """One suspect (image, class): ``kind`` one of :data:`KINDS`, ``score`` in [0, 1] (higher: more
    suspect), ``iou`` of label and confident prediction, ``other`` the predicted class of a wrong class."""

    image: str
    class_index: int
    kind: str
    score: float
    iou: float
    other: int | None = None


def class_quality(truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's label quality of one class in each image, as a 2-class (background, class) problem.

    Args:
        truth: ``(N, H, W)`` labelled mask of the class (nonzero = defect).
        probs: ``(N, H, W)`` float predicted probability of the class, in [0, 1].

    Returns:
        float ``(N,)`` in [0, 1]; low: the label disagrees with a confident prediction.
    """
    try:
        from cleanlab.segmentation.rank import get_label_quality_scores
    except ImportError as exc:
        raise ConfigError(f"label-issues needs cleanlab ({exc}); install it with: pip install 'sever[labels]'") from None
    pred_probs = np.stack([1.0 - probs, probs], axis=1)  # (N, 2, H, W): background, defect
    quality, _ = get_label_quality_scores((truth != 0).astype(np.int64), pred_probs, method="softmin",
                                          verbose=False, temperature=TEMPERATURE)
    return quality


def issue_kind(truth: np.ndarray, predicted: np.ndarray, c: int, outline_iou: float = OUTLINE_IOU,
               min_pixels: int = 1) -> tuple[str | None, float, int | None]:
    """The kind of disagreement of class ``c`` in one image: ``(kind or None, iou, other class or None)``.

    ``truth`` and ``predicted``: bool ``(C, H, W)`` labelled and confidently predicted masks;
    ``min_pixels``: the predicted pixels a missing mask needs.
    """
    label, guess = truth[c], predicted[c]
    union = np.logical_or(label, guess).sum()
    iou = float(np.logical_and(label, guess).sum() / union) if union else 1.0
    if not label.any():
        return ("missing mask" if guess.sum() >= max(1, min_pixels) else None), iou, None
    if np.logical_and(label, guess).sum() < MISSED_COVER * label.sum():
        cover = [np.logical_and(label, predicted[k]).sum() / label.sum() if k != c else 0.0
                 for k in range(len(truth))]
        other = int(np.argmax(cover))
        if cover[other] >= OTHER_COVER:
            return "wrong class", iou, other
        return "spurious mask", iou, None
    return ("poor outline" if iou < outline_iou else None), iou, None


def batch_issues(names: Sequence[str], probs: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
                 outline_iou: float = OUTLINE_IOU, min_pixels: Sequence[int] | None = None) -> list[LabelIssue]:
    """The label issues of one batch.

    Args:
        names: B image names.
        probs: float ``(B, C, H, W)`` out-of-fold probabilities in [0, 1].
        truth: ``(B, C, H, W)`` labelled masks; ``predicted``: ``(B, C, H, W)`` confident masks.
        min_pixels: C predicted pixels a missing mask needs (None: 1).
    """
    min_pixels = min_pixels or [1] * probs.shape[1]
    truth, predicted = truth != 0, predicted != 0
    scores = 1.0 - np.stack([class_quality(truth[:, c], probs[:, c]) for c in range(probs.shape[1])], axis=1)
    issues = []
    for b, name in enumerate(names):
        for c in range(probs.shape[1]):
            kind, iou, other = issue_kind(truth[b], predicted[b], c, outline_iou, min_pixels[c])
            if kind is not None:
                issues.append(LabelIssue(name, c, kind, round(float(scores[b, c]), 6), round(iou, 4), other))
    return issues


def rank_label_issues(sources: Sequence[tuple[SavedProbabilities, object]], settings: PostProcessing,
                      batch_size: int = 8, outline_iou: float = OUTLINE_IOU) -> list[LabelIssue]:
    """Every suspect (image, class) of the out-of-fold ``sources``, most suspect first.

    Args:
        sources: ``[(SavedProbabilities, Annotations)]``, one per fold (:func:`sever.study.tuning.oof_sources`).
        settings: the post-processing that makes a prediction confident (the study's tuned settings).
        batch_size: saved maps read at a time.
        outline_iou: IoU below which a labelled and a predicted mask are a poor outline.

    Raises:
        DataError: the sources disagree on their class count.
        ConfigError: ``settings`` need a classifier (out-of-fold maps hold none).
    """
    check_same_classes([saved for saved, _ in sources])
    if settings.gated:
        raise ConfigError("postprocess: settings for a classifier; out-of-fold probabilities hold no classifier's")
    issues: list[LabelIssue] = []
    for saved, truth in sources:
        for batch in interrupt.checked(saved.batches(batch_size), "label-issues"):
            predicted = confident_masks(batch.probs, settings)
            masks = truth_batch(truth, batch.names, tuple(predicted.shape[-2:])).numpy()
            issues += batch_issues(batch.names, batch.probs.numpy().astype(np.float32) / PROB_SCALE, masks,
                                   predicted, outline_iou, settings.min_pixels)
    issues = most_suspect_first(issues)
    logger.info("%d suspect (image, class) pairs in %d images", len(issues), len({i.image for i in issues}))
    return issues


def confident_masks(probs: torch.Tensor, settings: PostProcessing) -> np.ndarray:
    """bool ``(B, C, H, W)``: uint8 probabilities ``(B, C, H, W)`` post-processed by ``settings``
    short of the minimum-size wipe (see the module's docstring)."""
    return settings.pixel_masks(probs).cpu().numpy()


def most_suspect_first(issues: Sequence[LabelIssue]) -> list[LabelIssue]:
    """``issues`` by descending score (ties by image name and class)."""
    return sorted(issues, key=lambda issue: (-issue.score, issue.image, issue.class_index))


def image_ranking(issues: Sequence[LabelIssue]) -> list[str]:
    """The images of ``issues`` (most suspect first) in order: an image ranks by its most suspect class."""
    return list(dict.fromkeys(issue.image for issue in issues))


def write_issues_csv(issues: Sequence[LabelIssue], class_names: Sequence[str], path: str | Path) -> Path:
    """Write ``image,class,kind,score`` rows (in the given order); a wrong class's kind names the predicted class."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for issue in issues:
            writer.writerow((issue.image, class_names[issue.class_index], describe_kind(issue, class_names),
                             f"{issue.score:.6f}"))
    return path


def describe_kind(issue: LabelIssue, class_names: Sequence[str]) -> str:
    """``wrong class (predicted NAME)`` for a wrong class, else the kind."""
    if issue.kind == "wrong class" and issue.other is not None:
        return f"wrong class (predicted {class_names[issue.other]})"
    return issue.kind


def read_issues_csv(path: str | Path) -> list[dict]:
    """The rows of a label-issues CSV as dicts (score a float)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and tuple(rows[0]) != CSV_COLUMNS:
        raise DataError(f"{path}: expected the columns {', '.join(CSV_COLUMNS)}, got {', '.join(rows[0])}")
    return [{**row, "score": float(row["score"])} for row in rows]


@dataclass
class StudyIssues:
    """The label issues of a study with what drawing them needs.

    Attributes:
        issues: most suspect first; ``class_names``: C names; ``settings``: the confident prediction's.
        sources: the out-of-fold ``[(SavedProbabilities, Annotations)]``; ``images``: each image's file.
    """

    issues: list[LabelIssue]
    class_names: list[str]
    settings: PostProcessing
    sources: list
    images: dict[str, Path]


def study_label_issues(path: str | Path, postprocess: str | Path | None = None, batch_size: int = 8,
                       outline_iou: float = OUTLINE_IOU) -> StudyIssues:
    """Rank the labels of the study at ``path`` (the round it predicts with) by how suspect they are.

    Args:
        path: a study folder (made by ``sever train --folds K`` or ``sever auto``), its folds finished.
        postprocess: settings YAML of the confident prediction; None: the study's tuned
            ``postprocess.yml``, else the defaults.
        batch_size: saved maps read at a time; ``outline_iou``: see :func:`rank_label_issues`.

    Raises:
        DataError: no such folder. CheckpointError: not a study, or a fold without out-of-fold maps.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (label-issues reads a study folder)")
    if not is_study(root):
        raise CheckpointError(f"{root}: not a study (no {STUDY_FILE}); label-issues reads the out-of-fold maps "
                              f"of a study made by sever train --folds K or sever auto")
    study = StudyPaths(root)
    sources = oof_sources(study)
    classes = sources[0][0].classes
    if postprocess is None and study.postprocess.is_file():
        postprocess = study.postprocess
    settings = load_settings(postprocess, classes, False)
    names = class_labels(class_names(root), classes)
    issues = rank_label_issues(sources, settings, batch_size, outline_iou)
    return StudyIssues(issues, names, settings, sources, oof_images(study))
