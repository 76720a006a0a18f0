"""Out-of-fold tuning of a study: its folds' maps of the images they never trained on, tuned once.

:func:`tune_out_of_fold` is the one tuning of a study's post-processing: the end of every
round (:func:`sever.study.rounds.tune_round`, which ``sever auto`` relies on) and ``sever
tune -m STUDY`` call it. Written to the round's own ``postprocess.yml``, the settings and
the round's recorded out-of-fold ``score`` (the competition metric with those settings)
always come from the same search, so the score in ``study.yml`` is the score of the
settings ``sever predict -m STUDY`` uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from sever.exceptions import CheckpointError
from sever.inference.evaluate import validation_split
from sever.inference.outputs import SavedProbabilities
from sever.inference.tune import (DEFAULT_C_FACTORS, DEFAULT_MIN_PIXELS, DEFAULT_THRESHOLDS, TuneResult,
                                  search_widening, statistics_from_saved)
from sever.study.folder import StudyPaths
from sever.utils.config import load_config
from sever.utils.run import RunPaths
from sever.utils.time_budget import Deadline

logger = logging.getLogger(__name__)


def oof_sources(path: str | Path | StudyPaths) -> list:
    """Each finished fold's out-of-fold probabilities with the true masks of its validation images.

    ``path``: a study folder (the round it predicts with) or a :class:`StudyPaths` of one round.

    Returns:
        ``[(SavedProbabilities, Annotations)]``, one per fold; every labelled image once.

    Raises:
        CheckpointError: a fold not done or without its ``oof/`` folder, naming it.
    """
    return [(SavedProbabilities([oof]), truth) for oof, _, truth in _fold_splits(path)]


def oof_images(path: str | Path | StudyPaths) -> dict[str, Path]:
    """The file of every image :func:`oof_sources` holds, by name (each fold's validation images).

    Raises:
        CheckpointError: as :func:`oof_sources`.
    """
    return {image.name: image for _, paths, _ in _fold_splits(path) for image in paths}


def _fold_splits(path: str | Path | StudyPaths) -> list[tuple[Path, list[Path], object]]:
    """Each finished fold's ``(out-of-fold folder, validation image paths, their Annotations)``."""
    study = path if isinstance(path, StudyPaths) else StudyPaths(Path(path))
    splits = []
    for entry in study.entries():
        oof = study.oof_dir(entry.fold)
        if entry.status != "done" or not oof.is_dir():
            raise CheckpointError(f"{study.root}: fold {entry.fold} has no out-of-fold probabilities "
                                  f"({entry.status}, {oof}); finish it with sever train -r {study.root}")
        splits.append((oof, *validation_split(load_config(RunPaths(entry.run).config))))
    return splits


def class_names(path: str | Path) -> list[str] | None:
    """The study config's ``class_names``."""
    return load_config(StudyPaths(Path(path)).config).get("class_names")


def tune_out_of_fold(study: StudyPaths, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                     min_pixels: Sequence[int] = DEFAULT_MIN_PIXELS, c_factors: Sequence[float] = DEFAULT_C_FACTORS,
                     postprocess: str | Path | None = None, batch_size: int = 8,
                     output: str | Path | None = None, deadline: Deadline | None = None) -> TuneResult:
    """Tune ``study``'s round on its out-of-fold maps and write the best settings.

    Args:
        study: the study at one round (``StudyPaths(root)``: the round it predicts with).
        thresholds, min_pixels, c_factors: the grids searched (widened past an edge,
            :func:`~sever.inference.tune.search_widening`).
        postprocess: the base settings file (None: the defaults).
        batch_size: saved maps read per batch.
        output: where to write the settings; None: the round's ``postprocess.yml``, and then
            the round's ``score`` (the tuned mean Dice), ``class_scores`` and
            ``default_score`` (the base settings') are recorded in ``study.yml``, with
            ``empty_scores`` (the empty predictor's per class), ``class_survivors`` (the images each
            class keeps a mask on) and ``tuned_images``, from which
            :func:`sever.inference.learning.study_learning` judges each class.
        deadline: when the study's time budget ends (:meth:`StudyPaths.tuning_deadline`): the
            maps are then read in an even order and the tuning uses those read by then.

    Raises:
        CheckpointError: a fold not done or without its out-of-fold maps.
    """
    study = study.at_round(study.round_number)
    stats = statistics_from_saved(oof_sources(study), postprocess, thresholds, class_names(study.root), batch_size,
                                  deadline)
    result = search_widening(stats, min_pixels, c_factors)
    target = study.postprocess if output is None else Path(output)
    result.write(target, f"the out-of-fold probabilities of {study.root} round {study.round_number}")
    if target.resolve() == study.postprocess.resolve():
        recorded = result.recorded_scores()
        study.record(score=float(result.best_scores.mean()), class_scores=recorded["tuned"],
                     default_score=float(result.base_scores.mean()), empty_scores=recorded["empty"],
                     class_survivors=recorded["survivors"], tuned_images=recorded["images"])
    logger.info("round %d: out-of-fold score %.4f (competition metric, tuned; %.4f with the base post-processing); "
                "wrote %s", study.round_number, float(result.best_scores.mean()), float(result.base_scores.mean()),
                target)
    return result
