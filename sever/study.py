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
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sever import main
from sever.exceptions import CheckpointError, ConfigError, SeverError, TrainingInterrupted
from sever.tasks import task_of
from sever.utils.config import dump_config, load_config
from sever.utils.distributed import from_environment
from sever.utils.run import RunPaths, new_folder
from sever.utils.study import StudyPaths

logger = logging.getLogger(__name__)


class StudyFailed(SeverError):
    """Some folds of a study failed to train; their logs say why."""


def _with_fold(config: dict, folds: int, fold: int) -> dict:
    """A copy of ``config`` validating on fold ``fold`` of ``folds``."""
    config = dict(config)
    data_loader = dict(config["data_loader"])
    data_loader["args"] = {**(data_loader.get("args") or {}), "folds": folds, "fold": fold}
    config["data_loader"] = data_loader
    return config


def create_study(config: dict, folds: int, overrides: Sequence[str] = ()) -> StudyPaths:
    """Check ``config`` with ``folds`` (reading its data once) and make the study folder.

    Raises:
        ConfigError: a bad config, a data loader without folds, more folds than images.
    """
    config = main.prepare_config(_with_fold(config, folds, 0), overrides)
    check_split(config)
    study = StudyPaths(new_folder(config["save_dir"], config["name"]))
    try:
        study.root.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"save_dir: cannot create {study.root}: {exc.strerror or exc}") from None
    dump_config(config, study.config)
    study.initialise(folds)
    logger.info("study folder: %s (%d folds)", study.root, folds)
    return study


def check_split(config: dict) -> None:
    """Read the data and split it as fold 0 will, so a bad ``folds`` fails before training starts."""
    from sever.data_loader.data_loaders import config_split

    config_split(config["data_loader"]["args"], classes=config["classes"], class_names=config.get("class_names"),
                 seed=config["seed"])


def fold_config(study: StudyPaths, fold: int) -> dict:
    """The study's config validating on ``fold``."""
    study.check_fold(fold)
    return _with_fold(load_config(study.config), study.folds, fold)


def unfinished(study: StudyPaths) -> list[int]:
    """Folds not ``done``: pending, interrupted (``running``) or failed."""
    return [entry.fold for entry in study.entries() if entry.status != "done"]


def train_fold(study: StudyPaths, fold: int, overrides: Sequence[str] = ()) -> RunPaths:
    """Train (or resume from its newest checkpoint) one fold, then write its out-of-fold maps.

    Under torchrun every rank trains; rank 0 alone records the status and predicts.
    An interrupted fold stays ``running`` (the next ``-r STUDY`` resumes it); one that
    raises is ``failed`` and the error goes on.
    """
    config = fold_config(study, fold)
    is_main = from_environment().is_main
    run = RunPaths(study.fold_dir(fold))
    if is_main:
        study.set_status(fold, "running")
    try:
        if run.last.is_file() or run.saved_epochs():
            logger.info("fold %d: resuming %s", fold, run.root)
            main.resume(run.root, overrides)
        else:
            main.train(config, overrides, run_dir=run.root)
        if is_main:
            write_oof(study, fold)
    except TrainingInterrupted:
        raise  # stays running: the next -r STUDY resumes it
    except Exception:
        if is_main:
            study.set_status(fold, "failed")
        raise
    if is_main:
        study.set_status(fold, "done")
    return run


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
    write_predictions(batches, load_settings(None, predictor.classes, False), run / "oof.csv", save_probs=oof)
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
    """Train ``folds`` (default: the unfinished ones) of a study, in this process or in fold processes.

    Raises:
        StudyFailed: naming every fold that failed and its log.
    """
    import torch

    folds = list(unfinished(study) if folds is None else folds)
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


def train_study(config: dict, folds: int, only: int | None = None, overrides: Sequence[str] = (),
                parallel: int = 1, nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Make a study of ``config`` with ``folds`` folds and train them all (or only fold ``only``)."""
    if only is not None and not 0 <= only < folds:
        raise ConfigError(f"--fold {only}: must be one of 0..{folds - 1} (--folds {folds})")
    study = create_study(config, folds, overrides)
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)


def resume_study(path: str | Path, only: int | None = None, overrides: Sequence[str] = (),
                 parallel: int = 1, nproc: int = 1, debug: bool = False) -> StudyPaths:
    """Finish a study's unfinished folds (or fold ``only``, done or not), each from its newest checkpoint."""
    study = StudyPaths(Path(path))
    if not study.file.is_file():
        raise CheckpointError(f"{path}: not a study folder (no {study.file.name})")
    return run_study(study, None if only is None else [only], overrides, parallel, nproc, debug)


# ----------------------------------------------------------------------------- out-of-fold


def oof_sources(path: str | Path) -> list:
    """Each finished fold's out-of-fold probabilities with the true masks of its validation images.

    Returns:
        ``[(SavedProbabilities, Annotations)]``, one per fold; every labelled image once.

    Raises:
        CheckpointError: a fold not done or without its ``oof/`` folder, naming it.
    """
    from sever.inference.evaluate import validation_split
    from sever.inference.outputs import SavedProbabilities

    study = StudyPaths(Path(path))
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
