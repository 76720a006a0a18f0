"""Training a K-fold study: make its folder and saved split, then train its rounds' folds.

``sever train -c X --folds K`` makes the study folder (:mod:`sever.study.folder`), saves
its split (``splits.json``, :mod:`sever.study.splits`) and trains fold 0..K-1 of round 0
(:mod:`sever.study.folds`), then each pseudo-label round (:mod:`sever.study.rounds`), each
round tuned out-of-fold when its folds are done (:mod:`sever.study.tuning`), then, with
``final_model: true``, its final model on every labelled image (:mod:`sever.study.final`).
``sever train -r STUDY`` resumes it: the saved split is read again (images added to the
data folder since are refused unless ``--assign-new-images`` gives them folds), a fold
marked done whose run folder was deleted is trained again (said so), and every fold not
done trains from its newest checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from sever import experiment
from sever.exceptions import CheckpointError, ConfigError, Interrupted
from sever.study.final import check_final_model, train_final
from sever.study.folder import StudyPaths, unfinished
from sever.study.folds import train_folds, with_fold
from sever.study.rounds import NothingConfident, PseudoPlan, current_round, prepare_round, tune_round
from sever.study.splits import assign_new, fold_of_each, image_key, new_images, read_splits, write_splits
from sever.utils import time_budget
from sever.utils.config import apply_overrides, dump_config, load_config, validate_config
from sever.utils.run import new_folder

logger = logging.getLogger(__name__)


def study_config(study: StudyPaths, overrides: Sequence[str] = ()) -> dict:
    """The study's config with ``overrides``, validated (sever's own keys)."""
    return validate_config(apply_overrides(load_config(study.config), overrides))


def create_study(config: dict, folds: int, overrides: Sequence[str] = ()) -> StudyPaths:
    """Check ``config`` with ``folds`` (reading its data once), make the study folder and save its split.

    Raises:
        ConfigError: a bad config, a data loader without folds, more folds than images, a bad ``pseudo`` block.
    """
    config = experiment.prepare_config(with_fold(config, folds, 0), overrides)
    check_final_model(config)
    plan = PseudoPlan.from_config(config["pseudo"])
    assignment = derived_split(config)
    study = StudyPaths(new_folder(config["save_dir"], config["name"]))
    try:
        study.root.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"save_dir: cannot create {study.root}: {exc.strerror or exc}") from None
    dump_config(config, study.config)
    write_splits(study.splits, assignment, folds)
    study.initialise(folds, plan.rounds if plan else 0, config["final_model"])
    logger.info("study folder: %s (%d folds%s%s; the split of its %d images saved in %s)", study.root, folds,
                f", {plan.rounds} pseudo-label round(s) over {plan.images}" if plan else "",
                ", then a final model on every image" if config["final_model"] else "", len(assignment),
                study.splits.name)
    return study


def derived_split(config: dict) -> dict[str, int]:
    """Image key -> fold, as the seed's stratified split of the data deals them (``data_loader.args.folds``).

    Reading the data here makes a bad ``folds`` fail before training starts.
    """
    from sever.data_loader.data_loaders import config_split, fold_assignment

    args = {key: value for key, value in config["data_loader"]["args"].items() if key != "split_file"}
    split = config_split(args, classes=config["classes"], class_names=config.get("class_names"), seed=config["seed"])
    folds = fold_assignment(split.annotations.has_defect(), args["folds"], config["seed"], config.get("class_names"))
    return {image_key(path, Path(args["data_dir"])): int(fold) for path, fold in zip(split.paths, folds)}


def check_saved_split(study: StudyPaths, config: dict, assign_new_images: bool = False) -> None:
    """Check the study's saved split against the data before anything trains.

    An older study without ``splits.json`` gets one from the seed's split of the data now
    (what its folds derived), said so. Images added to the data since the split are refused
    (naming them and ``--assign-new-images``) or, with ``assign_new_images``, each given a
    fold (:func:`~sever.study.splits.assign_new`) and the file rewritten.

    Raises:
        DataError: the saved split is invalid, names images the data lacks, or lacks new ones.
    """
    current = derived_split(with_fold(config, study.folds, 0))
    if not study.splits.is_file():
        write_splits(study.splits, current, study.folds)
        logger.info("%s: a study from before saved splits: wrote %s from the seed's split of the data now "
                    "(%d images); every fold reads it from now on", study.root, study.splits, len(current))
        return
    assignment, folds = read_splits(study.splits)
    added = new_images(assignment, list(current))
    if added and assign_new_images:
        write_splits(study.splits, assign_new(assignment, added, folds), folds)
        logger.info("%s: %d image(s) added since the split were given folds: %s", study.splits, len(added),
                    ", ".join(added))
    fold_of_each(study.splits, list(current), study.folds)


def retrain_missing(study: StudyPaths) -> None:
    """Mark pending (to train again, said so) every fold (and the final model) marked done whose run folder is gone."""
    for number in range(study.rounds + 1):
        at = study.at_round(number)
        for entry in at.entries():
            if entry.status == "done" and not entry.run.is_dir():
                logger.warning("round %d, fold %d: marked done in %s but its run folder %s is gone: training it "
                               "again", number, entry.fold, study.file, entry.run)
                at.set_status(entry.fold, "pending")
    final = study.final_entry()
    if final is not None and final.status == "done" and not final.run.is_dir():
        logger.warning("the final model: marked done in %s but its run folder %s is gone: training it again",
                       study.file, final.run)
        study.set_final_status("pending")


def run_study(study: StudyPaths, folds: Sequence[int] | None = None, overrides: Sequence[str] = (),
              parallel: int = 1, nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Train a study: every round's unfinished folds (default), or ``folds`` of its current round.

    A whole run goes round by round (:func:`run_round`), then trains the final model when the study has
    one (:func:`~sever.study.final.train_final`); ``folds`` (``--fold k``, and
    each fold process of ``--parallel``) trains those folds of the first round with an
    unfinished fold and nothing else.

    Raises:
        StudyFailed: naming every fold that failed and its log.
        BudgetSpent: the study's time budget ran out with folds still to train.
        Interrupted: SIGINT/SIGTERM; its command is ``sever train -r STUDY`` (with ``--fold``).
    """
    try:
        return _run_study(StudyPaths(study.root), folds, overrides, parallel, nproc, debug)
    except Interrupted as stop:  # a fold's own hint would name the fold, not the study
        only = f" --fold {folds[0]}" if folds is not None and len(folds) == 1 else ""
        raise stop.resume_with(f"sever train -r {study.root}{only}")


def _run_study(study: StudyPaths, folds: Sequence[int] | None, overrides: Sequence[str], parallel: int, nproc: int,
               debug: bool) -> StudyPaths:
    config = study_config(study, overrides)
    if config["trainer"]["time_budget"] is not None:
        study.set_budget(time_budget.parse_budget(config["trainer"]["time_budget"], "trainer.time_budget"),
                         slots=parallel if folds is None else None)
    if folds is not None:
        current = study.at_round(current_round(study))
        prepare_round(current, config)
        return train_folds(current, folds, overrides, parallel, nproc, debug)
    for number in range(study.rounds + 1):
        try:
            run_round(study.at_round(number), config, overrides, parallel, nproc, debug)
        except NothingConfident as error:  # the earlier rounds stand; predict uses the best of them
            logger.warning("%s; the study ends with round %d", error, number - 1)
            break
    train_final(study, overrides)
    return study


def run_round(study: StudyPaths, config: dict, overrides: Sequence[str], parallel: int, nproc: int,
              debug: bool) -> None:
    """Pseudo-label for ``study``'s round if it needs it, train its unfinished folds, tune it once all are done."""
    prepare_round(study, config)
    waiting = unfinished(study)
    if waiting:
        if study.rounds:
            logger.info("round %d of %d: training fold(s) %s", study.round_number, study.rounds,
                        ", ".join(map(str, waiting)))
        train_folds(study, waiting, overrides, parallel, nproc, debug)
    if waiting or study.round_record().get("score") is None:
        tune_round(study, config)  # retuned when a fold retrained


def train_study(config: dict, folds: int, only: int | None = None, overrides: Sequence[str] = (),
                parallel: int = 1, nproc: int = 1, debug: bool = False,
                expected_overhead: float | None = None, tuning_reserve: float | None = None) -> StudyPaths:
    """Make a study of ``config`` with ``folds`` folds and train them all (or only fold ``only``).

    ``expected_overhead``: seconds a fold is expected to take beyond its training (``sever
    auto`` passes its plan's estimate), taken from the first folds' shares until one has
    finished and measured it; without it the first folds train their whole share.
    ``tuning_reserve``: seconds kept beyond ``trainer.time_budget`` for the out-of-fold tuning
    (``sever auto`` keeps a share of ``--time``); without it the tuning has what the folds left.
    """
    if only is not None and not 0 <= only < folds:
        raise ConfigError(f"--fold {only}: must be one of 0..{folds - 1} (--folds {folds})")
    study = create_study(config, folds, overrides)
    if expected_overhead is not None:
        study.expect_overhead(expected_overhead)
    if tuning_reserve is not None:
        study.keep_reserve(tuning_reserve)
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)


def resume_study(path: str | Path, only: int | None = None, overrides: Sequence[str] = (),
                 parallel: int = 1, nproc: int = 1, debug: bool = False,
                 assign_new_images: bool = False) -> StudyPaths:
    """Finish a study's unfinished folds (or fold ``only``, done or not), each from its newest checkpoint.

    Before anything trains the study file is validated, the saved split checked against the
    data (:func:`check_saved_split`; ``assign_new_images`` gives images added since a fold),
    and a fold marked done whose run folder was deleted is trained again (:func:`retrain_missing`).
    """
    study = StudyPaths(Path(path))
    if not study.file.is_file():
        raise CheckpointError(f"{path}: not a study folder (no {study.file.name})")
    check_saved_split(study, study_config(study, overrides), assign_new_images)
    retrain_missing(study)
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)
