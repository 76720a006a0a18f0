"""``sever.evaluate`` and ``sever.tune``: a model scored on labelled images, and its post-processing tuned on them.

>>> scores = sever.evaluate(run.root, split="val")        # doctest: +SKIP
>>> print(scores.table())                                 # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sever.api.model import Model, PathLike, load
from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.datasets import list_images
from sever.exceptions import ConfigError
from sever.inference import evaluate as scoring
from sever.inference import tune as tuning
from sever.inference.evaluate import Evaluation
from sever.inference.tune import TuneResult
from sever.model.postprocess import PostProcessing
from sever.study.folder import StudyPaths, is_study
from sever.study.tuning import tune_out_of_fold

ModelInput = Model | PathLike | Sequence[PathLike]
PREDICT_OPTIONS = ("tta", "tile", "overlap", "blend", "batch_size", "device", "amp", "postprocess", "classifier")


def as_model(model: ModelInput) -> Model:
    """``model`` itself, or :func:`~sever.api.model.load` of a path (or paths)."""
    return model if isinstance(model, Model) else load(model)


@dataclass
class Scores:
    """What :func:`evaluate` measured.

    Attributes:
        evaluation: the competition Dice of each image and class, and presence counts.
        postprocessing: where the post-processing settings came from.
    """

    evaluation: Evaluation
    postprocessing: str

    @property
    def mean_dice(self) -> float:
        """The competition metric: mean Dice over images and classes (an empty pair counts 1)."""
        return self.evaluation.mean_dice

    @property
    def class_dice(self) -> dict[str, float]:
        """Mean Dice per class, by its report label (``"1 pitted_spots"``)."""
        return dict(zip(self.evaluation.class_names, self.evaluation.class_dice.tolist()))

    def table(self) -> str:
        """The table ``sever evaluate`` prints: Dice, presence precision and recall per class."""
        return self.evaluation.table()


def evaluate(model: ModelInput, split: str | None = "val", images: PathLike | None = None,
             labels: PathLike | None = None, num_workers: int = 2, **options: Any) -> Scores:
    """Score a model's post-processed masks with the competition Dice, per class.

    Args:
        model: a :class:`~sever.api.model.Model` or what :func:`sever.load` takes.
        split: ``"val"``: the first run's own validation split (rebuilt from its config, tiled as it
            validated unless ``tile`` is given). Ignored when ``images`` is given.
        images, labels: instead, a folder of images and a Kaggle CSV (either format) of their
            true masks; images the CSV does not list are defect-free.
        options: as :meth:`~sever.api.model.Model.predict`: ``tta``, ``tile``, ``overlap``, ``blend``,
            ``batch_size``, ``device``, ``amp``, ``postprocess``, ``classifier``.

    Returns:
        :class:`Scores`: ``.mean_dice``, ``.class_dice``, ``.table()``.

    Raises:
        ConfigError: neither ``split="val"`` nor ``images`` with ``labels``; a run without a validation split.
    """
    model = as_model(model)
    batch_size = options.get("batch_size", 8)
    if images is not None:
        if labels is None:
            raise ConfigError("evaluate: images needs labels, the CSV of their true masks")
        prepared = model.prepare(**_predict_options(options))
        names = list_images(images)
        truth = read_rle_csv(labels, prepared.predictor.outputs.dataset, image_ids=names)
        paths, annotations = [Path(images) / name for name in names], truth.for_outputs(prepared.predictor.outputs)
    else:
        _check_split(split)
        prepared = model.prepare(**_predict_options(options), validation=True)
        paths, annotations = scoring.predictor_split(prepared.predictor)
    evaluation = scoring.evaluate_predictions(prepared.predictor, prepared.settings, paths, annotations, batch_size,
                                              num_workers)
    return Scores(evaluation, prepared.postprocessing)


@dataclass
class Tuning:
    """What :func:`tune` found and wrote.

    Attributes:
        result: every candidate's per-class Dice (``.tables()``) and the best settings.
        path: the YAML written (``sever predict --postprocess PATH``; a study's and a run's own
            ``postprocess.yml`` are used by default).
        source: what was tuned on.
        postprocessing: where the base settings came from ('' on out-of-fold probabilities).
    """

    result: TuneResult
    path: Path
    source: str
    postprocessing: str = ""

    @property
    def settings(self) -> PostProcessing:
        """The best settings: per-class ``threshold``, ``min_pixels`` (and ``c_factor`` with a classifier)."""
        return self.result.best

    def summary(self) -> str:
        """Default against tuned mean Dice per class (what ``sever tune`` prints last)."""
        return self.result.summary()

    def tables(self) -> str:
        """Every candidate's Dice, per class."""
        return self.result.tables()


def tune(model: ModelInput, split: str | None = "val", output: PathLike | None = None,
         thresholds: Sequence[float] = tuning.DEFAULT_THRESHOLDS, min_pixels: Sequence[int] = tuning.DEFAULT_MIN_PIXELS,
         c_factors: Sequence[float] = tuning.DEFAULT_C_FACTORS, num_workers: int = 2, **options: Any) -> Tuning:
    """Search per-class thresholds and minimum pixel counts (and c_factors with a classifier), as ``sever tune``.

    A study alone is tuned on its folds' out-of-fold probabilities (every labelled image scored
    by a model that never saw it); anything else on the first run's validation split
    (``split="val"``). A best value on the edge of its grid widens the grid (up to three times).

    Args:
        model: a :class:`~sever.api.model.Model` or what :func:`sever.load` takes.
        output: the YAML to write; None: the study's ``postprocess.yml`` for a study, else
            ``postprocess.yml`` in the working folder (as ``sever tune``).
        thresholds, min_pixels, c_factors: the grids searched (probabilities, pixels, factors).
        options: as :meth:`~sever.api.model.Model.predict` (``postprocess``: the base settings).

    Returns:
        :class:`Tuning`: ``.settings`` (the best), ``.path`` (written), ``.summary()``.
    """
    batch_size = options.get("batch_size", 8)
    study_dir = _lone_study(model)
    if study_dir is not None:
        if options.get("classifier"):
            raise ConfigError("classifier: a study tunes on out-of-fold probabilities, which hold no classifier's")
        study = StudyPaths(study_dir)
        study = study.at_round(study.round_number)  # the round it predicts with, before the new score is recorded
        result = tune_out_of_fold(study, list(thresholds), list(min_pixels), list(c_factors),
                                  postprocess=options.get("postprocess"), batch_size=batch_size, output=output)
        path = study.postprocess if output is None else Path(output)
        return Tuning(result, path, f"the out-of-fold probabilities of {study_dir} round {study.round_number}")
    _check_split(split)
    prepared = as_model(model).prepare(**_predict_options(options), validation=True)
    stats = tuning.statistics_from_run(prepared.predictor, prepared.settings, list(thresholds), batch_size,
                                       num_workers)
    source = f"the validation split of {prepared.predictor.models[0].source}"
    postprocessing = prepared.postprocessing
    result = tuning.search_widening(stats, list(min_pixels), list(c_factors))
    path = result.write(output if output is not None else tuning.TUNED_FILE, source)
    return Tuning(result, path, source, postprocessing)


def _lone_study(model: ModelInput) -> Path | None:
    """The study folder ``model`` is, alone; None for anything else. A study path is not loaded: its
    out-of-fold probabilities are what is tuned, whatever state its folds' runs are in."""
    if isinstance(model, Model):
        return model.source.study
    paths = [model] if isinstance(model, (str, Path)) else list(model)
    return Path(paths[0]) if len(paths) == 1 and is_study(paths[0]) else None


def _check_split(split: str | None) -> None:
    if split != "val":
        raise ConfigError(f"split: {split!r}; the split scored is the run's validation split, 'val' "
                          f"(or give images and labels)")


def _predict_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(PREDICT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; the prediction options are "
                          f"{', '.join(PREDICT_OPTIONS)}")
    return options
