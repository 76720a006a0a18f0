"""The generic training loop: epochs, monitoring, early stopping, checkpoints.

Subclasses implement one epoch of training and of validation; everything that
is the same for every task lives here.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from sever import __version__
from sever.exceptions import CheckpointError, ConfigError, Interrupted, TrainingError, TrainingInterrupted
from sever.model.scheduler import set_horizon, step_scheduler
from sever.trainer.budget import TimeBudget
from sever.utils.checkpoint import atomic_torch_save
from sever.utils.config import parse_duration
from sever.utils import interrupt
from sever.utils.distributed import Distributed
from sever.utils.progress import format_duration
from sever.utils.run import RunPaths
from sever.utils.time_budget import Deadline

logger = logging.getLogger(__name__)


class BaseTrainer(abc.ABC):
    """Runs epochs, tracks the monitored metric and writes checkpoints.

    Args:
        model: the network (a :class:`~sever.model.base.BaseModel`).
        optimizer: its optimiser, parameter groups named ``encoder``/``decoder``.
        lr_scheduler: stepped once per epoch, or None.
        config: the validated experiment config (saved in every checkpoint).
        run: the run folder to write to.
    """

    def __init__(self, model, optimizer, lr_scheduler, config: dict, run: RunPaths,
                 distributed: Distributed = Distributed()):
        self.model = model
        self.dist = distributed
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.config = config
        self.run = run
        options = config["trainer"]
        self.epochs = options["epochs"]
        self.save_period = options["save_period"]
        self.early_stop = options["early_stop"]
        self.val_period = options["val_period"]
        self.start_val_epoch = options["start_val_epoch"]
        self.freeze_encoder_epochs = options["freeze_encoder_epochs"]
        self.monitor_mode, self.monitor_metric = self._parse_monitor(options["monitor"])
        self.monitor_best = self._worst_score()
        self.best_epoch: int | None = None
        self.not_improved = 0
        self.start_epoch = 1
        self.start_step = 0
        self.writer = SummaryWriter(str(run.tensorboard)) if options["tensorboard"] and distributed.is_main else None
        self._stop_signal: int | None = None
        # asked between the batches of a long pass (validation) besides the time budget: a reason to stop, or None
        self.stop_conditions: list[Callable[[], str | None]] = []
        self._started: tuple[float, int] | None = None  # (time.monotonic(), epoch) when train() began
        budget = options["time_budget"]
        self.budget = TimeBudget(parse_duration(budget, "trainer.time_budget")) if budget is not None else None

    # ------------------------------------------------------------------ subclass API

    @abc.abstractmethod
    def _train_epoch(self, epoch: int, start_step: int) -> dict[str, float]:
        """Train one epoch from batch ``start_step``; return the epoch's logged values.

        Keeps :attr:`steps_done` at the number of batches finished. Must call
        :meth:`_stop_agreed` after each optimiser step and, when it says so,
        set :attr:`interrupted` and return early.
        """

    @abc.abstractmethod
    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        """Validate; return metrics prefixed ``val_``."""

    def _extra_state(self) -> dict[str, Any]:
        """Task state to checkpoint beside the model (e.g. EMA weights, AMP scaler)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved."""

    # ------------------------------------------------------------------ the loop

    @property
    def stop_requested(self) -> bool:
        """Whether a signal asked this process to stop (:mod:`sever.utils.interrupt`)."""
        if self._stop_signal is None:
            self._stop_signal = interrupt.requested()
        return self._stop_signal is not None

    def _stop_agreed(self) -> bool:
        """Whether to stop now; in distributed training every rank stops at the same step."""
        return self.dist.any(self.stop_requested)

    def train(self) -> dict[str, float]:
        """Train from :attr:`start_epoch` to the last epoch; return the last epoch's log."""
        log: dict[str, float] = {}
        self._started = (time.monotonic(), self.start_epoch)
        self._write_run_description()
        if self.budget is not None:
            self.budget.start()
        with interrupt.listening():
            for epoch in range(self.start_epoch, self.epochs + 1):
                if self.budget is not None and self.budget.final_epoch is not None and epoch > self.budget.final_epoch:
                    break  # a resumed run whose budget had ended
                self._apply_encoder_freeze(epoch)
                start_step, self.start_step = self.start_step, 0
                self.steps_done, self.interrupted = 0, False
                log = {"epoch": epoch, **self._train_epoch(epoch, start_step)}
                if self.interrupted:
                    self._save_interrupted(epoch)
                    self._raise_interrupted(f"stopped at epoch {epoch} after {self.steps_done} batches")
                if self.budget is not None:
                    self.budget.end_pass(self.steps_done - start_step)
                self._plan_budget(epoch)
                if self._should_validate(epoch):
                    log.update(self._validate(epoch))
                learning_rates = self._learning_rates()  # the rates this epoch trained with
                step_scheduler(self.lr_scheduler, log, self.monitor_metric)
                improved = self._update_monitor(log)
                self._log_epoch(log, learning_rates)
                if self.budget is not None:
                    self.budget.end_epoch()
                    if epoch < self.epochs and not self._epoch_fits(epoch + 1):
                        self.budget.final_epoch = epoch
                self._save_epoch(epoch, improved)
                if self._stop_agreed():
                    self._raise_interrupted(f"stopped after epoch {epoch}")
                if self.early_stop and self.not_improved >= self.early_stop:
                    logger.info(
                        "early stopping: %s has not improved for %d validations (best %.5f)",
                        self.monitor_metric, self.not_improved, self.monitor_best,
                    )
                    break
                if self.budget is not None and self.budget.final_epoch == epoch:
                    logger.info("time budget: %.0f s of %.0f s spent; training ends after epoch %d",
                                self.budget.spent, self.budget.seconds, epoch)
                    break
        self._log_finish()
        if self.writer is not None:
            self.writer.file_writer.add_summary(self._hparams()[2])  # the session ended normally
            self.writer.close()
        return log

    def _epoch_fits(self, epoch: int) -> bool:
        """At the end of the epoch before ``epoch``: whether ``epoch`` can still train a useful share and finish
        its validation, expected from the measured validations scaled to the machine's speed now (said so when not).

        The plan made after the training pass (:meth:`_plan_budget`) decides this too, but a
        validation slower than expected can spend what that plan counted on.
        """
        if self.budget.final_epoch is not None or self.budget.epoch_fits():
            return True
        logger.info("time budget: epoch %d would not finish with its validation (about %.0f s expected, %.0f s "
                    "left)", epoch, self.budget.tail, self.budget.left)
        return False

    def pass_deadline(self) -> Deadline:
        """What a long pass (validation) polls between batches: the budget's end and :attr:`stop_conditions`."""
        deadline = self.budget.deadline() if self.budget is not None else Deadline()
        for condition in self.stop_conditions:
            deadline.add(condition)
        return deadline

    def _validate(self, epoch: int) -> dict[str, float]:
        """:meth:`_valid_epoch`; a signal stops it between two batches (every rank at the same one).

        Nothing is saved then: ``last.pth`` keeps the end of epoch ``epoch - 1`` (or the batch an
        earlier stop saved), so a resume trains epoch ``epoch`` again and validates it. Saving the
        unvalidated epoch would need a checkpoint whose scheduler and monitor wait for a validation.
        """
        try:
            return self._valid_epoch(epoch)
        except Interrupted:
            self._raise_interrupted(f"stopped during the validation of epoch {epoch}", saved=False)

    def _out_of_time(self) -> bool:
        """During a training pass: whether the time budget leaves only this epoch's validation and checkpoint."""
        return self.budget is not None and self.budget.pass_over()

    def _plan_budget(self, epoch: int) -> None:
        """With a time budget: fix the last epoch when no other fits, and lay the schedule up to the planned end.

        Called after the training pass of ``epoch``, so the last epoch is still validated.
        Every rank takes the earliest end any rank predicts.
        """
        if self.budget is None:
            return
        planned = min(self.budget.plan(epoch), self.epochs)
        if self.dist.any(planned == epoch) and epoch < self.epochs:
            self.budget.final_epoch = planned = epoch
        # every rank agrees on planned == epoch; otherwise rank 0's expected end, so all train at one rate
        horizon = float(planned) if planned == epoch else min(self.dist.broadcast(self.budget.horizon(epoch)),
                                                              float(self.epochs))
        if set_horizon(self.lr_scheduler, horizon):
            logger.debug("time budget: the learning-rate schedule now ends at epoch %s",
                         f"{horizon:.2f}".rstrip("0").rstrip("."))

    def _learning_rates(self) -> dict[str, float]:
        """The optimiser's current learning rate per parameter group (``encoder``, ``decoder``, ...)."""
        return {group.get("name", "all"): group["lr"] for group in self.optimizer.param_groups}

    def run_eta(self, epoch: int, fraction: float) -> str:
        """Estimated time left in the whole run, ``H:MM:SS``, when ``fraction`` (0-1) of ``epoch`` is done.

        Extrapolated from the time since :meth:`train` began, validation included; ``?`` before any progress.
        """
        start, first_epoch = self._started or (time.monotonic(), epoch)
        done = epoch - first_epoch + fraction
        if done <= 0:
            return "?"
        return format_duration((self.epochs - first_epoch + 1 - done) * (time.monotonic() - start) / done)

    def _log_finish(self) -> None:
        """Say where training ended: the best monitored score and its epoch, and the run folder."""
        if self.best_epoch is not None:
            logger.info("finished: best %s %.5f at epoch %d (%s); run folder %s", self.monitor_metric,
                        self.monitor_best, self.best_epoch, self.run.best.name, self.run.root)
        else:
            logger.info("finished: run folder %s", self.run.root)

    # ------------------------------------------------------------------ TensorBoard

    def _best_tag(self) -> str:
        """The scalar holding the best monitored value so far (the hparams metric)."""
        return f"hparam/best_{self.monitor_metric}"

    def _hparams(self):
        """The HParams plugin's (experiment, session start, session end) summaries of this run.

        Hyper-parameters are the config flattened to dotted keys; the metric is the best
        monitored value, logged as the scalar :meth:`_best_tag` so runs compare in the HParams tab.
        """
        metrics = {self._best_tag(): 0.0} if self.monitor_metric else {}  # values come from the scalars
        return hparams(flatten_config(self.config), metrics)

    def _write_run_description(self) -> None:
        """Write the hparams and the config as text once, at the start of (resumed) training."""
        if self.writer is None:
            return
        experiment, session_start, _ = self._hparams()
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        text = yaml.safe_dump(self.config, sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # markdown code
        self.writer.flush()

    def _tags(self, keys) -> dict[str, str]:
        """TensorBoard tags for logged values: ``val_dice_2`` -> ``val_dice_scratches`` with ``class_names``.

        Only a family numbered exactly ``0 .. classes-1`` is per class (``val_mar_1``,
        ``val_mar_10``, ``val_mar_100`` are COCO detection limits and keep their numbers).
        """
        names = self.config.get("class_names")
        families: dict[str, set[str]] = {}  # stem -> its numbered members (val_dice_mean is not one)
        for key in keys:
            stem, _, index = key.rpartition("_")
            if index.isdigit():
                families.setdefault(stem, set()).add(index)
        per_class = {stem for stem, indices in families.items()
                     if names and indices == {str(k) for k in range(len(names))}}
        tags = {}
        for key in keys:
            stem, _, index = key.rpartition("_")
            tags[key] = f"{stem}_{names[int(index)]}" if stem in per_class and index.isdigit() else key
        return tags

    # ------------------------------------------------------------------ encoder freezing

    def _apply_encoder_freeze(self, epoch: int) -> None:
        """Freeze the encoder for the first ``freeze_encoder_epochs`` epochs."""
        frozen = epoch <= self.freeze_encoder_epochs
        if frozen == self.model.encoder_frozen:
            return
        if frozen:
            logger.info("encoder frozen for epochs 1-%d", self.freeze_encoder_epochs)
            self.model.freeze_encoder()
        else:
            logger.info("encoder unfrozen from epoch %d", epoch)
            self.model.unfreeze_encoder()
        self._trainable_changed()

    def _trainable_changed(self) -> None:
        """Hook: the set of trainable parameters changed (e.g. rebuild a DDP wrapper)."""

    def _should_validate(self, epoch: int) -> bool:
        return (
            epoch % self.val_period == 0
            or (self.start_val_epoch and epoch >= self.start_val_epoch)
            or epoch == self.epochs
            or (self.budget is not None and epoch == self.budget.final_epoch)
        )

    # ------------------------------------------------------------------ monitoring

    @staticmethod
    def _parse_monitor(monitor: str) -> tuple[str, str | None]:
        if monitor == "off":
            return "off", None
        mode, metric = monitor.split()
        return mode, metric

    def _worst_score(self) -> float:
        return {"min": math.inf, "max": -math.inf, "off": 0.0}[self.monitor_mode]

    def _update_monitor(self, log: dict[str, float]) -> bool:
        """Update the best score; True when this epoch improved it."""
        if self.monitor_mode == "off":
            return False
        if self.monitor_metric not in log:
            if any(key.startswith("val_") for key in log):
                available = ", ".join(sorted(k for k in log if k != "epoch"))
                raise ConfigError(
                    f"trainer.monitor: metric '{self.monitor_metric}' is not produced; available: {available}"
                )
            return False  # no validation this epoch
        score = log[self.monitor_metric]
        better = score < self.monitor_best if self.monitor_mode == "min" else score > self.monitor_best
        if better:
            self.monitor_best = score
            self.best_epoch = log["epoch"]
            self.not_improved = 0
        else:
            self.not_improved += 1
        return better

    def _log_epoch(self, log: dict[str, float], learning_rates: dict[str, float]) -> None:
        """Log an epoch's values and the learning rates it trained with (before the scheduler stepped)."""
        epoch = log["epoch"]
        eta = f"  (run ETA {self.run_eta(epoch, 1.0)})" if epoch < self.epochs else ""
        logger.info("epoch %d/%d  %s%s", epoch, self.epochs, _values(log, self._summary_keys(log)), eta)
        logger.debug("epoch %d/%d values  %s", epoch, self.epochs, _values(log, [k for k in log if k != "epoch"]))
        if self.writer is None:
            return
        tags = self._tags([key for key in log if key != "epoch"])
        for key, tag in tags.items():
            self.writer.add_scalar(f"epoch/{tag}", log[key], epoch)
        for name, lr in learning_rates.items():
            self.writer.add_scalar(f"lr/{name}", lr, epoch)
        if self.best_epoch is not None:
            self.writer.add_scalar(self._best_tag(), self.monitor_best, epoch)
        self.writer.flush()

    def _summary_keys(self, log: dict[str, float]) -> list[str]:
        """What the epoch line shows: the losses, the per-class Dice (validation's when there was one)
        and the monitored metric; the rest goes to TensorBoard and ``train.log``'s debug lines."""
        prefix = "val" if any(key.startswith("val_") for key in log) else "train"
        per_class = [key for key in log if re.fullmatch(f"{prefix}_dice_\\d+", key)]
        keys = [key for key in ("train_loss", "val_loss") if key in log] + per_class
        if self.monitor_metric in log and self.monitor_metric not in keys:
            keys.append(self.monitor_metric)
        return keys

    # ------------------------------------------------------------------ checkpoints

    def _state(self, epoch: int, step: int) -> dict[str, Any]:
        """Everything needed to resume: tensors and plain types only."""
        return {
            "sever_version": __version__,
            "arch": self.config["arch"]["type"] if isinstance(self.config["arch"], dict) else self.config["arch"],
            "epoch": epoch,
            "step": step,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "monitor_best": self.monitor_best,
            "best_epoch": self.best_epoch,
            "not_improved": self.not_improved,
            "config": self.config,
            "rng": _rng_state(),
            "time_budget": self.budget.state() if self.budget is not None else None,
            **self._extra_state(),
        }

    def _check_finite_weights(self, epoch: int) -> None:
        """Refuse to save NaN or infinite weights over the good checkpoints."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingError(
                    f"the model's weights hold NaN or infinite values ({name}) at epoch {epoch}; training "
                    f"stopped without saving them, {self.run.last} keeps the last good weights. Lower the "
                    "learning rate, set trainer.grad_clip, or check the data."
                )

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        """Refresh ``last.pth``; link it as the periodic and best checkpoints (rank 0 only)."""
        self._check_finite_weights(epoch)  # on every rank: all hold the same weights and stop together
        if self.dist.is_main:
            self._write_epoch_checkpoints(epoch, improved)
        self.dist.barrier()

    def _write_epoch_checkpoints(self, epoch: int, improved: bool) -> None:
        atomic_torch_save(self._state(epoch, 0), self.run.last)
        if self.save_period and epoch % self.save_period == 0:
            _atomic_link(self.run.last, self.run.epoch_checkpoint(epoch))
            logger.debug("saved %s", self.run.epoch_checkpoint(epoch))
        if improved:
            _atomic_link(self.run.last, self.run.best)
            logger.info("new best %s %.5f: saved %s", self.monitor_metric, self.monitor_best, self.run.best)

    def _save_interrupted(self, epoch: int) -> None:
        """Save mid-epoch progress: ``last.pth`` records the batches done in ``epoch``."""
        self._check_finite_weights(epoch)
        if self.dist.is_main:
            atomic_torch_save(self._state(epoch - 1, self.steps_done), self.run.last)
        self.dist.barrier()

    def _raise_interrupted(self, where: str, saved: bool = True) -> None:
        """Raise :class:`TrainingInterrupted`: what stopped, the checkpoint that holds the progress, how to resume.

        ``saved``: whether ``where`` saved :attr:`run.last` (else it names what the last one holds).
        """
        if self.writer is not None:
            self.writer.close()
        if saved:
            what, command = f"{where} and saved {self.run.last}", f"sever train -r {self.run.root}"
        elif self.run.last.is_file():
            what = f"{where}; a resume trains that epoch again from {self.run.last}"
            command = f"sever train -r {self.run.root}"
        else:
            what, command = f"{where}, before any checkpoint was saved", f"sever train -c {self.run.config}"
        signum = self._stop_signal or interrupt.requested() or signal.SIGTERM  # another rank may have received it
        raise TrainingInterrupted(f"{signal.Signals(signum).name} received: {what}", str(self.run.last), signum,
                                  command)

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint loaded with :func:`~sever.utils.checkpoint.load_checkpoint`."""
        if state.get("optimizer") is None or "rng" not in state:
            raise CheckpointError(
                "this checkpoint holds weights only (e.g. from sever upload --weights-only): it can be used "
                "for prediction or as encoder_weights, but training cannot resume from it"
            )
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not match the model: {str(exc).splitlines()[0]}") from exc
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"the checkpoint's optimizer or lr_scheduler state does not fit the config's "
                f"(were optimizer or lr_scheduler changed with --set?): {exc}"
            ) from exc
        self.monitor_best = state["monitor_best"]
        self.best_epoch = state.get("best_epoch")  # absent from checkpoints of sever 0.1.0
        self.not_improved = state["not_improved"]
        self.start_epoch = state["epoch"] + 1
        self.start_step = state.get("step", 0)
        if self.budget is not None and state.get("time_budget") is not None:
            self.budget.load(state["time_budget"])
        self._load_extra_state(state)
        _set_rng_state(state["rng"])
        logger.info("resumed at epoch %d, batch %d", self.start_epoch, self.start_step)

    # ------------------------------------------------------------------ signals


def _values(log: dict[str, float], keys: list[str]) -> str:
    """``key value`` pairs of ``log``, four decimals, two spaces apart."""
    return "  ".join(f"{key} {log[key]:.4f}" for key in keys)


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"epochs": 4}}`` -> ``{"trainer.epochs": 4}``; lists and None become text (TensorBoard hparams)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` atomically (a hard link when possible)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
