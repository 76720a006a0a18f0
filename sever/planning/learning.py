"""The learning rule: the optimiser steps a dataset needs before its validation defect Dice leaves the floor.

:func:`learning_estimate` runs after the planning rules (:func:`sever.planning.plan.make_plan`)
and tells, before anything trains, the steps the planned budget gives each run against the
steps this data is expected to need (:func:`crops_needed`, the rule and its constants in
:class:`~sever.planning.policy.PlanPolicy`, their provenance stated there). When the budget
falls short, its warning names the ``--time`` that would reach the need with the planner's own
choices (folds, their shares, the measured step) and the device speed-up that would at this
budget. ``sever plan`` and ``sever auto`` print it; the experiment file carries it as a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sever.planning.fingerprint import Fingerprint
from sever.planning.need import crop_cover, crops_needed, steps_needed
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.planning.sizing import epoch_estimate, epoch_steps, fold_budget, plan_folds

# The longest budget searched for one that reaches the need, as a multiple of the planned one.
LONGEST_BUDGET = 1000.0


def steps_given(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float,
                rounds: int = 0, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[float, int]:
    """Optimiser steps each run gets in ``budget`` seconds with the folds the planner chooses there, and those
    folds (1: a single run), at ``batch`` and ``step`` seconds a step; ``rounds`` pseudo-label rounds after the
    first share each fold's time (and need a study)."""
    def epochs_at(folds: int) -> float:
        return (fold_budget(budget, fp, folds, batch, crop, step, policy)
                / epoch_estimate(fp, folds, batch, crop, step, policy))

    def steps_at(folds: int) -> float:
        return max(0.0, epochs_at(folds)) / (rounds + 1) * epoch_steps(fp, folds, batch, policy)

    folds = plan_folds(fp, epochs_at, rounds > 0, policy, steps_needed(fp, crop, batch, policy), steps_at)[0]
    return steps_at(folds), folds


def budget_reaching(fp: Fingerprint, steps: float, budget: float, batch: int, crop: tuple[int, int], step: float,
                    rounds: int = 0, policy: PlanPolicy = DEFAULT_POLICY) -> tuple[float, int] | None:
    """The shortest budget (seconds, within 5%) from ``budget`` on at which the planner's runs get ``steps``,
    and its folds; None beyond :data:`LONGEST_BUDGET` times ``budget``. Searched rather than solved: more time
    buys more folds, each with a share of it."""
    seconds = budget
    while seconds <= LONGEST_BUDGET * budget:
        given, folds = steps_given(fp, seconds, batch, crop, step, rounds, policy)
        if given >= steps:
            return seconds, folds
        seconds *= 1.05
    return None


@dataclass(frozen=True)
class LearningEstimate:
    """The steps a plan gives each run and the steps its data is expected to need, and the way to reach them.

    Attributes:
        given: optimiser steps each planned run (a fold's, or the single run's) is estimated to take.
        needed: optimiser steps the data is expected to need before its validation defect Dice leaves the floor.
        batch: the planned batch (crops per step).
        hardest: the class that sets ``needed``, with why.
        reaching: ``(--time seconds, folds)`` that would give ``needed``; None when none in reach.
    """

    given: float
    needed: float
    batch: int
    hardest: str
    reaching: tuple[float, int] | None

    @property
    def short(self) -> bool:
        return self.given < self.needed

    def note(self) -> str:
        """The line ``sever plan`` and ``sever auto`` print before training."""
        line = (f"learning: the budget gives each run about {self.given:.0f} optimiser steps of {self.batch} crops; "
                f"this data is expected to need about {self.needed:.0f} before its validation defect Dice leaves "
                f"the floor ({self.hardest}; sever.planning.need's rule: its learning curves in the docs' plan and "
                "auto guide)")
        return line if not self.short else self.warning()

    def warning(self) -> str:
        speed = self.needed / max(self.given, 1e-9)
        where = (f"--time {_duration(self.reaching[0])} would give each of its "
                 f"{'single run' if self.reaching[1] == 1 else f'{self.reaching[1]} folds'} about that"
                 if self.reaching else "no budget up to 1000 times this one reaches it with this plan")
        return (f"WARNING: this budget is too short to learn this data: each run gets about {self.given:.0f} "
                f"optimiser steps of {self.batch} crops, and this data is expected to need about "
                f"{self.needed:.0f} before its validation defect Dice leaves the floor ({self.hardest}). "
                f"{where}, or a device about {speed:.{1 if speed < 10 else 0}f}x faster per step at this budget. Trained as planned, "
                "classes are likely not learned (the end of the run names them).")


def _duration(seconds: float) -> str:
    """``seconds`` as a --time value, rounded up to a minute: ``1h25m``, ``7m``."""
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}h{minutes % 60}m" if minutes >= 60 else f"{minutes}m"


def learning_estimate(fp: Fingerprint, budget: float, batch: int, crop: tuple[int, int], step: float,
                      run_epochs: float, folds: int, rounds: int = 0,
                      policy: PlanPolicy = DEFAULT_POLICY) -> LearningEstimate:
    """The plan's :class:`LearningEstimate`.

    Args:
        budget: the plan's seconds; batch, crop, step: its batch, crop ``(h, w)`` and measured seconds a step.
        run_epochs: epochs each planned run (one round of a fold) is estimated to hold; folds: its folds
            (1: a single run); rounds: pseudo-label rounds after the first.
    """
    needed = steps_needed(fp, crop, batch, policy)
    hardest = crops_needed(fp, crop, policy)[1]
    given = run_epochs * epoch_steps(fp, folds, batch, policy)
    why = "no class shown" if hardest is None else (
        f"set by {hardest.name}: in {hardest.frequency:.1%} of the images, covering {crop_cover(hardest, fp, crop):.2%}"
        f" of a {crop[0]}x{crop[1]} crop, against the demo data's {policy.learn_frequency:.1%} and "
        f"{policy.learn_cover:.0%} that learn in about {policy.learn_crops:.0f} crops")
    reaching = (budget_reaching(fp, needed, budget, batch, crop, step, rounds, policy)
                if given < needed else None)
    return LearningEstimate(given, needed, batch, why, reaching)
