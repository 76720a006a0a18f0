"""``sever plan``: an experiment file planned from a dataset's fingerprint, each value with its reason.

:func:`make_plan` turns a :class:`~sever.planning.fingerprint.Fingerprint`, a target
device and a time budget into a complete segmentation experiment (the config dict) and
one reason per planned value (dotted config keys), by running the registered rules
(:data:`~sever.planning.rules.PLAN_RULES`) in order; :meth:`Plan.write` writes it as YAML
with each reason as a comment above its key (:mod:`sever.planning.experiment_file`), and
``fingerprint.json`` beside it. The written file validates like any experiment
(:func:`sever.experiment.prepare_config`) and trains as it is: ``sever train -c FILE`` trains
fold 0, ``--folds K`` (K from ``data_loader.args.folds``) all of them, ``sever auto`` the study.
When the budget is too short for two folds to train ``min_epochs_per_fold`` epochs each, or the
steps the data needs before it learns (:mod:`sever.planning.need`), the plan is one run with a
validation split instead (no ``folds``): ``sever train -c FILE`` trains it.

The package:

- :mod:`~sever.planning.policy`: the thresholds (:class:`~sever.planning.policy.PlanPolicy`);
- :mod:`~sever.planning.rules`: the rules, one function per config key, registered in order;
- :mod:`~sever.planning.sizing`: the measured part (batch, step time, folds, the model) and the
  estimates of an epoch's and a fold's seconds;
- :mod:`~sever.planning.need`: the training crops the data is expected to need before it learns, which
  the folds and the crop are planned to reach;
- :mod:`~sever.planning.learning`: the steps the data is expected to need against those the budget gives
  (:class:`~sever.planning.learning.LearningEstimate`, ``Plan.learning``), printed before training;
- :mod:`~sever.planning.probe`: the device and loader timing (:class:`~sever.planning.probe.Target`);
- :mod:`~sever.planning.experiment_file`: the YAML text; the budget's arithmetic is
  :mod:`sever.utils.time_budget`'s.

Two values are measured rather than derived, on the target device: the batch size on
CUDA (the largest that fits with a memory margin, by trial forward/backward steps:
:func:`sever.utils.device.largest_batch`) and the seconds of one training step, from
which the epochs a budget holds are estimated. The rules are pure functions of their
inputs (the fingerprint, :class:`~sever.utils.device.Capabilities`, a step-time probe),
so they are tested on CPU with fake devices and probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sever.planning.experiment_file import experiment_text, wrapped
from sever.planning.fingerprint import Fingerprint
from sever.planning.learning import LearningEstimate
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.planning.probe import PlanError, Target, device_target
from sever.planning.rules import PLAN_RULES, PlanContext, RuleRegistry
from sever.utils.time_budget import parse_budget

__all__ = ["Plan", "PlanError", "Target", "device_target", "make_plan", "parse_budget"]


@dataclass
class Plan:
    """A planned experiment: the config, a reason per dotted key, and what was planned around."""

    config: dict
    reasons: dict[str, str]
    fingerprint: Fingerprint
    notes: list[str] = field(default_factory=list)
    fold_overhead: float = 0.0  # estimated seconds a fold takes beyond its training (set-up, tuning, report, OOF)
    learning: LearningEstimate | None = None  # the steps the budget gives against those the data needs

    @property
    def folds(self) -> int:
        """The study's folds; 1 for a single run with a validation split."""
        return int(self.config["data_loader"]["args"].get("folds", 1))

    def text(self) -> str:
        """The experiment file: YAML with each reason as a comment above its key."""
        header = [f"# Planned by `sever plan {self.fingerprint.data_dir}` from its fingerprint "
                  "(fingerprint.json beside this file).",
                  f"#   sever train -c THIS_FILE{f' --folds {self.folds}' if self.folds > 1 else ''}    # or: sever "
                  "auto, which also tunes and predicts"]
        header += [f"# note: {line}" for note in self.notes for line in wrapped(note)]
        if self.learning is not None:
            header += [f"# {line}" for line in wrapped(self.learning.note())]
        return experiment_text(self.config, self.reasons, header)

    def write(self, path: str | Path) -> Path:
        """Write the experiment file and ``fingerprint.json`` beside it; returns the file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text(), encoding="utf-8")
        self.fingerprint.save(path.parent / "fingerprint.json")
        return path


def make_plan(fp: Fingerprint, target: Target, budget: float, name: str, seed: int = 42,
              unlabelled: str | None = None, policy: PlanPolicy = DEFAULT_POLICY,
              rules: RuleRegistry = PLAN_RULES) -> Plan:
    """Plan the experiment of ``fp`` for ``target`` and ``budget`` seconds by running ``rules`` in order.

    Args:
        unlabelled: a folder of unlabelled images: the plan carries one pseudo-label round.
        policy: the thresholds the rules follow.

    Raises:
        PlanError: the budget is too short for one epoch of the smallest plan on two folds.
    """
    ctx = PlanContext(fp, target, budget, name, seed, unlabelled, policy)
    config: dict = {}
    reasons: dict[str, str] = {}
    for rule in rules:
        values, why = rule.values(ctx)
        for dotted, value in values.items():
            _set(config, dotted, value)
            reasons.pop(dotted, None)  # a later rule's value replaces the reason of the earlier one
        reasons.update(why)
    return Plan(config, reasons, fp, ctx.notes, ctx.fold_overhead, ctx.learning)


def _set(config: dict, dotted: str, value: Any) -> None:
    """Set ``config[a][b][c] = value`` for ``dotted`` ``a.b.c``, making the mappings on the way."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
