"""``trainer.time_budget``: how many epochs fit in the time a run may take.

The clock counts the wall time of training itself (epochs, validation and
checkpoint writing) from the start of :meth:`BaseTrainer.train`, added to the time
spent before a resume, which every checkpoint carries. Building the model and
reading the data are not counted, nor is the post-processing tuning after training
(a study's fold ends that and its report by the fold's deadline instead:
:func:`sever.experiment.after_training`).

Each epoch is a training pass, then its tail: validation and the checkpoint. At the
end of each training pass the run plans how many more epochs fit in what is left,
expecting each to take the mean pass and the mean tail of the epochs so far (this
epoch's tail still to come). When no whole epoch fits but a quarter of a pass or more
does, one shorter epoch follows (:data:`~sever.utils.time_budget.PARTIAL_SHARE`): its training pass stops at
the first optimiser step after which only a tail's time is left (:meth:`pass_over`),
and it is validated and checkpointed like any other. So the run uses its budget
rather than leaving up to an epoch of it unused, and every checkpoint still ends an
epoch. The same guard stops any pass that runs out of time, the first epoch of a
budget shorter than one epoch included. The planned end is also where the
learning-rate schedule is re-laid to end (:func:`sever.model.scheduler.set_horizon`),
so the schedule ends with the budget: a per-step schedule at the expected end of a
shorter last epoch (:meth:`TimeBudget.horizon`), an epoch-wise one at its start.
``trainer.epochs`` stays an upper bound.

Validation is timed as it happens (:meth:`TimeBudget.end_validation`): an epoch's tail is
expected to take the measured seconds per validation image of the last validation, scaled
by how much slower the last training pass ran per batch than the pass before that
validation (:func:`~sever.utils.time_budget.slowdown`), plus the measured rest of the tail
(checkpoint, logging). So a machine that became slower after epoch 1 stops before an epoch
whose validation could not finish (:meth:`TimeBudget.epoch_fits`), and a validation that
would overrun the budget runs on every k-th image only (:meth:`TimeBudget.validation_stride`)
and stops at the deadline (:meth:`TimeBudget.deadline`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from sever.utils.time_budget import (FIRST_TAIL_SHARE, PARTIAL_SHARE, Deadline, epochs_fitting, scaled_seconds, slowdown,
                                     subset_stride)

__all__ = ["PARTIAL_SHARE", "TimeBudget"]


class TimeBudget:
    """The training clock of a run with a ``trainer.time_budget`` of ``seconds``.

    Args:
        seconds: the budget in seconds (> 0).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent_before = 0.0  # seconds of the sessions before this one (from the checkpoint)
        self.durations: list[float] = []  # seconds of each finished epoch, tail included
        self.passes: list[float] = []  # seconds of each epoch's training pass
        self.batches: list[int] = []  # batches of each epoch's training pass (0: not known)
        self.validating: list[float] = []  # seconds of each finished epoch's validation (0: none)
        self.validation: tuple[float, float] | None = None  # the last (seconds per image, seconds per batch of its pass)
        self._validation_started: float | None = None
        self._epoch_validation = 0.0  # seconds of this epoch's validation so far
        self.valid_images = 0  # images a whole validation pass scores (the trainer sets it)
        self.final_epoch: int | None = None  # the last epoch, once the budget has fixed it
        self._started = time.monotonic()
        self._epoch_started = self._started

    def start(self) -> None:
        """Start this session's clock (:meth:`BaseTrainer.train` calls it first)."""
        self._started = self._epoch_started = time.monotonic()

    @property
    def spent(self) -> float:
        """Seconds of training so far, every session of the run together."""
        return self.spent_before + time.monotonic() - self._started

    @property
    def left(self) -> float:
        """Seconds of the budget left (negative once overrun)."""
        return self.seconds - self.spent

    @property
    def rest_of_tail(self) -> float:
        """Expected seconds of an epoch's tail besides its validation (the checkpoint, logging; measured)."""
        rests = [epoch - train - valid for epoch, train, valid in zip(self.durations, self.passes, self.validating)]
        return sum(rests) / len(rests) if rests else 0.0

    @property
    def tail(self) -> float:
        """Expected seconds of an epoch's validation and checkpoint (0 before any epoch has ended).

        The validation part is the last measured one, scaled to the speed of the latest pass
        (:meth:`expected_validation`).
        """
        return self.rest_of_tail + (self.expected_validation(self.valid_images) or 0.0)

    def _seconds_per_batch(self) -> float | None:
        """Seconds per batch of the latest training pass whose batches are known."""
        known = [(seconds, batches) for seconds, batches in zip(self.passes, self.batches) if batches]
        return known[-1][0] / known[-1][1] if known else None

    def expected_validation(self, images: int) -> float | None:
        """Expected seconds to validate ``images`` now: the measured seconds per image of the last validation,
        times how much slower the latest pass ran than the one before that validation; None before any."""
        if self.validation is None:
            return None
        per_image, batch_then = self.validation
        batch_now = self._seconds_per_batch()
        factor = slowdown(batch_then, batch_now) if batch_then and batch_now else 1.0
        return scaled_seconds(per_image, images, factor)

    def validation_stride(self, images: int) -> int:
        """Every how many of ``images`` this epoch's validation takes to end within the budget (1: all)."""
        expected = self.expected_validation(images)
        return 1 if expected is None else subset_stride(expected, self.left - self.rest_of_tail, images)

    def deadline(self) -> Deadline:
        """When this epoch's validation must stop to leave the rest of its tail within the budget."""
        return Deadline(self.left - self.rest_of_tail, clock=time.monotonic)

    def begin_validation(self) -> None:
        self._validation_started = time.monotonic()

    def end_validation(self, images: int) -> None:
        """Record the validation that just scored ``images`` images."""
        seconds = time.monotonic() - (self._validation_started or time.monotonic())
        self._validation_started = None
        self._epoch_validation = seconds
        if images:
            self.validation = (seconds / images, self._seconds_per_batch() or 0.0)

    def epoch_fits(self) -> bool:
        """Between epochs: whether a useful share of a training pass and its tail still fit in the budget.

        True before any validation has been timed: without a measured validation the plan
        made after each pass (:meth:`plan`) and the pass's own guard (:meth:`pass_over`) decide.
        """
        if not self.passes or self.validation is None:
            return True
        mean_pass = sum(self.passes) / len(self.passes)
        return epochs_fitting(self.left, mean_pass, self.tail) > 0

    def pass_over(self) -> bool:
        """During a training pass: whether only the time of its tail is left.

        Before any tail was measured, the first is expected to take
        :data:`~sever.utils.time_budget.FIRST_TAIL_SHARE` of the pass so far: the first
        validation and checkpoint then find time left (the validation is still cut at the deadline).
        """
        tail = self.tail if self.durations else FIRST_TAIL_SHARE * (time.monotonic() - self._epoch_started)
        return self.spent + tail >= self.seconds

    def end_pass(self, batches: int = 0) -> None:
        """Record the duration of the training pass that just ended, of ``batches`` batches (0: not known)."""
        self.passes.append(time.monotonic() - self._epoch_started)
        self.batches.append(int(batches))

    def horizon(self, epoch: int) -> float:
        """After :meth:`end_pass` of ``epoch``: where training will end, in epochs.

        Whole epochs of the mean pass and tail follow as long as they fit, then a
        shorter one when at least :data:`PARTIAL_SHARE` of a pass fits beside its tail,
        counted as the share of a pass it trains (3.4: three epochs, then four-tenths of one).
        """
        tail = self.tail
        left = self.seconds - self.spent - tail  # this epoch's own tail is still to come
        return epoch + epochs_fitting(left, sum(self.passes) / len(self.passes), tail)

    def plan(self, epoch: int) -> int:
        """After :meth:`end_pass` of ``epoch``: the epoch the run will end with (a shorter one included)."""
        return math.ceil(self.horizon(epoch))

    def end_epoch(self) -> None:
        """Record the duration of the epoch that just finished (checkpoint included)."""
        now = time.monotonic()
        self.durations.append(now - self._epoch_started)
        self.validating.append(self._epoch_validation)
        self._epoch_validation = 0.0
        self._epoch_started = now

    def state(self) -> dict[str, Any]:
        """Plain numbers for the checkpoint."""
        return {"seconds": self.seconds, "spent": self.spent, "durations": list(self.durations),
                "passes": list(self.passes), "final_epoch": self.final_epoch, "batches": list(self.batches),
                "validating": list(self.validating),
                "validation": list(self.validation) if self.validation is not None else None}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` saved by an earlier session of the run.

        The time spent is kept; a run resumed with another budget plans its end anew.
        Checkpoints from before passes were recorded carry none: the tail is then
        learnt again from this session's epochs.
        """
        self.spent_before = float(state["spent"])
        self.durations = [float(d) for d in state["durations"]]
        self.passes = [float(d) for d in state.get("passes", [])]
        self.batches = [int(b) for b in state.get("batches", [0] * len(self.passes))]
        self.validating = [float(v) for v in state.get("validating", [0.0] * len(self.durations))]
        validation = state.get("validation")
        self.validation = (float(validation[0]), float(validation[1])) if validation else None
        if not len(self.passes) == len(self.durations) == len(self.batches) == len(self.validating):
            self.durations, self.passes, self.batches, self.validating = [], [], [], []
        self.final_epoch = state["final_epoch"] if state["seconds"] == self.seconds else None
