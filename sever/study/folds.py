"""Training the folds of a study's round: one fold in this process, or several at once in fold processes.

Each fold is a normal run folder ``fold{k}/`` whose config validates on fold k of the
study's saved split (``data_loader.args.folds``/``fold``/``split_file``, :mod:`sever.study.splits`).
When a fold has trained, its best checkpoint predicts the fold's validation images and
the uint8 maps go to ``fold{k}/oof/`` (the ``--save-probs`` format): together the folds
score every labelled image with a model that never saw it (:mod:`sever.study.tuning`).

Folds run one after another in this process, or ``parallel`` at a time as separate
``sever train -r STUDY --fold k`` processes, each slot pinned to its GPU(s) through
``CUDA_VISIBLE_DEVICES`` (:func:`fold_slots`, :func:`run_queue`). With ``nproc`` > 1
each fold trains with DDP over ``nproc`` GPUs (under torchrun); both combine, slot i
taking GPUs ``i*nproc .. (i+1)*nproc-1``.

**Time budget.** ``trainer.time_budget`` of a study is the whole study's: each fold,
when it starts, gets an equal share of what is left of it (``budget * parallel`` slot
seconds, less what finished folds and pseudo-labelling took and what folds in training
reserved) among the folds still to train in this and the later rounds. A fold's wall time
is charged, but its run's clock counts training only, so the run's ``trainer.time_budget``
is the share less the mean overhead (set-up, self-tuning, report, out-of-fold maps) of the
folds that finished, or before any has, the overhead the study was told to expect
(``sever auto`` gives its plan's; :meth:`~sever.study.folder.StudyPaths.overhead`). A fold that ends
early leaves its saving to the next ones; the study file keeps the seconds spent, so a
resumed study shares what is left. Time is measured with :data:`sever.study.folder.CLOCK`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sever import experiment
from sever.exceptions import ConfigError, Interrupted
from sever.study import folder
from sever.study.folder import BudgetSpent, StudyFailed, StudyPaths, unfinished
from sever.study.rounds import round_config
from sever.tasks import task_of
from sever.utils import interrupt, time_budget
from sever.utils.config import load_config
from sever.utils.distributed import from_environment, torchrun_command
from sever.utils.run import RunPaths

logger = logging.getLogger(__name__)


def with_fold(config: dict, folds: int, fold: int, split_file: Path | None = None) -> dict:
    """A copy of ``config`` validating on fold ``fold`` of ``folds`` (of the split saved in ``split_file``)."""
    config = dict(config)
    data_loader = dict(config["data_loader"])
    saved = {} if split_file is None else {"split_file": str(split_file.resolve())}
    data_loader["args"] = {**(data_loader.get("args") or {}), "folds": folds, "fold": fold, **saved}
    config["data_loader"] = data_loader
    return config


def fold_config(study: StudyPaths, fold: int) -> dict:
    """The study's config validating on ``fold`` of its saved split, in ``study``'s round."""
    study.check_fold(fold)
    return round_config(with_fold(load_config(study.config), study.folds, fold, study.splits), study)


def fold_key(study: StudyPaths, fold: int) -> str:
    """``round<r>/fold<k>``: the fold's name in the time budget's ledger."""
    return f"round{study.round_number}/fold{fold}"


def still_to_train(study: StudyPaths) -> list[str]:
    """The ledger keys of every fold not done, in ``study``'s round and the later ones, and of the final
    model (:mod:`sever.study.final`) while it is not done."""
    folds = [fold_key(study.at_round(r), fold) for r in range(study.round_number, study.rounds + 1)
             for fold in unfinished(study.at_round(r))]
    final = study.final_entry()
    return folds + ([folder.FINAL_RUN] if final is not None and final.status != "done" else [])


def share_overrides(study: StudyPaths, key: str, what: str, overrides: Sequence[str], alone: bool = False) -> list[str]:
    """``overrides`` with the share of the study's time budget reserved for ``key`` (``what``: its name in
    messages; ``alone``: see :meth:`~sever.study.folder.StudyPaths.reserve`) as its ``trainer.time_budget``.

    Raises:
        BudgetSpent: nothing is left of the budget for it.
    """
    seconds = study.reserve(key, still_to_train(study), alone)
    if seconds is None:
        return list(overrides)
    if seconds <= 0:
        study.charge(key, 0.0)
        raise BudgetSpent(f"{study.root}: the study's trainer.time_budget is spent ({study.spent():.0f} s) with "
                          f"{what} still to train; give more with sever train -r {study.root} --set "
                          f"trainer.time_budget=DURATION")
    training = time_budget.fold_training(seconds, study.overhead(), floor=time_budget.MIN_FOLD_TRAINING)
    logger.info("%s: %.0f s of the study's time budget, %.0f s of it training", what, seconds, training)
    return [*overrides, f"trainer.time_budget={round(training, 1):g}s"]


def train_fold(study: StudyPaths, fold: int, overrides: Sequence[str] = ()) -> RunPaths:
    """Train (or resume from its newest checkpoint) one fold of ``study``'s round, then write its out-of-fold maps.

    Under torchrun every rank trains; rank 0 alone records the status and predicts.
    An interrupted fold stays ``running`` (the next ``-r STUDY`` resumes it); one that
    raises is ``failed`` and the error goes on. With a time budget the fold trains for
    its share (:func:`share_overrides`) and the time it took is charged to the study,
    interrupted or not.
    """
    run = RunPaths(study.fold_dir(fold))
    train_share(study, fold_key(study, fold), f"fold {fold} of round {study.round_number}", run,
                fold_config(study, fold), overrides, lambda status: study.set_status(fold, status),
                lambda deadline: write_oof(study, fold, deadline))
    return run


def train_share(study: StudyPaths, key: str, what: str, run: RunPaths, config: dict, overrides: Sequence[str],
                set_status: Callable[[str], None], finish: Callable[[time_budget.Deadline | None], object],
                alone: bool = False) -> None:
    """Train ``run`` from ``config`` (or resume it from its newest checkpoint) for the share of the study's time
    budget reserved for ``key`` (:func:`share_overrides`; ``what`` names it), then ``finish(deadline)`` it.

    ``set_status`` records ``running``, then ``done``, or ``failed`` when it raised (an interrupted run stays
    ``running``); the wall time is charged to ``key``, interrupted or not, and what it took beyond its
    training is noted as its overhead. Under torchrun every rank trains; rank 0 alone records and finishes.
    """
    is_main = from_environment().is_main
    overrides = share_overrides(study, key, what, overrides, alone)
    given = _given_budget(overrides)
    started = folder.CLOCK()
    deadline = share_deadline(study, key, started)
    if is_main:
        set_status("running")
    try:
        if run.last.is_file() or run.saved_epochs():
            logger.info("%s: resuming %s", what, run.root)
            experiment.resume(run.root, overrides, deadline=deadline)
        else:
            experiment.train(config, overrides, run_dir=run.root, deadline=deadline)
        if is_main:
            finish(deadline)
    except Interrupted:
        raise  # training, its report or what finishes it stopped on a signal: stays running, -r STUDY resumes it
    except Exception:
        if is_main:
            set_status("failed")
        raise
    finally:
        if is_main:
            elapsed = folder.CLOCK() - started
            study.charge(key, elapsed)
    if is_main:
        set_status("done")
        if given is not None:
            study.note_overhead(key, elapsed - given)


def share_deadline(study: StudyPaths, key: str, started: float) -> time_budget.Deadline | None:
    """When the share of the study's time reserved for ``key`` (a fold's ledger key) ends, counted from
    ``started`` (on :data:`folder.CLOCK`, when it reserved the share); None without a budget.

    The fold's run ends its self-tuning and report by it.
    """
    share = study.reservation(key)
    return None if share is None else time_budget.Deadline(share, clock=folder.CLOCK, start=started)


def _stop_fold_processes(processes: Sequence[subprocess.Popen], signum: int, grace: float = 25.0) -> None:
    """Pass a stop to the fold processes still running (Kubernetes signals PID 1 only) and wait for
    them to save, at most ``grace`` seconds (the ~30 s a scheduler gives), then kill what is left."""
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        process.send_signal(signum)  # one that had it too ignores the repeat (sever.utils.interrupt.REPEAT_S)
    deadline = time.monotonic() + grace
    for process in alive:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()


def _given_budget(overrides: Sequence[str]) -> float | None:
    """The seconds of the last ``trainer.time_budget=`` override, or None without one."""
    values = [item.split("=", 1)[1] for item in overrides if item.startswith("trainer.time_budget=")]
    return time_budget.parse_budget(values[-1], "trainer.time_budget") if values else None


def write_oof(study: StudyPaths, fold: int, deadline: time_budget.Deadline | None = None) -> Path | None:
    """Predict the fold's validation images with its best checkpoint into ``fold{k}/oof/`` (uint8 ``.npz``).

    Tasks whose runs do not predict pixel maps (``Task.pixel_maps`` false) keep none. With a
    ``deadline`` (the fold's share of the study's time, or any stop condition) the images come in
    :func:`~sever.utils.time_budget.spread_order` and, once an even
    :data:`~sever.utils.time_budget.SPREAD`-th of them is written, the pass stops when it comes
    (said so): the study's tuning then reads an even subset of this fold's images.
    """
    from sever.inference.evaluate import predictor_split
    from sever.inference.outputs import write_predictions
    from sever.inference.predictor import build_predictor, load_settings

    run = study.fold_dir(fold)
    config = load_config(RunPaths(run).config)
    if not task_of(config).pixel_maps:
        return None
    args = config["data_loader"].get("args") or {}
    predictor = build_predictor([run], device=config["device"])
    paths, _ = predictor_split(predictor)
    oof = study.oof_dir(fold)
    shutil.rmtree(oof, ignore_errors=True)  # a retried fold rewrites all of it
    if deadline is not None:
        paths = [paths[i] for i in time_budget.spread_order(len(paths))]
    batches = predictor.predict_files(paths, args.get("valid_batch_size") or args.get("batch_size", 8),
                                      args.get("num_workers", 2), description=f"fold {fold} out-of-fold")
    batches = time_budget.until_deadline(batches, deadline, len(paths), f"fold {fold}: out-of-fold maps",
                                         lambda batch: len(batch.names), at_least=len(paths) // time_budget.SPREAD)
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

    stopped = threading.Event()

    def worker(environment: Mapping[str, str]) -> None:
        while interrupt.requested() is None and not stopped.is_set():  # after a stop no slot starts another fold
            try:
                fold = waiting.get_nowait()
            except queue.Empty:
                return
            results[fold] = launch(fold, environment)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # wakes up to run a signal's handler, which only the main thread runs
                thread.join(timeout=0.2)
    except BaseException:  # a stop (SIGTERM, Ctrl-C) raised while waiting
        stopped.set()
        raise
    return results


def fold_command(study: StudyPaths, fold: int, nproc: int, overrides: Sequence[str], debug: bool) -> list[str]:
    """``sever train -r STUDY --fold k`` in a new process (under torchrun with ``nproc`` > 1)."""
    return torchrun_command(nproc, [*(["--debug"] if debug else []), "train", f"--resume={study.root}",
                                    f"--fold={fold}", *(f"--set={o}" for o in overrides)])


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

    running: list[subprocess.Popen] = []

    def launch(fold: int, environment: Mapping[str, str]) -> int:
        command = fold_command(study, fold, nproc, overrides, debug)
        logger.info("fold %d: %s %s", fold, " ".join(f"{k}={v}" for k, v in environment.items()), " ".join(command))
        process = subprocess.Popen(command, env={**os.environ, **environment})
        running.append(process)
        status = process.wait()
        if status != 0 and fold in unfinished(study) and interrupt.requested() is None:
            study.set_status(fold, "failed")  # a process killed before it could say so
        return status

    try:
        results = run_queue(folds, slots, launch)
    except Interrupted as stop:
        _stop_fold_processes(running, stop.signal_number)
        raise
    failed = sorted(fold for fold, status in results.items() if status != 0)
    if failed:
        logs = ", ".join(f"fold {fold} ({RunPaths(study.fold_dir(fold)).log_file})" for fold in failed)
        raise StudyFailed(f"{study.root}: {len(failed)} fold(s) failed: {logs}; sever train -r {study.root} "
                          f"retries them")
    return study
