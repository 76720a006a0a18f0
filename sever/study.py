"""K-fold studies: train every fold of a config into one study folder, keep out-of-fold maps.

``sever train -c X --folds K`` makes the study folder (:mod:`sever.utils.study`) and
trains fold 0..K-1, each a normal run folder ``fold{k}/`` whose config validates on
fold k of the stratified split (``data_loader.args.folds``/``fold``,
:func:`~sever.data_loader.data_loaders.fold_split`). When a fold has trained, its
best checkpoint predicts the fold's validation images and the uint8 maps go to
``fold{k}/oof/`` (the ``--save-probs`` format): together the folds score every
labelled image with a model that never saw it, which ``sever tune -m STUDY`` tunes on
and ``sever evaluate -m STUDY --oof`` scores.

Folds run one after another in this process, or ``parallel`` at a time as separate
``sever train -r STUDY --fold k`` processes, each slot pinned to its GPU(s) through
``CUDA_VISIBLE_DEVICES`` (:func:`fold_slots`, :func:`run_queue`). With ``nproc`` > 1
each fold trains with DDP over ``nproc`` GPUs (under torchrun); both combine, slot i
taking GPUs ``i*nproc .. (i+1)*nproc-1``.

When every fold of a round is done, the round is tuned on its out-of-fold maps
(``trainer.tune_postprocess``): its ``postprocess.yml`` is written and its out-of-fold
score (the competition metric with the tuned settings) recorded in ``study.yml``.

**Pseudo-label rounds.** A config with ``pseudo: {images: DIR, rounds: R}``
(:class:`PseudoPlan`) trains round 0 on the labelled folds, then for r = 1..R
pseudo-labels DIR with round r-1's fold ensemble and tuned post-processing
(:func:`sever.inference.pseudo_label.pseudo_label`) into ``round<r>/pseudo.csv`` and
trains the K folds again into ``round<r>/fold<k>/`` with those labels added through the
pseudo-label sampler (``WeightedFixedBatchSampler``, ``share`` of every batch). Each
fold still validates on its labelled out-of-fold images only, so the rounds' out-of-fold
scores compare. ``sever predict -m STUDY`` uses the finished round with the best
out-of-fold score (:meth:`~sever.utils.study.StudyPaths.chosen_round`). A round whose
rule keeps no image ends the study with the rounds before it, with a warning.

**Time budget.** ``trainer.time_budget`` of a study is the whole study's: each fold,
when it starts, gets an equal share of what is left of it (``budget * parallel`` slot
seconds, less what finished folds and pseudo-labelling took and what folds in training
reserved) among the folds still to train in this and the later rounds. A fold's wall time
is charged, but its run's clock counts training only, so the run's ``trainer.time_budget``
is the share less the mean overhead (set-up, self-tuning, report, out-of-fold maps) of the
folds that finished, or before any has, the overhead the study was told to expect
(``sever auto`` gives its plan's; :meth:`~sever.utils.study.StudyPaths.overhead`). A fold that ends
early leaves its saving to the next ones; the study file keeps the seconds spent, so a
resumed study shares what is left. Time is measured with :data:`CLOCK`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sever import experiment
from sever.exceptions import CheckpointError, ConfigError, SeverError, TrainingInterrupted
from sever.tasks import task_of
from sever.utils.config import apply_overrides, dump_config, load_config, parse_duration, validate_config
from sever.utils.distributed import from_environment
from sever.utils.run import RunPaths, new_folder
from sever.utils.study import StudyPaths

logger = logging.getLogger(__name__)


CLOCK: Callable[[], float] = time.monotonic  # seconds; what the time budget is measured with


class StudyFailed(SeverError):
    """Some folds of a study failed to train; their logs say why."""


class BudgetSpent(SeverError):
    """The study's time budget is spent before all its folds trained."""


class NothingConfident(StudyFailed):
    """A pseudo-label round found no image confident enough to label."""


# ----------------------------------------------------------------------------- pseudo-label rounds


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


def study_config(study: StudyPaths, overrides: Sequence[str] = ()) -> dict:
    """The study's config with ``overrides``, validated (sever's own keys)."""
    return validate_config(apply_overrides(load_config(study.config), overrides))


def _with_fold(config: dict, folds: int, fold: int) -> dict:
    """A copy of ``config`` validating on fold ``fold`` of ``folds``."""
    config = dict(config)
    data_loader = dict(config["data_loader"])
    data_loader["args"] = {**(data_loader.get("args") or {}), "folds": folds, "fold": fold}
    config["data_loader"] = data_loader
    return config


def _in_round(config: dict, study: StudyPaths) -> dict:
    """A fold config of ``study``'s round: without the ``pseudo`` block, with its round's pseudo-labels."""
    plan = PseudoPlan.from_config(config.get("pseudo"))
    config = {key: value for key, value in config.items() if key != "pseudo"}
    if study.round_number == 0:
        return config
    data_loader = dict(config["data_loader"])
    data_loader["args"] = {**(data_loader.get("args") or {}), **plan.data_loader_args(study.pseudo_csv)}
    return {**config, "data_loader": data_loader}


def create_study(config: dict, folds: int, overrides: Sequence[str] = ()) -> StudyPaths:
    """Check ``config`` with ``folds`` (reading its data once) and make the study folder.

    Raises:
        ConfigError: a bad config, a data loader without folds, more folds than images, a bad ``pseudo`` block.
    """
    config = experiment.prepare_config(_with_fold(config, folds, 0), overrides)
    plan = PseudoPlan.from_config(config["pseudo"])
    check_split(config)
    study = StudyPaths(new_folder(config["save_dir"], config["name"]))
    try:
        study.root.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"save_dir: cannot create {study.root}: {exc.strerror or exc}") from None
    dump_config(config, study.config)
    study.initialise(folds, plan.rounds if plan else 0)
    logger.info("study folder: %s (%d folds%s)", study.root, folds,
                f", {plan.rounds} pseudo-label round(s) over {plan.images}" if plan else "")
    return study


def check_split(config: dict) -> None:
    """Read the data and split it as fold 0 will, so a bad ``folds`` fails before training starts."""
    from sever.data_loader.data_loaders import config_split

    config_split(config["data_loader"]["args"], classes=config["classes"], class_names=config.get("class_names"),
                 seed=config["seed"])


def fold_config(study: StudyPaths, fold: int) -> dict:
    """The study's config validating on ``fold`` in ``study``'s round."""
    study.check_fold(fold)
    return _in_round(_with_fold(load_config(study.config), study.folds, fold), study)


def unfinished(study: StudyPaths) -> list[int]:
    """Folds not ``done``: pending, interrupted (``running``) or failed."""
    return [entry.fold for entry in study.entries() if entry.status != "done"]


def fold_key(study: StudyPaths, fold: int) -> str:
    """``round<r>/fold<k>``: the fold's name in the time budget's ledger."""
    return f"round{study.round_number}/fold{fold}"


def still_to_train(study: StudyPaths) -> list[str]:
    """The ledger keys of every fold not done, in ``study``'s round and the later ones."""
    return [fold_key(study.at_round(r), fold) for r in range(study.round_number, study.rounds + 1)
            for fold in unfinished(study.at_round(r))]


def budget_overrides(study: StudyPaths, fold: int, overrides: Sequence[str]) -> list[str]:
    """``overrides`` with the fold's share of the study's time budget as its ``trainer.time_budget``.

    Raises:
        BudgetSpent: nothing is left of the budget for this fold.
    """
    seconds = study.reserve(fold_key(study, fold), still_to_train(study))
    if seconds is None:
        return list(overrides)
    if seconds <= 0:
        study.charge(fold_key(study, fold), 0.0)
        raise BudgetSpent(f"{study.root}: the study's trainer.time_budget is spent ({study.spent():.0f} s) with "
                          f"fold {fold} of round {study.round_number} still to train; give more with sever train "
                          f"-r {study.root} --set trainer.time_budget=DURATION")
    training = max(seconds - study.overhead(), 1.0)  # the fold's wall time is charged, its run counts training
    logger.info("fold %d of round %d: %.0f s of the study's time budget, %.0f s of it training", fold,
                study.round_number, seconds, training)
    return [*overrides, f"trainer.time_budget={round(training, 1):g}s"]


def train_fold(study: StudyPaths, fold: int, overrides: Sequence[str] = ()) -> RunPaths:
    """Train (or resume from its newest checkpoint) one fold of ``study``'s round, then write its out-of-fold maps.

    Under torchrun every rank trains; rank 0 alone records the status and predicts.
    An interrupted fold stays ``running`` (the next ``-r STUDY`` resumes it); one that
    raises is ``failed`` and the error goes on. With a time budget the fold trains for
    its share (:func:`budget_overrides`) and the time it took is charged to the study,
    interrupted or not.
    """
    config = fold_config(study, fold)
    is_main = from_environment().is_main
    run = RunPaths(study.fold_dir(fold))
    overrides = budget_overrides(study, fold, overrides)
    given = _given_budget(overrides)
    started = CLOCK()
    if is_main:
        study.set_status(fold, "running")
    try:
        if run.last.is_file() or run.saved_epochs():
            logger.info("fold %d: resuming %s", fold, run.root)
            experiment.resume(run.root, overrides)
        else:
            experiment.train(config, overrides, run_dir=run.root)
        if is_main:
            write_oof(study, fold)
    except TrainingInterrupted:
        raise  # stays running: the next -r STUDY resumes it
    except Exception:
        if is_main:
            study.set_status(fold, "failed")
        raise
    finally:
        if is_main:
            elapsed = CLOCK() - started
            study.charge(fold_key(study, fold), elapsed)
    if is_main:
        study.set_status(fold, "done")
        if given is not None:
            study.note_overhead(fold_key(study, fold), elapsed - given)
    return run


def _given_budget(overrides: Sequence[str]) -> float | None:
    """The seconds of the last ``trainer.time_budget=`` override, or None without one."""
    values = [item.split("=", 1)[1] for item in overrides if item.startswith("trainer.time_budget=")]
    return parse_duration(values[-1], "trainer.time_budget") if values else None


def write_oof(study: StudyPaths, fold: int) -> Path | None:
    """Predict the fold's validation images with its best checkpoint into ``fold{k}/oof/`` (uint8 ``.npz``).

    Tasks whose runs do not predict pixels (``Task.ensemble_option`` other than ``-m``) keep none.
    """
    from sever.inference.evaluate import predictor_split
    from sever.inference.outputs import write_predictions
    from sever.inference.predictor import build_predictor, load_settings

    run = study.fold_dir(fold)
    config = load_config(RunPaths(run).config)
    if task_of(config).ensemble_option != "-m":
        return None
    args = config["data_loader"].get("args") or {}
    predictor = build_predictor([run], device=config["device"])
    paths, _ = predictor_split(predictor)
    oof = study.oof_dir(fold)
    shutil.rmtree(oof, ignore_errors=True)  # a retried fold rewrites all of it
    batches = predictor.predict_files(paths, args.get("valid_batch_size") or args.get("batch_size", 8),
                                      args.get("num_workers", 2), description=f"fold {fold} out-of-fold")
    write_predictions(batches, load_settings(None, predictor.classes, False), run / "oof.csv", save_probs=oof,
                      outputs=predictor.outputs)
    logger.info("fold %d: out-of-fold probabilities of %d images in %s", fold, len(paths), oof)
    return oof


# ----------------------------------------------------------------------------- several folds


def fold_slots(parallel: int, nproc: int, gpus: int) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` fold slots: which GPUs it sees.

    Slot i gets GPUs ``i*nproc .. (i+1)*nproc-1`` through ``CUDA_VISIBLE_DEVICES`` when the
    machine has ``gpus`` >= ``parallel * nproc`` of them; without GPUs (CPU training) the
    slots see nothing new.

    Raises:
        ConfigError: some GPUs, but fewer than the slots need.
    """
    if gpus == 0:
        return [{} for _ in range(parallel)]
    if parallel * nproc > gpus:
        raise ConfigError(f"--parallel {parallel} x --nproc {nproc} needs {parallel * nproc} GPUs; this machine "
                          f"has {gpus}")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(str(i * nproc + g) for g in range(nproc))} for i in range(parallel)]


def run_queue(folds: Sequence[int], slots: Sequence[Mapping[str, str]],
              launch: Callable[[int, Mapping[str, str]], int]) -> dict[int, int]:
    """Run every fold in one of the slots, each slot taking the next fold from a queue when free.

    Args:
        folds: the folds to run, in order.
        slots: one environment per slot (:func:`fold_slots`); as many folds run at once.
        launch: runs one fold in a slot's environment and returns its exit status.

    Returns:
        fold -> exit status.
    """
    waiting: queue.Queue[int] = queue.Queue()
    for fold in folds:
        waiting.put(fold)
    results: dict[int, int] = {}

    def worker(environment: Mapping[str, str]) -> None:
        while True:
            try:
                fold = waiting.get_nowait()
            except queue.Empty:
                return
            results[fold] = launch(fold, environment)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def fold_command(study: StudyPaths, fold: int, nproc: int, overrides: Sequence[str], debug: bool) -> list[str]:
    """``sever train -r STUDY --fold k`` in a new process (under torchrun with ``nproc`` > 1)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return [*launcher, "-m", "sever", *(["--debug"] if debug else []), "train", f"--resume={study.root}",
            f"--fold={fold}", *(f"--set={o}" for o in overrides)]


def run_study(study: StudyPaths, folds: Sequence[int] | None = None, overrides: Sequence[str] = (),
              parallel: int = 1, nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Train a study: every round's unfinished folds (default), or ``folds`` of its current round.

    A whole run goes round by round (:func:`run_round`); ``folds`` (``--fold k``, and
    each fold process of ``--parallel``) trains those folds of the first round with an
    unfinished fold and nothing else.

    Raises:
        StudyFailed: naming every fold that failed and its log.
        BudgetSpent: the study's time budget ran out with folds still to train.
    """
    study = StudyPaths(study.root)
    config = study_config(study, overrides)
    if config["trainer"]["time_budget"] is not None:
        study.set_budget(parse_duration(config["trainer"]["time_budget"], "trainer.time_budget"),
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
    return study


def current_round(study: StudyPaths) -> int:
    """The first round with a fold not done (the last round when all are)."""
    return next((r for r in range(study.rounds + 1) if unfinished(study.at_round(r))), study.rounds)


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


def train_folds(study: StudyPaths, folds: Sequence[int], overrides: Sequence[str] = (), parallel: int = 1,
                nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Train ``folds`` of ``study``'s round, in this process or ``parallel`` fold processes."""
    import torch

    for fold in folds:
        study.check_fold(fold)
    if parallel == 1 and nproc == 1:
        for fold in folds:
            train_fold(study, fold, overrides)
        return study
    slots = fold_slots(parallel, nproc, torch.cuda.device_count())

    def launch(fold: int, environment: Mapping[str, str]) -> int:
        command = fold_command(study, fold, nproc, overrides, debug)
        logger.info("fold %d: %s %s", fold, " ".join(f"{k}={v}" for k, v in environment.items()), " ".join(command))
        status = subprocess.run(command, env={**os.environ, **environment}, check=False).returncode
        if status != 0 and fold in unfinished(study):
            study.set_status(fold, "failed")  # a process killed before it could say so
        return status

    results = run_queue(folds, slots, launch)
    failed = sorted(fold for fold, status in results.items() if status != 0)
    if failed:
        logs = ", ".join(f"fold {fold} ({RunPaths(study.fold_dir(fold)).log_file})" for fold in failed)
        raise StudyFailed(f"{study.root}: {len(failed)} fold(s) failed: {logs}; sever train -r {study.root} "
                          f"retries them")
    return study


def tune_round(study: StudyPaths, config: dict) -> None:
    """Tune ``study``'s round on its out-of-fold maps: its ``postprocess.yml`` and its out-of-fold score.

    Skipped (and said so) with ``trainer.tune_postprocess: false`` or for a task without
    pixel predictions; the round then has no score.
    """
    if not config["trainer"]["tune_postprocess"] or task_of(config).ensemble_option != "-m":
        logger.info("round %d: not tuned out-of-fold (trainer.tune_postprocess is false or a %s study)",
                    study.round_number, config["task"])
        return
    from sever.inference.tune import DEFAULT_MIN_PIXELS, DEFAULT_THRESHOLDS, search_widening, statistics_from_saved

    args = config["data_loader"].get("args") or {}
    stats = statistics_from_saved(oof_sources(study), None, DEFAULT_THRESHOLDS, config.get("class_names"),
                                  args.get("valid_batch_size") or args.get("batch_size", 8))
    result = search_widening(stats, DEFAULT_MIN_PIXELS)
    result.write(study.postprocess, f"the out-of-fold probabilities of {study.root} round {study.round_number}")
    score = float(result.best_scores.mean())
    study.record(score=score, class_scores=[float(v) for v in result.best_scores],
                 default_score=float(result.base_scores.mean()))
    logger.info("round %d: out-of-fold score %.4f (competition metric, tuned; %.4f with the default "
                "post-processing); wrote %s\n%s", study.round_number, score, float(result.base_scores.mean()),
                study.postprocess, result.summary())


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
    started = CLOCK()
    predictor = build_predictor([entry.run for entry in previous.entries()], tta=plan.tta, device=config["device"])
    tuned = previous.postprocess if previous.postprocess.is_file() else None
    settings = load_settings(tuned, predictor.classes, False)
    args = config["data_loader"].get("args") or {}
    temporary = study.pseudo_csv.with_name(f".{study.pseudo_csv.name}.partial")
    result = pseudo_label(predictor, settings, plan.images, temporary, plan.rule,
                          args.get("valid_batch_size") or args.get("batch_size", 8), args.get("num_workers", 2),
                          classes=config["classes"])
    study.charge(f"round{study.round_number}/pseudo-label", CLOCK() - started)
    if result.kept == 0:
        temporary.unlink(missing_ok=True)
        raise NothingConfident(f"{study.root}: round {study.round_number}: no image of {plan.images} was confident "
                               f"enough to pseudo-label; loosen pseudo.max_uncertain, low or high in {study.config}, "
                               f"then sever train -r {study.root}")
    os.replace(temporary, study.pseudo_csv)
    study.record(pseudo_images=result.kept, pseudo_dropped=result.dropped,
                 pseudo_class_images=[int(v) for v in result.class_images])
    logger.info("round %d: %s", study.round_number, result.describe(predictor.class_names))


def train_study(config: dict, folds: int, only: int | None = None, overrides: Sequence[str] = (),
                parallel: int = 1, nproc: int = 1, debug: bool = False,
                expected_overhead: float | None = None) -> StudyPaths:
    """Make a study of ``config`` with ``folds`` folds and train them all (or only fold ``only``).

    ``expected_overhead``: seconds a fold is expected to take beyond its training (``sever
    auto`` passes its plan's estimate), taken from the first folds' shares until one has
    finished and measured it; without it the first folds train their whole share.
    """
    if only is not None and not 0 <= only < folds:
        raise ConfigError(f"--fold {only}: must be one of 0..{folds - 1} (--folds {folds})")
    study = create_study(config, folds, overrides)
    if expected_overhead is not None:
        study.expect_overhead(expected_overhead)
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)


def resume_study(path: str | Path, only: int | None = None, overrides: Sequence[str] = (),
                 parallel: int = 1, nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Finish a study's unfinished folds (or fold ``only``, done or not), each from its newest checkpoint."""
    study = StudyPaths(Path(path))
    if not study.file.is_file():
        raise CheckpointError(f"{path}: not a study folder (no {study.file.name})")
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)


# ----------------------------------------------------------------------------- out-of-fold


def oof_sources(path: str | Path | StudyPaths) -> list:
    """Each finished fold's out-of-fold probabilities with the true masks of its validation images.

    ``path``: a study folder (the round it predicts with) or a :class:`StudyPaths` of one round.

    Returns:
        ``[(SavedProbabilities, Annotations)]``, one per fold; every labelled image once.

    Raises:
        CheckpointError: a fold not done or without its ``oof/`` folder, naming it.
    """
    from sever.inference.evaluate import validation_split
    from sever.inference.outputs import SavedProbabilities

    study = path if isinstance(path, StudyPaths) else StudyPaths(Path(path))
    sources = []
    for entry in study.entries():
        oof = study.oof_dir(entry.fold)
        if entry.status != "done" or not oof.is_dir():
            raise CheckpointError(f"{study.root}: fold {entry.fold} has no out-of-fold probabilities "
                                  f"({entry.status}, {oof}); finish it with sever train -r {study.root}")
        _, truth = validation_split(load_config(RunPaths(entry.run).config))
        sources.append((SavedProbabilities([oof]), truth))
    return sources


def class_names(path: str | Path) -> list[str] | None:
    """The study config's ``class_names``."""
    return load_config(StudyPaths(Path(path)).config).get("class_names")
