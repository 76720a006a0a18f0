"""Learning-rate schedules, stepped once per epoch (sever's own can also move within one).

A config block names a scheduler and its arguments; the optimizer is supplied::

    lr_scheduler:
      type: FlatCosineAnnealing          # the write-up: flat 30 epochs, cosine over 220
      args: {start_anneal: 30, n_epochs: 250, eta_min: 1.0e-7}

Every configurable scheduler of :mod:`torch.optim.lr_scheduler` is registered
under its own name (``StepLR``, ``CosineAnnealingLR``, ``OneCycleLR``,
``ReduceLROnPlateau``, ...) beside sever's :class:`FlatCosineAnnealing` and
:class:`WarmupCosine`. ``LambdaLR``, ``MultiplicativeLR``, ``SequentialLR`` and
``ChainedScheduler`` take Python functions or other schedulers, which YAML cannot
express, and are not available.

The trainer calls :func:`step_scheduler` once at the end of every epoch, so every
count in a scheduler's arguments (``step_size``, ``T_max``, ``total_steps``,
``n_epochs``, ...) is in epochs. Each scheduler acts on every param group from
that group's own base LR, so the encoder and decoder keep their ratio.

:class:`FlatCosineAnnealing` and :class:`WarmupCosine` with ``per_step: true`` also
move within each epoch: before every training step the trainer calls
:func:`step_within_epoch`, and the LR follows the same closed form at the fractional
epoch (epoch 3, half its batches done: 2.5). Without it the last epoch of a cosine
trains at the LR of its start, which over four epochs is half the base LR; with it the
LR reaches ``eta_min`` as training ends, also at the end of a shorter last epoch of a
``trainer.time_budget`` (:func:`set_horizon` takes the fractional end).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch
from torch.optim import lr_scheduler

from sever.exceptions import ConfigError
from sever.registries import SCHEDULERS
from sever.utils.registry import check_arguments, did_you_mean, parse_spec


NOT_CONFIGURABLE = ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler")

# torch scheduler arguments counted in epochs: minimum allowed value
_TORCH_EPOCH_ARGS = {
    "step_size": 1, "T_max": 1, "T_0": 1, "T_mult": 1, "total_steps": 1, "epochs": 1,
    "steps_per_epoch": 1, "total_iters": 1, "patience": 0, "cooldown": 0,
}


def _is_torch_scheduler(obj: Any) -> bool:
    """A public, concrete LR-scheduler class of torch.optim.lr_scheduler."""
    return (
        isinstance(obj, type)
        and (issubclass(obj, lr_scheduler.LRScheduler) or obj is lr_scheduler.ReduceLROnPlateau)
        and obj is not lr_scheduler.LRScheduler
        and not obj.__name__.startswith("_")
    )


def torch_scheduler_names() -> list[str]:
    """Names of every public LR-scheduler class in :mod:`torch.optim.lr_scheduler`."""
    return sorted(
        name for name, obj in vars(lr_scheduler).items()
        if not name.startswith("_") and _is_torch_scheduler(obj)
    )


for _name in torch_scheduler_names():
    if _name not in NOT_CONFIGURABLE:
        SCHEDULERS.register(getattr(lr_scheduler, _name), name=_name)


class _BadArgument(ValueError):
    """A scheduler argument is invalid; ``arg`` names it for the config error."""

    def __init__(self, arg: str, reason: str):
        super().__init__(f"{arg}: {reason}")
        self.arg = arg
        self.reason = reason


def _check_epochs(arg: str, value: Any, minimum: int = 0) -> None:
    """Raise :class:`_BadArgument` unless ``value`` is an integer >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _BadArgument(arg, f"expected an integer number of epochs >= {minimum}, got {value!r}")


@SCHEDULERS.register
class FlatCosineAnnealing(lr_scheduler.LRScheduler):
    """Optional linear warm-up, flat at the base LR, then cosine annealing (the write-up's schedule).

    For each param group with base LR ``base``, the LR in epoch ``e`` (0-based) is

    - ``base * (e + 1) / (warmup_epochs + 1)`` for ``e < warmup_epochs``;
    - ``base`` for ``warmup_epochs <= e < start_anneal``;
    - ``eta_min + (base - eta_min) * (1 + cos(pi * (e - start_anneal) / (n_epochs - start_anneal))) / 2``
      for ``start_anneal <= e < n_epochs``;
    - ``eta_min`` from ``n_epochs`` on.

    The LR is a closed-form function of the epoch, so the state dict holds only
    plain numbers and a resumed run continues exactly.

    Args:
        optimizer: the wrapped optimizer.
        start_anneal: first epoch of the cosine (the write-up: 30).
        n_epochs: epoch at which the LR reaches ``eta_min`` (the write-up: 250).
        eta_min: final LR, at most every group's base LR.
        warmup_epochs: epochs of linear warm-up, at most ``start_anneal``.
        last_epoch: index of the last epoch, for torch's resume protocol.
        per_step: the LR also moves within each epoch (:func:`step_within_epoch`).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        start_anneal: int,
        n_epochs: int,
        eta_min: float = 0.0,
        warmup_epochs: int = 0,
        last_epoch: int = -1,
        per_step: bool = False,
    ):
        _check_epochs("n_epochs", n_epochs, minimum=1)
        _check_epochs("start_anneal", start_anneal)
        if not isinstance(per_step, bool):
            raise _BadArgument("per_step", f"expected true or false, got {per_step!r}")
        _check_epochs("warmup_epochs", warmup_epochs)
        if start_anneal > n_epochs:
            raise _BadArgument("start_anneal", f"must be <= n_epochs ({n_epochs}), got {start_anneal}")
        if warmup_epochs > start_anneal:
            raise _BadArgument("warmup_epochs", f"must be <= start_anneal ({start_anneal}), got {warmup_epochs}")
        _check_eta_min(optimizer, eta_min)
        self.start_anneal = start_anneal
        self.n_epochs = n_epochs
        self.eta_min = eta_min
        self.warmup_epochs = warmup_epochs
        self.per_step = per_step
        self.configured = (warmup_epochs, start_anneal, n_epochs)  # set_horizon scales from these
        super().__init__(optimizer, last_epoch)

    def set_horizon(self, n_epochs: float) -> None:
        """Lay the schedule over ``n_epochs`` epochs instead of the configured ``n_epochs``.

        The flat part keeps its configured share of the schedule (warm-up keeps its
        epochs, up to the flat part's end); the LR of the epochs to come follows the new
        horizon. Used by ``trainer.time_budget``, which re-lays it after every epoch.
        A per-step schedule ends at a fractional horizon (3.4: four-tenths into the
        fourth epoch); an epoch-wise one at the whole epochs that hold it (4).
        """
        warmup_epochs, start_anneal, configured = self.configured
        if self.per_step:
            self.n_epochs = max(1e-3, float(n_epochs))
            self.start_anneal = start_anneal * self.n_epochs / configured
        else:
            self.n_epochs = max(1, math.ceil(n_epochs))
            self.start_anneal = min(self.n_epochs, round(start_anneal * self.n_epochs / configured))
        self.warmup_epochs = min(warmup_epochs, self.start_anneal)

    def set_position(self, position: float) -> None:
        """Give every param group the LR of ``position`` epochs (0-based, fractional), without stepping."""
        self._last_lr = [self._lr_at(base, position) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_lr(self) -> list[float]:
        """The LR of every param group for epoch ``last_epoch``."""
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        return [self._lr_at(base, self.last_epoch) for base in self.base_lrs]

    def _lr_at(self, base: float, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return base * (epoch + 1) / (self.warmup_epochs + 1)
        if epoch < self.start_anneal:
            return base
        if epoch >= self.n_epochs:
            return self.eta_min
        progress = (epoch - self.start_anneal) / (self.n_epochs - self.start_anneal)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


@SCHEDULERS.register
class WarmupCosine(FlatCosineAnnealing):
    """Linear warm-up over ``warmup_epochs``, then cosine annealing to ``eta_min`` at ``n_epochs``.

    Epoch ``e < warmup_epochs`` runs at ``base * (e + 1) / (warmup_epochs + 1)``;
    the cosine starts from ``base`` at epoch ``warmup_epochs``. Held at
    ``eta_min`` after ``n_epochs``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_epochs: int,
        n_epochs: int,
        eta_min: float = 0.0,
        last_epoch: int = -1,
        per_step: bool = False,
    ):
        _check_epochs("n_epochs", n_epochs, minimum=1)
        _check_epochs("warmup_epochs", warmup_epochs)
        if warmup_epochs > n_epochs:
            raise _BadArgument("warmup_epochs", f"must be <= n_epochs ({n_epochs}), got {warmup_epochs}")
        super().__init__(optimizer, warmup_epochs, n_epochs, eta_min, warmup_epochs, last_epoch, per_step)


def _check_eta_min(optimizer: torch.optim.Optimizer, eta_min: Any) -> None:
    """``eta_min`` must be a number in [0, every group's base LR]."""
    if not isinstance(eta_min, numbers.Real) or isinstance(eta_min, bool) or eta_min < 0:
        raise _BadArgument("eta_min", f"expected a number >= 0, got {eta_min!r}")
    lowest = min(float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups)
    if eta_min > lowest:
        raise _BadArgument("eta_min", f"must not exceed the lowest base LR ({lowest:g}), got {eta_min:g}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, block: Any, key: str = "lr_scheduler"
) -> lr_scheduler.LRScheduler | None:
    """The scheduler an ``lr_scheduler:`` block describes, or None when the block is None.

    Args:
        optimizer: the optimizer whose param groups it schedules.
        block: ``{type: NAME, args: {...}}`` (or just ``NAME``); counts are in epochs.
        key: the block's dotted path in the config, for error messages.

    Raises:
        ConfigError: unknown scheduler or argument, or an invalid value; the
            message names the config key.
    """
    if block is None:
        return None
    name, args = parse_spec(block, key)
    if name in NOT_CONFIGURABLE:
        raise ConfigError(
            f"{key}.type: {name} takes Python functions or schedulers, which a config cannot give. "
            f"Valid: {', '.join(SCHEDULERS.names())}"
        )
    scheduler_class = SCHEDULERS.get(name, f"{key}.type")
    check_arguments(scheduler_class, args, f"{key}.args", supplied=("optimizer", "last_epoch"))
    try:
        _check_torch_epoch_args(args)
        return scheduler_class(optimizer, **args)
    except _BadArgument as exc:
        raise ConfigError(f"{key}.args.{exc.arg}: {exc.reason}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot build lr scheduler '{name}': {exc}") from exc


def _check_torch_epoch_args(args: Mapping[str, Any]) -> None:
    """Epoch counts of torch's schedulers must be integers at or above their minimum."""
    for arg, value in args.items():
        if arg in _TORCH_EPOCH_ARGS:
            _check_epochs(arg, value, _TORCH_EPOCH_ARGS[arg])
    milestones = args.get("milestones", [])
    if not isinstance(milestones, (list, tuple)):
        raise _BadArgument("milestones", f"expected a list of epochs, got {milestones!r}")
    for milestone in milestones:
        _check_epochs("milestones", milestone)


def set_horizon(scheduler: lr_scheduler.LRScheduler | None, epochs: float) -> bool:
    """Re-lay ``scheduler`` to end after ``epochs`` epochs (fractional: see
    :meth:`FlatCosineAnnealing.set_horizon`); False when it has no horizon to move.

    Only sever's closed-form schedules (:class:`FlatCosineAnnealing`, :class:`WarmupCosine`)
    can move their end mid-run and still resume exactly; others keep their epoch counts.
    """
    if not isinstance(scheduler, FlatCosineAnnealing):
        return False
    scheduler.set_horizon(epochs)
    return True


def step_within_epoch(scheduler: lr_scheduler.LRScheduler | None, fraction: float) -> None:
    """Before a training step, ``fraction`` (0-1) of the way through the epoch's batches: a per-step
    schedule sets the LR of that point; every other scheduler keeps its epoch's LR."""
    if isinstance(scheduler, FlatCosineAnnealing) and scheduler.per_step:
        scheduler.set_position(scheduler.last_epoch + fraction)


def step_scheduler(
    scheduler: lr_scheduler.LRScheduler | None, metrics: Mapping[str, Any], monitor_key: str | None
) -> None:
    """Advance ``scheduler`` by one epoch; call once at the end of every epoch.

    ``ReduceLROnPlateau`` is stepped with ``metrics[monitor_key]`` (set its
    ``mode`` to match: ``max`` for a Dice score); every other scheduler ignores
    the metrics. A None scheduler does nothing.

    Raises:
        ConfigError: ``ReduceLROnPlateau`` without a monitored metric, or with
            one missing from ``metrics``.
    """
    if scheduler is None:
        return
    if not isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step()
        return
    if monitor_key is None:
        raise ConfigError("lr_scheduler.type: ReduceLROnPlateau needs a monitored metric, but none is configured")
    if monitor_key not in metrics:
        raise ConfigError(
            f"lr_scheduler: ReduceLROnPlateau monitors '{monitor_key}', which this epoch did not log."
            f"{did_you_mean(monitor_key, metrics)} Logged: {', '.join(sorted(metrics)) or '(none)'}"
        )
    scheduler.step(float(metrics[monitor_key]))
