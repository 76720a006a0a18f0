"""A study's final model: one run on every labelled image, trained once the folds are done.

A study config with ``final_model: true`` adds ``STUDY/final/`` to the study (its entry in
``study.yml`` is ``final``): after the last round is tuned out-of-fold, a normal run trains on
all the labelled images (``validation_split: 0``: the folds already validated every image)
for its share of the study's time budget, the same share a fold gets (the ledger counts it
among the runs still to train from the start). It then carries the chosen round's tuned
post-processing (``final/postprocess.yml`` and inside its checkpoint), so ``sever predict -m
STUDY`` predicts with this one model instead of the fold ensemble
(:func:`sever.inference.checkpoints.study_runs`), and ``-m STUDY/final`` or its export carry
the same settings. The folds stay: ``sever tune``, ``sever label-issues`` and the report read
their out-of-fold maps, and ``-m STUDY/fold0 -m STUDY/fold1 ... --postprocess
STUDY/postprocess.yml`` predicts with their ensemble.

Whether a final model beats the fold ensemble at the same budget is the planner's
prediction (:func:`sever.planning.rules.plan_final_model`); ``sever auto`` writes it with
its reason.
"""

from __future__ import annotations

import logging
from typing import Sequence

from sever.exceptions import ConfigError
from sever.study import folder
from sever.study.folder import StudyPaths
from sever.study.folds import train_share
from sever.utils.config import load_config
from sever.utils.run import RunPaths

logger = logging.getLogger(__name__)

SPLIT_ARGS = ("folds", "fold", "split_file")  # what makes a fold's run validate on part of the images


def check_final_model(config: dict) -> None:
    """ConfigError when ``final_model`` is set where it cannot be trained: with pseudo-label rounds
    (the final model trains on the labelled images alone, which their folds did not)."""
    if config.get("final_model") and config.get("pseudo") is not None:
        raise ConfigError("final_model: a study with pseudo-label rounds predicts with its chosen round's folds; "
                          "set final_model: false or remove the pseudo block")


def final_config(study: StudyPaths) -> dict:
    """The study's config for its final model: every labelled image trains (``validation_split: 0``),
    nothing is tuned on a validation split (the study's out-of-fold settings are adopted instead)."""
    config = {key: value for key, value in load_config(study.config).items() if key != "final_model"}
    args = {key: value for key, value in (config["data_loader"].get("args") or {}).items() if key not in SPLIT_ARGS}
    data_loader = {**config["data_loader"], "args": {**args, "validation_split": 0}}
    trainer = {**config["trainer"], "tune_postprocess": False}
    return {**config, "data_loader": data_loader, "trainer": trainer}


def train_final(study: StudyPaths, overrides: Sequence[str] = ()) -> RunPaths | None:
    """Train (or resume from its newest checkpoint) the study's final model, then give it the study's
    tuned post-processing; None when the study has none or it is done.

    It trains for its share of the study's time budget with every other fold slot idle
    (:meth:`~sever.study.folder.StudyPaths.reserve` with ``alone``); the time it took is charged.
    An interrupted final model stays ``running`` (``sever train -r STUDY`` resumes it).

    Raises:
        BudgetSpent: nothing is left of the budget for it.
    """
    entry = study.final_entry()
    if entry is None or entry.status == "done":
        return None
    run = RunPaths(entry.run)
    logger.info("the final model: training on every labelled image in %s", run.root)
    train_share(study, folder.FINAL_RUN, "the final model", run, final_config(study), overrides,
                study.set_final_status, lambda deadline: adopt_settings(study, run), alone=True)
    return run


def adopt_settings(study: StudyPaths, run: RunPaths) -> None:
    """Give the final model the post-processing the study tuned out-of-fold (its chosen round's):
    ``final/postprocess.yml`` and the copy in its checkpoint, which predict and export read."""
    from sever.inference.checkpoints import open_checkpoint
    from sever.inference.predictor import TUNED_FILE
    from sever.model.postprocess import PostProcessing
    from sever.utils.checkpoint import atomic_torch_save
    from sever.utils.config import output_classes

    tuned = study.postprocess
    if not tuned.is_file():
        logger.warning("the final model: %s has no tuned post-processing (%s missing): it predicts with the defaults",
                       study.root, tuned.name)
        return
    opened = open_checkpoint(run.root)
    settings = PostProcessing.load(tuned, output_classes(opened.config).outputs)
    (run.root / TUNED_FILE).write_text(tuned.read_text(encoding="utf-8"), encoding="utf-8")
    atomic_torch_save(dict(opened.state, postprocess=settings.to_mapping()), opened.source)
    logger.info("the final model carries the study's out-of-fold settings: %s", run.root / TUNED_FILE)
