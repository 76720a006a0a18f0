"""Pseudo-label rounds of a study, and the end of every round: its out-of-fold tuning.

A config with ``pseudo: {images: DIR, rounds: R}`` (:class:`PseudoPlan`) trains round 0 on
the labelled folds, then for r = 1..R pseudo-labels DIR with round r-1's fold ensemble and
tuned post-processing (:func:`sever.inference.pseudo_label.pseudo_label`) into
``round<r>/pseudo.csv`` and trains the K folds again into ``round<r>/fold<k>/`` with those
labels added through the pseudo-label sampler (``WeightedFixedBatchSampler``, ``share`` of
every batch). Each fold still validates on its labelled out-of-fold images only (the same
saved split in every round), so the rounds' out-of-fold scores compare. ``sever predict -m
STUDY`` uses the finished round with the best out-of-fold score
(:meth:`~sever.study.folder.StudyPaths.chosen_round`). A round whose rule keeps no image
ends the study with the rounds before it, with a warning.

When every fold of a round is done, the round is tuned on its out-of-fold maps
(``trainer.tune_postprocess``, :func:`tune_round`): its ``postprocess.yml`` is written and
its out-of-fold score (the competition metric with the tuned settings) recorded in
``study.yml``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sever.exceptions import ConfigError
from sever.study import folder
from sever.study.folder import StudyFailed, StudyPaths, unfinished
from sever.study.tuning import tune_out_of_fold
from sever.tasks import task_of

logger = logging.getLogger(__name__)


class NothingConfident(StudyFailed):
    """A pseudo-label round found no image confident enough to label."""


@dataclass(frozen=True)


class PseudoPlan:
    """The ``pseudo`` block of a study config: R pseudo-label rounds over a folder of unlabelled images.

    Attributes:
        images: the unlabelled images (absolute).
        rounds: R >= 1.
        share: the share of every training batch drawn from the pseudo-labelled images (0..1).
        tta: test-time flips of the pseudo-labelling prediction (as ``sever predict --tta``).
        rule: which predictions are kept (:class:`~sever.inference.pseudo_label.ConfidenceRule`).
    """

    images: Path
    rounds: int
    share: float
    tta: str
    rule: Any

    KEYS = ("images", "rounds", "share", "tta", "low", "high", "max_uncertain", "min_peak")

    @classmethod
    def from_config(cls, block: Mapping | None) -> PseudoPlan | None:
        """The plan of a validated config's ``pseudo`` block (None without one).

        Raises:
            ConfigError: an unknown key or a bad value, named ``pseudo.KEY``.
            DataError: ``pseudo.images`` holds no images (naming the folder).
        """
        from sever.data_loader.datasets import list_images
        from sever.inference.predictor import TTA_VIEWS
        from sever.inference.pseudo_label import ConfidenceRule

        if block is None:
            return None
        unknown = sorted(set(block) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"pseudo.{unknown[0]}: unknown key; valid: {', '.join(cls.KEYS)}")
        if not isinstance(block.get("images"), str):
            raise ConfigError(f"pseudo.images: the folder of unlabelled images is required, "
                              f"got {block.get('images')!r}")
        rounds = block.get("rounds", 1)
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ConfigError(f"pseudo.rounds: an integer >= 1, got {rounds!r}")
        share = block.get("share", 0.12)
        if not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"pseudo.share: a share of each batch in (0, 1), got {share!r}")
        tta = block.get("tta", "none")
        if tta not in TTA_VIEWS:
            raise ConfigError(f"pseudo.tta: one of {', '.join(TTA_VIEWS)}, got {tta!r}")
        defaults = ConfidenceRule()
        rule = ConfidenceRule(*(block.get(key, getattr(defaults, key))
                                for key in ("low", "high", "max_uncertain", "min_peak")))
        rule.check(lambda name: f"pseudo.{name}")
        images = Path(block["images"]).resolve()
        list_images(images)
        return cls(images, rounds, float(share), tta, rule)

    def data_loader_args(self, csv: Path) -> dict:
        """The ``data_loader.args`` that add the pseudo-labels of ``csv`` to training."""
        return {"pseudo_csv": str(csv.resolve()), "pseudo_images": str(self.images),
                "sampler": {"type": "WeightedFixedBatchSampler", "args": {"weights": [1 - self.share, self.share]}}}


def round_config(config: dict, study: StudyPaths) -> dict:
    """A fold config of ``study``'s round: without the study's own keys (``pseudo``, ``final_model``), with its
    round's pseudo-labels."""
    plan = PseudoPlan.from_config(config.get("pseudo"))
    config = {key: value for key, value in config.items() if key not in ("pseudo", "final_model")}
    if study.round_number == 0:
        return config
    data_loader = dict(config["data_loader"])
    data_loader["args"] = {**(data_loader.get("args") or {}), **plan.data_loader_args(study.pseudo_csv)}
    return {**config, "data_loader": data_loader}


def current_round(study: StudyPaths) -> int:
    """The first round with a fold not done (the last round when all are)."""
    return next((r for r in range(study.rounds + 1) if unfinished(study.at_round(r))), study.rounds)


def prepare_round(study: StudyPaths, config: dict) -> None:
    """Round r >= 1 needs round r-1 tuned and its pseudo-labels (written once; a resumed round keeps them)."""
    if study.round_number == 0 or study.pseudo_csv.is_file():
        return
    previous = study.at_round(study.round_number - 1)
    if unfinished(previous):
        raise StudyFailed(f"{study.root}: round {previous.round_number} has unfinished folds "
                          f"{unfinished(previous)}; finish it with sever train -r {study.root}")
    if previous.round_record().get("score") is None:
        tune_round(previous, config)
    write_pseudo_labels(study, config)


def tune_round(study: StudyPaths, config: dict) -> None:
    """Tune ``study``'s round on its out-of-fold maps: its ``postprocess.yml`` and its out-of-fold score.

    Skipped (and said so) with ``trainer.tune_postprocess: false`` or for a task without
    pixel predictions; the round then has no score. With a time budget it ends by the
    study's deadline, on an even subset of the maps when it must (and its time is charged).
    """
    if not config["trainer"]["tune_postprocess"] or not task_of(config).pixel_maps:
        logger.info("round %d: not tuned out-of-fold (trainer.tune_postprocess is false or a %s study)",
                    study.round_number, config["task"])
        return
    args = config["data_loader"].get("args") or {}
    started = folder.CLOCK()
    result = tune_out_of_fold(study, batch_size=args.get("valid_batch_size") or args.get("batch_size", 8),
                              deadline=study.tuning_deadline())
    study.charge(f"round{study.round_number}/tuning", folder.CLOCK() - started)
    logger.info("round %d tuned out-of-fold:\n%s", study.round_number, result.summary())


def write_pseudo_labels(study: StudyPaths, config: dict) -> None:
    """Round r's ``pseudo.csv``: round r-1's fold ensemble and tuned post-processing over ``pseudo.images``.

    Raises:
        NothingConfident: no image was confident enough (the rule in the study's config.yaml is to loosen);
            :func:`run_study` then ends the study with the rounds before.
    """
    from sever.inference.predictor import build_predictor, load_settings
    from sever.inference.pseudo_label import pseudo_label

    plan = PseudoPlan.from_config(config["pseudo"])
    previous = study.at_round(study.round_number - 1)
    started = folder.CLOCK()
    predictor = build_predictor([entry.run for entry in previous.entries()], tta=plan.tta, device=config["device"])
    tuned = previous.postprocess if previous.postprocess.is_file() else None
    settings = load_settings(tuned, predictor.classes, False)
    args = config["data_loader"].get("args") or {}
    temporary = study.pseudo_csv.with_name(f".{study.pseudo_csv.name}.partial")
    result = pseudo_label(predictor, settings, plan.images, temporary, plan.rule,
                          args.get("valid_batch_size") or args.get("batch_size", 8), args.get("num_workers", 2),
                          classes=config["classes"])
    study.charge(f"round{study.round_number}/pseudo-label", folder.CLOCK() - started)
    if result.kept == 0:
        temporary.unlink(missing_ok=True)
        raise NothingConfident(f"{study.root}: round {study.round_number}: no image of {plan.images} was confident "
                               f"enough to pseudo-label; loosen pseudo.max_uncertain, low or high in {study.config}, "
                               f"then sever train -r {study.root}")
    os.replace(temporary, study.pseudo_csv)
    study.record(pseudo_images=result.kept, pseudo_dropped=result.dropped,
                 pseudo_class_images=[int(v) for v in result.class_images])
    logger.info("round %d: %s", study.round_number, result.describe(predictor.class_names))
