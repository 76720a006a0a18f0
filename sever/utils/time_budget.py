"""The arithmetic of a time budget, in one place (seconds throughout).

A study's budget (``--time``, the study's ``trainer.time_budget``) is spent in this order:

- :data:`STUDY_RESERVE` of it is kept for the study's out-of-fold tuning
  (:func:`study_training`); a single run keeps none;
- the rest is shared equally between the folds (:func:`fold_share`): when planned, among
  the K folds; while a study trains, among the folds still to train, from what is neither
  spent nor reserved by folds in training (:func:`ledger_share`);
- each fold's share pays its overhead (set-up, self-tuning, report, out-of-fold maps)
  before its training (:func:`fold_training`), estimated by the planner or measured
  (:func:`mean_overhead`);
- a run's training clock (``trainer.time_budget`` of a run) then decides how many
  epochs fit in what is left (:func:`epochs_fitting`): whole epochs, and a shorter last
  one only from :data:`PARTIAL_SHARE` of a training pass.

Pure functions of plain numbers: the planner (:mod:`sever.planning`), the training clock
(:mod:`sever.trainer.budget`) and the study ask them; none measures or records anything.

When the deadline comes, a long pass (validation, tuning) is cut rather than overrun:
:class:`Deadline` is the one stop condition such loops poll (the end of a budget, and any
other condition added to it, e.g. a signal), :func:`subset_stride` says every how many items
a pass must take to fit the time left, from its measured time (:func:`scaled_seconds`: scaled
to how slow the machine is now), and :func:`spread_order` orders a pass so that a cut at any
point has covered an even subset of it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)
Item = TypeVar("Item")

from sever.utils.config import parse_duration

STUDY_RESERVE = 0.15  # share of a study's budget kept for out-of-fold prediction, tuning and the report
PARTIAL_SHARE = 0.25  # the least share of a training pass worth a shorter last epoch (and its validation)
MIN_FOLD_TRAINING = 1.0  # seconds a fold's run is given at least, however large its overhead
FIRST_TAIL_SHARE = 0.1  # before any epoch's tail is measured, the first one is expected to take this share of its pass
SPREAD = 8  # a cut pass covers at worst every SPREAD-th item of what it had left (spread_order)
BUDGET_ENDS = "the time budget ends"  # the reason a Deadline gives when its time is up


def parse_budget(text: str, key: str = "--time") -> float:
    """``text`` (``2h30m``, ``45m``, ``90s``, ``1.5h``) as seconds; ConfigError naming ``key`` otherwise."""
    return parse_duration(text, key)


def reserve_share(folds: int, reserve: float = STUDY_RESERVE) -> float:
    """The share of the budget kept for out-of-fold tuning: ``reserve`` for a study, 0 for one run (``folds`` 1)."""
    return 0.0 if folds == 1 else reserve


def study_training(budget: float, reserve: float = STUDY_RESERVE) -> float:
    """Seconds of a study's ``budget`` its folds share (their overhead included): all but the reserve."""
    return budget * (1 - reserve)


def fold_share(budget: float, folds: int, reserve: float = STUDY_RESERVE) -> float:
    """Seconds of wall time each of ``folds`` folds gets of ``budget`` (``folds`` 1: the single run, no reserve)."""
    return study_training(budget, reserve_share(folds, reserve)) / folds


def fold_training(share: float, overhead: float, floor: float | None = None) -> float:
    """Seconds a fold's run trains: its ``share`` less its ``overhead``; at least ``floor`` when given.

    The planner passes no floor (a negative result means the share cannot pay its overhead);
    a study in training passes :data:`MIN_FOLD_TRAINING`, since the fold's wall time is
    charged and its run's clock counts training only.
    """
    training = share - overhead
    return training if floor is None else max(training, floor)


def ledger_share(total: float, spent: Iterable[float], reserved_by_others: Iterable[float], sharing: int) -> float:
    """A fold's share of a study's ledger: what of ``total`` slot-seconds is neither ``spent`` nor reserved by
    folds in training, shared equally by the ``sharing`` folds without a reservation (the fold itself included).

    0 or less: the budget is spent.
    """
    return (total - sum(spent) - sum(reserved_by_others)) / sharing


def mean_overhead(measured: Iterable[float], expected: float = 0.0) -> float:
    """The mean of the folds' ``measured`` overheads; before any fold has measured one, ``expected``."""
    measured = list(measured)
    return sum(measured) / len(measured) if measured else float(expected)


def epochs_fitting(left: float, mean_pass: float, tail: float, partial_share: float = PARTIAL_SHARE) -> float:
    """Epochs that fit in ``left`` seconds after the current epoch's tail, counting a shorter last one.

    Args:
        left: seconds of the budget left, the current epoch's tail already taken out.
        mean_pass: seconds of one training pass (> 0).
        tail: seconds of an epoch's validation and checkpoint.
        partial_share: the least share of a pass worth a shorter epoch.

    Returns:
        Whole epochs of ``mean_pass + tail``, plus the share of a pass a shorter last epoch trains when at
        least ``partial_share`` of a pass fits beside its tail (3.4: three epochs, then four-tenths of one).
    """
    mean_pass = max(mean_pass, 1e-9)
    whole = max(0, math.floor(left / (mean_pass + tail)))
    spare = left - whole * (mean_pass + tail) - tail
    return whole + (spare / mean_pass if spare >= partial_share * mean_pass else 0.0)


def useful_epochs(epochs: float, partial_share: float = PARTIAL_SHARE) -> tuple[int, float]:
    """``epochs`` (a planned number, 3.1) as whole epochs and the share of one more worth training.

    A last epoch shorter than ``partial_share`` of its batches is not worth its validation: it is
    dropped (``(3, 0.0)``); at least ``partial_share`` of it is kept (3.4: ``(3, 0.4)``).
    """
    whole = math.floor(epochs)
    fraction = epochs - whole
    return whole, fraction if fraction >= partial_share else 0.0


def reserve_seconds(study_seconds: float, reserve: float = STUDY_RESERVE) -> float:
    """Seconds of ``--time`` kept for a study's out-of-fold tuning when its folds share ``study_seconds``
    (:func:`study_training` of it)."""
    return study_seconds * reserve / (1 - reserve)


def study_left(seconds: float, slots: int, spent: Iterable[float], reserve: float = 0.0) -> float:
    """Wall seconds a study has left: its ``seconds`` (each of ``slots`` folds at once) less what was ``spent``
    (slot-seconds), plus the ``reserve`` kept beyond them for its out-of-fold tuning."""
    return (seconds * slots - sum(spent)) / slots + reserve


def after_planning(planned: float, total: float, left: float, shared: bool) -> float:
    """``trainer.time_budget`` (seconds) once planning has taken ``total - left`` of a ``total`` budget.

    A study's (``shared``) is scaled to what is ``left``, so it keeps its reserve's share of it;
    a single run's loses the planning time, down to :data:`MIN_FOLD_TRAINING`.
    """
    if shared:
        return planned * max(left, 0.0) / total
    return max(planned - (total - left), MIN_FOLD_TRAINING)


def slowdown(seconds_then: float, seconds_now: float) -> float:
    """How many times slower the machine is now: the same work (a batch) took ``seconds_then``, now ``seconds_now``.

    Never under 1/2: a pass that got quicker by chance must not promise a validation twice as fast.
    """
    return max(seconds_now / max(seconds_then, 1e-9), 0.5)


def scaled_seconds(per_item: float, items: int, factor: float = 1.0) -> float:
    """Seconds ``items`` take at ``per_item`` seconds each measured earlier, on a machine ``factor`` times slower."""
    return per_item * items * factor


def items_fitting(left: float, per_item: float, items: int) -> int:
    """How many of ``items`` fit in ``left`` seconds at ``per_item`` seconds each (measured): 0 to ``items``."""
    if per_item <= 0:
        return items
    return max(0, min(items, math.floor(left / per_item)))


def subset_stride(expected: float, left: float, items: int) -> int:
    """Every how many of ``items`` a pass expected to take ``expected`` seconds keeps to fit ``left`` seconds.

    1 when it fits; otherwise ``ceil(expected / left)``, at most ``items`` (a pass keeps one item at least).
    """
    if expected <= left or items <= 1:
        return 1
    return min(items, math.ceil(expected / max(left, 1e-9)))


def spread_order(count: int, spread: int = SPREAD) -> list[int]:
    """``0 .. count-1`` in passes of every ``spread``-th index, each pass halving the gaps the others left.

    ``count`` 10, ``spread`` 4: ``[0, 4, 8, 2, 6, 1, 5, 9, 3, 7]``. A pass cut anywhere has covered an
    even subset: after the first ``count / spread`` items every ``spread``-th one, after half of them
    every second one.
    """
    offsets, step = [0], spread
    while step > 1:
        step //= 2
        offsets += [offset + step for offset in offsets]
    return [index for offset in offsets if offset < spread for index in range(offset, count, spread)]


class Deadline:
    """The stop condition a long loop polls between items: a time budget's end and any other condition.

    Args:
        seconds: seconds from ``start`` until the budget ends; None: no time limit.
        clock: monotonic seconds (a test passes a fake one).
        start: when the seconds count from, on ``clock`` (default: now).

    Conditions added with :meth:`add` (e.g. "a signal was received") are asked too, so one
    object stops a validation pass, a tuning or an out-of-fold prediction for any reason.
    """

    def __init__(self, seconds: float | None = None, clock: Callable[[], float] = time.monotonic,
                 start: float | None = None):
        self.clock = clock
        self.seconds = seconds
        self.at = None if seconds is None else (clock() if start is None else start) + seconds
        self.conditions: list[Callable[[], str | None]] = []

    def add(self, condition: Callable[[], str | None]) -> Deadline:
        """Also stop when ``condition()`` gives a reason (a short text); returns self."""
        self.conditions.append(condition)
        return self

    def left(self) -> float:
        """Seconds until the budget ends (``inf`` without a time limit; negative once passed)."""
        return math.inf if self.at is None else self.at - self.clock()

    def reason(self) -> str | None:
        """Why to stop now (:data:`BUDGET_ENDS`, or a condition's reason), or None to go on."""
        if self.left() <= 0:
            return BUDGET_ENDS
        return next((reason for condition in self.conditions if (reason := condition())), None)


def until_deadline(batches: Iterable[Item], deadline: Deadline | None, total: int, what: str,
                   size: Callable[[Item], int] = len, at_least: int = 0) -> Iterator[Item]:
    """``batches`` of a pass over ``total`` images until ``deadline`` gives a reason to stop (polled after each).

    Args:
        size: the images of one batch.
        at_least: images the pass covers before it may stop.
        what: the pass, for the line said when it stops: ``{what} on N of M images: REASON``.
    """
    done = 0
    for batch in batches:
        yield batch
        done += size(batch)
        reason = deadline.reason() if deadline is not None and at_least <= done < total else None
        if reason is not None:
            logger.info("%s on %d of %d images: %s", what, done, total, reason)
            return
