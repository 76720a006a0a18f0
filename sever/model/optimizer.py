"""Optimisers with separate encoder and decoder parameter groups.

The write-up trains the pretrained encoder gently and the fresh decoder hard::

    optimizer:
      type: RAdam
      args: {}                                    # shared by both groups (optional)
      encoder: {lr: 7.0e-5, weight_decay: 3.0e-5}
      decoder: {lr: 3.0e-3, weight_decay: 3.0e-4}

:func:`build_optimizer` turns that block into one optimizer with parameter groups
named ``"encoder"`` and ``"decoder"`` (``group["name"]``); each group's own args
override the shared ``args``. Without ``encoder`` and ``decoder`` there is a
single group named ``"all"`` built from ``args``. Every group must end up with an
``lr``.

The ``"encoder"`` group holds ``model.encoder``'s parameters; the ``"decoder"``
group holds every other parameter of the model (the decoder, its heads and
anything else). Frozen parameters (``requires_grad=False``) are included: the
trainer freezes the encoder for the first epochs and unfreezes it later, and
torch optimizers skip parameters whose ``grad`` is ``None`` until then (so the
trainer must zero gradients with ``set_to_none=True``, torch's default).
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from sever.exceptions import ConfigError
from sever.registries import OPTIMIZERS
from sever.utils.registry import check_arguments, did_you_mean

for _torch_optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RAdam):
    OPTIMIZERS.register(_torch_optimizer)

_BLOCK_KEYS = ("type", "args", "encoder", "decoder")
_GROUP_NAMES = ("encoder", "decoder")
_NON_NEGATIVE_ARGS = ("lr", "weight_decay", "eps", "momentum", "dampening")


@OPTIMIZERS.register
class Ranger(torch.optim.RAdam):
    """RAdam wrapped in Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps
    forward, 1 step back").

    RAdam moves the "fast" weights as usual. Each parameter also keeps a "slow"
    copy, taken just before its first step; after every ``k``-th step of that
    parameter the slow copy moves ``alpha`` of the way towards the fast weights
    (``slow += alpha * (fast - slow)``) and the fast weights restart from it.
    Parameters without a gradient are neither stepped nor counted.

    ``k`` and ``alpha`` live in each param group like ``lr``; the per-parameter
    state adds ``slow_weights`` (a tensor) and ``lookahead_step`` (an int), so
    :meth:`state_dict` loads with ``torch.load(weights_only=True)`` and training
    resumes exactly.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        lr, betas, eps, weight_decay, decoupled_weight_decay: RAdam's arguments
            (Ranger's customary ``betas=(0.95, 0.999)``, ``eps=1e-5``).
        k: fast steps between slow-weight updates, >= 1.
        alpha: slow-weight step size, in (0, 1].
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        decoupled_weight_decay: bool = False,
    ):
        for arg, value in (("k", k), ("alpha", alpha)):
            problem = _value_problem(arg, value)
            if problem:
                raise ValueError(f"Invalid lookahead {arg}: {problem}")
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self.defaults.update(k=k, alpha=alpha)
        for group in self.param_groups:
            group.setdefault("k", k)
            group.setdefault("alpha", alpha)

    @torch.no_grad()
    def step(self, closure=None):
        """One RAdam step, then the Lookahead update for parameters due one.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepping = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        starts = [(p, p.detach().clone()) for p, _ in stepping if "slow_weights" not in self.state[p]]
        self._radam_step()
        for p, start in starts:
            self.state[p]["slow_weights"] = start
        for p, group in stepping:
            self._lookahead(p, group)
        return loss

    def _radam_step(self) -> None:
        """RAdam's update of every parameter with a gradient.

        Once any RAdam exists, torch wraps ``RAdam.step`` in the wrapper that
        runs step hooks; ``Ranger.step`` has its own, so the inner call skips it
        and hooks run once per step.
        """
        radam_step = torch.optim.RAdam.step
        if getattr(radam_step, "hooked", False):
            radam_step = radam_step.__wrapped__
        radam_step(self)

    def _lookahead(self, param: torch.Tensor, group: Mapping[str, Any]) -> None:
        """Count one fast step of ``param``; every k-th, pull slow weights and reset fast ones."""
        state = self.state[param]
        state["lookahead_step"] = state.get("lookahead_step", 0) + 1
        if state["lookahead_step"] % group["k"] == 0:
            slow = state["slow_weights"]
            slow.lerp_(param, group["alpha"])
            param.copy_(slow)


def build_optimizer(model: nn.Module, block: Any, key: str = "optimizer") -> torch.optim.Optimizer:
    """The optimizer an ``optimizer:`` block describes, over all of ``model``'s parameters.

    Args:
        model: the network; needs an ``encoder`` submodule when the block has
            ``encoder`` or ``decoder`` args.
        block: ``{type, args, encoder, decoder}`` as in this module's docstring.
        key: the block's dotted path in the config, for error messages.

    Returns:
        The optimizer, with one param group per name (``group["name"]``):
        ``"encoder"`` and ``"decoder"``, or ``"all"``.

    Raises:
        ConfigError: unknown optimizer, key or argument; a missing ``lr``; an
            invalid value. The message names the config key.
    """
    if not isinstance(block, Mapping):
        raise ConfigError(f"{key}: expected a mapping with 'type', got {type(block).__name__}")
    _check_block_keys(block, key)
    if "type" not in block:
        raise ConfigError(f"{key}.type: missing. Valid: {', '.join(OPTIMIZERS.names())}")
    name = block["type"]
    optimizer_class = OPTIMIZERS.get(name, f"{key}.type")
    shared = _section_args(optimizer_class, block, "args", key)
    groups = _param_groups(model, block, optimizer_class, shared, key)
    try:
        return optimizer_class(groups, **shared)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot build optimizer '{name}': {exc}") from exc


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each param group, by ``group["name"]`` (``group<i>`` if unnamed)."""
    return {
        group.get("name", f"group{index}"): float(group["lr"])
        for index, group in enumerate(optimizer.param_groups)
    }


def _check_block_keys(block: Mapping, key: str) -> None:
    """Reject keys other than type/args/encoder/decoder, suggesting the closest."""
    for entry in block:
        if entry not in _BLOCK_KEYS:
            raise ConfigError(
                f"{key}.{entry}: unknown key.{did_you_mean(entry, _BLOCK_KEYS)} Valid: {', '.join(_BLOCK_KEYS)}"
            )


def _section_args(optimizer_class: type, block: Mapping, section: str, key: str) -> dict[str, Any]:
    """The checked argument mapping ``block[section]`` (empty when absent or null)."""
    args = block.get(section) or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{key}.{section}: expected a mapping of optimizer arguments, got {type(args).__name__}")
    check_arguments(optimizer_class, args, f"{key}.{section}", supplied=("params",))
    for arg, value in args.items():
        problem = _value_problem(arg, value)
        if problem:
            raise ConfigError(f"{key}.{section}.{arg}: {problem}")
    return dict(args)


def _value_problem(arg: str, value: Any) -> str | None:
    """Why ``value`` is invalid for optimizer argument ``arg``, or None if it is fine."""
    if arg in _NON_NEGATIVE_ARGS:
        if not _is_number(value):
            return f"expected a number, got {value!r}{_yaml_hint(value)}"
        return f"must be >= 0, got {value}" if value < 0 else None
    if arg == "betas":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)
        return None if ok else f"expected two numbers in [0, 1), got {value!r}"
    if arg == "k":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"expected an integer >= 1, got {value!r}"
    if arg == "alpha":
        return None if _is_number(value) and 0 < value <= 1 else f"expected a number in (0, 1], got {value!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _yaml_hint(value: Any) -> str:
    """A hint for YAML 1.1's reading of ``7e-5`` (no dot) as a string."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads exponents without a dot as text: write 7.0e-5, not 7e-5)"


def _param_groups(
    model: nn.Module, block: Mapping, optimizer_class: type, shared: Mapping, key: str
) -> list[dict[str, Any]]:
    """Param-group dicts: ``encoder``/``decoder`` when either is configured, else ``all``."""
    if not any(name in block for name in _GROUP_NAMES):
        _require_lr(shared, f"{key}.args")
        return [{"name": "all", "params": list(model.parameters())}]
    params = _split_parameters(model, key)
    groups = []
    for name in _GROUP_NAMES:
        own = _section_args(optimizer_class, block, name, key)
        _require_lr({**shared, **own}, f"{key}.{name}", f" (set it there or in {key}.args)")
        groups.append({"name": name, "params": params[name], **own})
    return groups


def _require_lr(args: Mapping, where: str, hint: str = "") -> None:
    if "lr" not in args:
        raise ConfigError(f"{where}.lr: missing{hint}")


def _split_parameters(model: nn.Module, key: str) -> dict[str, list[nn.Parameter]]:
    """``model.encoder``'s parameters, and every other parameter of ``model``; each exactly once."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"{key}.encoder: {type(model).__name__} has no 'encoder' submodule; "
            f"remove {key}.encoder and {key}.decoder to train all parameters as one group"
        )
    everything = list(model.parameters())
    encoder_ids = {id(p) for p in encoder.parameters()}
    if not encoder_ids <= {id(p) for p in everything}:
        raise RuntimeError(f"{type(model).__name__}.encoder is not a registered submodule of the model")
    return {
        "encoder": [p for p in everything if id(p) in encoder_ids],
        "decoder": [p for p in everything if id(p) not in encoder_ids],
    }
