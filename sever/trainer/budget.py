"""``trainer.time_budget``: how many epochs fit in the time a run may take.

The clock counts the wall time of training itself (epochs, validation and
checkpoint writing) from the start of :meth:`BaseTrainer.train`, added to the time
spent before a resume, which every checkpoint carries. Building the model and
reading the data are not counted, nor is the post-processing tuning after training.

The budget is spent in whole epochs. At the end of each epoch's training pass the
run predicts whether one more epoch fits (the mean duration of the epochs done so
far, this one included, must fit in what is left): if not, this epoch is the last
one, it is validated and checkpointed, and the run ends. The same prediction gives
the number of epochs the run will take, over which the learning-rate schedule is
re-laid (:func:`sever.model.scheduler.set_horizon`), so the schedule ends with the
budget. ``trainer.epochs`` stays an upper bound.
"""

from __future__ import annotations

import math
import time
from typing import Any


class TimeBudget:
    """The training clock of a run with a ``trainer.time_budget`` of ``seconds``.

    Args:
        seconds: the budget in seconds (> 0).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent_before = 0.0  # seconds of the sessions before this one (from the checkpoint)
        self.durations: list[float] = []  # seconds of each finished epoch
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

    def plan(self, epoch: int) -> int:
        """At the end of ``epoch``'s training pass: the epoch the run will end with.

        One more epoch is expected to take the mean duration of the finished epochs and
        of this one so far; as many as fit in the time left follow this one.
        """
        so_far = time.monotonic() - self._epoch_started
        expected = (sum(self.durations) + so_far) / (len(self.durations) + 1)
        left = self.seconds - self.spent
        return epoch + max(0, math.floor(left / max(expected, 1e-9)))

    def end_epoch(self) -> None:
        """Record the duration of the epoch that just finished (checkpoint included)."""
        now = time.monotonic()
        self.durations.append(now - self._epoch_started)
        self._epoch_started = now

    def state(self) -> dict[str, Any]:
        """Plain numbers for the checkpoint."""
        return {"seconds": self.seconds, "spent": self.spent, "durations": list(self.durations),
                "final_epoch": self.final_epoch}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` saved by an earlier session of the run.

        The time spent is kept; a run resumed with another budget plans its end anew.
        """
        self.spent_before = float(state["spent"])
        self.durations = [float(d) for d in state["durations"]]
        self.final_epoch = state["final_epoch"] if state["seconds"] == self.seconds else None
