"""Build parts of an experiment by name from their YAML block.

Every pluggable part (architecture, loss, metric, optimiser, scheduler,
augmentation, sampler, data loader, data source, trainer, task) lives in a
:class:`Registry`; all of them are created in :mod:`sever.registries`, each with
the ``locations`` (module names) that register its entries, imported on the
first lookup. A config block names one entry and its arguments::

    loss:
      type: BCEDiceLoss
      args: {bce_weight: 0.6, dice_weight: 0.4}

and ``LOSSES.build(config["loss"], "loss")`` returns the instance. Unknown names
and unknown, missing or misspelt arguments raise :class:`ConfigError` naming the
key and listing what is valid, before any training starts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

from sever.exceptions import ConfigError, SeverError


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``.

    Compared without case, so ``Fpn`` finds ``FPN`` (too far apart for difflib with case).
    """
    by_folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_folded), n=1, cutoff=0.6)
    return f" Did you mean '{by_folded[close[0]]}'?" if close else ""


def _signature_params(obj: Callable) -> tuple[set[str], set[str], bool]:
    """(all named parameters, required ones, accepts **kwargs) of a class or function."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return set(), set(), True
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = {
        p.name
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    return named, required, var_kw


def check_arguments(obj: Callable, args: Mapping[str, Any], key: str, supplied: Iterable[str] = ()) -> None:
    """Raise :class:`ConfigError` if ``args`` do not fit ``obj``'s signature.

    ``supplied`` names arguments the caller fills in itself (a model's
    parameters, the number of classes), which therefore must not appear in the
    config and are not required from it.
    """
    named, required, var_kw = _signature_params(obj)
    supplied = set(supplied)
    for arg in args:
        if arg in supplied:
            raise ConfigError(f"{key}.{arg}: set by sever itself, remove it from the config")
        if arg not in named and not var_kw:
            valid = sorted(named - supplied)
            raise ConfigError(
                f"{key}.{arg}: unknown argument for {getattr(obj, '__name__', obj)}."
                f"{did_you_mean(arg, valid)} Valid: {', '.join(valid) or '(none)'}"
            )
    missing = sorted(required - supplied - set(args))
    if missing:
        raise ConfigError(f"{key}: missing required argument(s) {', '.join(missing)}")


class Registry:
    """A table of named constructors for one kind of part.

    Args:
        kind: what the entries are, used in messages ("loss", "architecture").
        locations: modules whose import registers the entries (``"sever.model.loss"``).
            They are imported on the first lookup, listing or membership test, so a
            part in a new module needs only its module named here.
    """

    def __init__(self, kind: str, locations: Sequence[str] = ()):
        self.kind = kind
        self.locations = tuple(locations)
        self._entries: dict[str, Any] = {}
        self._imported = False

    def register(self, obj: Any = None, *, name: str | None = None):
        """Add ``obj`` under ``name`` (default: its ``__name__``); usable as a decorator."""

        def add(target: Any) -> Any:
            entry = name or target.__name__
            if entry in self._entries and self._entries[entry] is not target:
                raise KeyError(f"{self.kind} '{entry}' is registered twice")
            self._entries[entry] = target
            return target

        return add(obj) if obj is not None else add

    def _import_locations(self) -> None:
        """Import the modules that register this kind's entries (once; a missing one is a bug)."""
        if self._imported:
            return
        self._imported = True  # set first: a location that looks this registry up while importing gets no loop
        try:
            for module in self.locations:
                importlib.import_module(module)
        except BaseException:
            self._imported = False  # a failed import is retried (and fails again, loudly) on the next lookup
            raise

    def names(self) -> list[str]:
        self._import_locations()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._import_locations()
        return name in self._entries

    def get(self, name: Any, key: str) -> Callable:
        """The entry called ``name``; ``key`` is the config path used in errors."""
        self._import_locations()
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(
                f"{key}: unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Valid: {', '.join(self.names())}"
            )
        return self._entries[name]

    def check(self, spec: Any, key: str, supplied: Iterable[str] = ()) -> None:
        """Validate a block's name and arguments without building it."""
        name, kwargs = parse_spec(spec, key)
        check_arguments(self.get(name, f"{key}.type"), kwargs, f"{key}.args", supplied=supplied)

    def build(self, spec: Any, key: str, *args: Any, **supplied: Any) -> Any:
        """Instantiate the entry a config block names.

        Args:
            spec: ``{"type": NAME, "args": {...}}`` or just ``NAME``.
            key: the block's dotted path in the config, for error messages.
            *args: arguments sever provides (e.g. model parameters).
            **supplied: keyword arguments sever provides.
        """
        name, kwargs = parse_spec(spec, key)
        target = self.get(name, f"{key}.type")
        check_arguments(target, kwargs, f"{key}.args", supplied=supplied.keys())
        try:
            return target(*args, **supplied, **kwargs)
        except SeverError:  # already names what is wrong (a data error stays a data error)
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot build {self.kind} '{name}': {exc}") from exc


def parse_spec(spec: Any, key: str) -> tuple[str, dict]:
    """Split a ``{type, args}`` block (or bare name) into ``(name, args)``."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}: expected a name or a mapping with 'type' and 'args', got {type(spec).__name__}")
    unknown = set(spec) - {"type", "args"}
    if unknown:
        extra = sorted(unknown)[0]
        raise ConfigError(f"{key}.{extra}: unknown key.{did_you_mean(extra, ['type', 'args'])} Valid: type, args")
    if "type" not in spec:
        raise ConfigError(f"{key}.type: missing")
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{key}.args: expected a mapping, got {type(args).__name__}")
    return spec["type"], dict(args)
