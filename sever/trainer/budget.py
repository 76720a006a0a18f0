"""``trainer.time_budget``: how many epochs fit in the time a run may take.

The clock counts the wall time of training itself (epochs, validation and
checkpoint writing) from the start of :meth:`BaseTrainer.train`, added to the time
spent before a resume, which every checkpoint carries. Building the model and
reading the data are not counted, nor is the post-processing tuning after training.

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
"""

from __future__ import annotations

import math
import time
from typing import Any

from sever.utils.time_budget import PARTIAL_SHARE, epochs_fitting

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
    def tail(self) -> float:
        """Expected seconds of an epoch's validation and checkpoint (0 before any epoch has ended)."""
        tails = [epoch - train for epoch, train in zip(self.durations, self.passes)]
        return sum(tails) / len(tails) if tails else 0.0

    def pass_over(self) -> bool:
        """During a training pass: whether only the time of its tail is left."""
        return self.spent + self.tail >= self.seconds

    def end_pass(self) -> None:
        """Record the duration of the training pass that just ended."""
        self.passes.append(time.monotonic() - self._epoch_started)

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
        self._epoch_started = now

    def state(self) -> dict[str, Any]:
        """Plain numbers for the checkpoint."""
        return {"seconds": self.seconds, "spent": self.spent, "durations": list(self.durations),
                "passes": list(self.passes), "final_epoch": self.final_epoch}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` saved by an earlier session of the run.

        The time spent is kept; a run resumed with another budget plans its end anew.
        Checkpoints from before passes were recorded carry none: the tail is then
        learnt again from this session's epochs.
        """
        self.spent_before = float(state["spent"])
        self.durations = [float(d) for d in state["durations"]]
        self.passes = [float(d) for d in state.get("passes", [])]
        if len(self.passes) != len(self.durations):
            self.durations, self.passes = [], []
        self.final_epoch = state["final_epoch"] if state["seconds"] == self.seconds else None
