"""Experiment configuration: load YAML safely, apply ``--set`` overrides, validate.

Validation here covers the keys sever reads itself (top level, ``trainer``);
the ``type``/``args`` blocks are checked against their registries by
:mod:`sever.experiment` before anything is built.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from sever.exceptions import ConfigError
from sever.registries import TASKS
from sever.tasks import SEGMENTATION
from sever.utils.registry import did_you_mean, parse_spec


class _ConfigLoader(yaml.SafeLoader):
    """``SafeLoader`` that also reads ``7e-5`` as a float.

    YAML 1.1 demands a dot in the mantissa (``7.0e-5``); without this resolver
    the write-up's learning rates would silently load as strings.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely; a syntax error names the source and line."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:  # PyYAML parses nested blocks recursively
        raise ConfigError(f"{source}: YAML nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from exc


def builtin_experiments() -> dict[str, Path]:
    """The experiment files shipped inside the package, by name (``demo`` -> ``.../experiments/demo.yml``)."""
    folder = Path(str(resources.files("sever") / "experiments"))
    return {path.stem: path for path in sorted(folder.glob("*.yml"))}


def resolve_experiment(name: str | Path) -> Path:
    """The file ``sever train -c NAME`` means: ``NAME`` itself when it exists, else a built-in experiment.

    A built-in experiment is named with or without ``.yml`` (``demo``, ``demo.yml``), so
    ``sever train -c demo`` works from any folder once sever is installed.
    """
    path = Path(name)
    if path.exists():
        return path
    builtin = builtin_experiments()
    stem = path.name[: -len(".yml")] if path.name.endswith(".yml") else path.name
    if str(path.parent) == "." and stem in builtin:
        return builtin[stem]
    raise ConfigError(f"config file not found: {name}; not a built-in experiment either "
                      f"(built-in: {', '.join(builtin)}).{did_you_mean(stem, builtin)}")


def load_config(path: str | Path) -> dict:
    """Read an experiment file into a plain dict (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    config = parse_yaml(text, str(path))
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(config).__name__}")
    return config


def dump_config(config: Mapping, path: str | Path) -> None:
    """Write a config as YAML (the resolved copy saved beside checkpoints)."""
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")


def with_defaults(spec: Any, target: Callable, key: str, supplied: tuple[str, ...] = ()) -> dict:
    """A ``type``/``args`` block with every argument ``target`` defaults filled in (for ``config.yaml``).

    Arguments sever supplies itself are left out, and so are defaults YAML cannot write
    (objects); tuples are written as lists.
    """
    name, args = parse_spec(spec, key)
    function = target.__init__ if inspect.isclass(target) else target
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: only what the config gave
        parameters = []
    filled = {}  # in the signature's order
    for parameter in parameters:
        if parameter.name in args:
            filled[parameter.name] = args[parameter.name]
        elif parameter.name not in supplied and parameter.name != "self" and parameter.default is not parameter.empty:
            default = _plain(parameter.default)
            if default is not _NOT_PLAIN:
                filled[parameter.name] = default
    return {"type": name, "args": {**filled, **args}}


_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe data (tuples as lists), or :data:`_NOT_PLAIN`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


_SIZE = re.compile(r"\d+[xX]\d+")  # HEIGHTxWIDTH, as trainer.valid_tile takes it


def apply_overrides(config: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``config`` with ``dotted.key=value`` overrides applied.

    Values are parsed as YAML (``3`` is an int, ``null`` is None, ``[1, 2]`` a
    list), except a size ``HxW`` (``0x64``, ``512x512``), which stays text: YAML 1.1
    reads ``0x64`` as the hex number 100. Missing intermediate mappings are created;
    list items are addressed by index (``metrics.0.args.threshold=0.4``). Unknown
    keys are caught later by validation, with a suggestion.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.epochs=5")
        value = raw.strip() if _SIZE.fullmatch(raw.strip()) else parse_yaml(raw, f"--set {key}")
        _set_dotted(config, key.strip(), value)
    return config


def _set_dotted(config: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:depth])}' is a value, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is a value, not a mapping")


def _list_index(items: list, part: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(items) <= int(part) < len(items):
        raise ConfigError(f"--set {where}: expected an index below {len(items)} into a list")
    return int(part)


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Field:
    """One key of a config section.

    Args:
        types: accepted Python types (``float`` also accepts ``int``; ``bool`` is never an int).
        default: value filled in when the key is absent (ignored when ``required``).
        required: the key must be present.
        choices: accepted values, when the key is an enumeration.
        check: extra predicate and the message shown when it fails ("must be > 0").
        nullable: ``None`` is accepted.
    """

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    check: tuple[Callable[[Any], bool], str] | None = None
    nullable: bool = False


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _seed_range(value: Any) -> bool:
    return 0 <= value < 2**32


POSITIVE = (_positive, "must be > 0")
NON_NEGATIVE = (_non_negative, "must be >= 0")
SPEC = (str, dict)  # a `type`/`args` block or a bare name

TRAINER_SCHEMA: dict[str, Field] = {
    "epochs": Field((int,), required=True, check=POSITIVE),
    "save_period": Field((int,), default=1, check=NON_NEGATIVE),
    "monitor": Field((str,), default="max val_dice_mean"),
    "early_stop": Field((int,), default=None, nullable=True, check=POSITIVE),
    "val_period": Field((int,), default=1, check=POSITIVE),
    "start_val_epoch": Field((int,), default=0, check=NON_NEGATIVE),
    "freeze_encoder_epochs": Field((int,), default=0, check=NON_NEGATIVE),
    "accumulate_steps": Field((int,), default=1, check=POSITIVE),
    "grad_clip": Field((int, float), default=None, nullable=True, check=POSITIVE),
    "ema_decay": Field((float,), default=None, nullable=True, check=(lambda v: 0 < v < 1, "must be in (0, 1)")),
    "nan_policy": Field((str,), default="stop", choices=("stop", "skip")),
    "tensorboard": Field((bool,), default=True),
    "log_step": Field((int,), default=10, check=POSITIVE),
    "vis_images": Field((int,), default=4, check=NON_NEGATIVE),
    "max_steps_per_epoch": Field((int,), default=None, nullable=True, check=POSITIVE),
    "channels_last": Field((bool,), default=False),
    "compile": Field((bool,), default=False),
    "cudnn_benchmark": Field((bool,), default=True),
    "report_images": Field((int,), default=16, check=NON_NEGATIVE),
    "time_budget": Field((str, int, float), default=None, nullable=True),
    "tune_postprocess": Field((bool,), default=True),
    "valid_tile": Field((str,), default=None, nullable=True),  # HxW; checked by inference.tiling.valid_tiling
    "valid_overlap": Field((float,), default=0.25, check=(lambda v: 0 <= v < 1, "must be in [0, 1)")),
}

TOP_SCHEMA: dict[str, Field] = {
    "name": Field((str,), required=True),
    "save_dir": Field((str,), default="saved/"),
    "seed": Field((int,), default=1234, check=(_seed_range, "must be in 0..2**32-1 (NumPy's seed range)")),
    "device": Field((str,), default="auto"),
    "amp": Field((str, bool), default="off", nullable=True),
    "task": Field((str,), default=SEGMENTATION.name, choices=tuple(TASKS.names())),
    "classes": Field((int,), required=True, check=POSITIVE),
    "class_names": Field((list,), default=None, nullable=True),
    "arch": Field(SPEC, required=True),
    "data_loader": Field(SPEC, required=True),
    "augmentation": Field(SPEC, required=True),
    "loss": Field(SPEC, required=True),
    "metrics": Field((list,), default=None, nullable=True),
    "optimizer": Field((dict,), required=True),
    "lr_scheduler": Field(SPEC, default=None, nullable=True),
    "trainer": Field((dict,), required=True),
    "pseudo": Field((dict,), default=None, nullable=True),  # pseudo-label rounds of a study (sever.study)
    "final_model": Field((bool,), default=False),  # a study's run on every image after its folds (sever.study.final)
}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a mapping"}


def _check_value(key: str, value: Any, field: Field) -> None:
    if value is None:
        if field.nullable:
            return
        raise ConfigError(f"{key}: must not be empty")
    types = field.types + ((int,) if float in field.types else ())
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in field.types)
        raise ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(
            f"{key}: {value!r} is not one of {', '.join(map(str, field.choices))}.{did_you_mean(value, map(str, field.choices))}"
        )
    if field.check is not None and not field.check[0](value):
        raise ConfigError(f"{key}: {field.check[1]}, got {value!r}")


def validate_section(section: Mapping, schema: Mapping[str, Field], prefix: str = "") -> dict:
    """Check a mapping against a schema and return it with defaults filled in."""
    for key in section:
        if key not in schema:
            raise ConfigError(
                f"{prefix}{key}: unknown key.{did_you_mean(key, schema)} Valid: {', '.join(schema)}"
            )
    result = {}
    for key, field in schema.items():
        if key not in section:
            if field.required:
                raise ConfigError(f"{prefix}{key}: missing required key")
            result[key] = copy.deepcopy(field.default)
            continue
        _check_value(prefix + key, section[key], field)
        result[key] = section[key]
    return result


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(value: Any, key: str) -> float:
    """``"2h30m"``, ``"45m"``, ``"90s"``, ``"1.5h"`` -> seconds (> 0).

    Raises:
        ConfigError: anything else (a bare number has no unit), naming ``key``.
    """
    match = _DURATION.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or not any(match.groups()):
        raise ConfigError(f"{key}: expected a duration such as 2h30m, 45m or 90s, got {value!r}")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ConfigError(f"{key}: the duration must be > 0, got {value!r}")
    return total


ANY_DEFECT = "any"  # data_loader.args.train_classes: one output, the union of every class's mask


@dataclass(frozen=True)
class OutputClasses:
    """Which classes of a dataset a run's outputs are (``data_loader.args.train_classes``).

    Attributes:
        dataset: C, the dataset's class count (config ``classes``; ClassIds 1..C).
        ids: the 0-based dataset class of each output channel, ascending; None for one
            any-defect output (the union of every class's mask).
        names: the dataset's C class names (config ``class_names``), or None.
    """

    dataset: int
    ids: tuple[int, ...] | None
    names: tuple[str, ...] | None = None

    @property
    def any_defect(self) -> bool:
        return self.ids is None

    @property
    def outputs(self) -> int:
        """How many channels the run's network predicts."""
        return 1 if self.ids is None else len(self.ids)

    @property
    def complete(self) -> bool:
        """The outputs are every dataset class, in order."""
        return self.ids == tuple(range(self.dataset))

    def label(self, k: int) -> str:
        """Report label of dataset class ``k`` (0-based): ``"3 scratches"`` with names, else ``"class 3"``."""
        return f"{k + 1} {self.names[k]}" if self.names else f"class {k + 1}"

    def labels(self) -> list[str]:
        """One report label per output channel; ``"any defect"`` for an any-defect output."""
        return ["any defect"] if self.ids is None else [self.label(k) for k in self.ids]

    def describe(self) -> str:
        """``"classes 1, 3"``, ``"class 2"`` or ``"any defect"``: what the outputs are, for messages."""
        if self.ids is None:
            return "any defect (train_classes: any)"
        return ("class " if len(self.ids) == 1 else "classes ") + ", ".join(str(k + 1) for k in self.ids)


def parse_train_classes(value: Any, classes: int,
                        key: str = "data_loader.args.train_classes") -> tuple[int, ...] | None:
    """``train_classes`` as 0-based ascending class indices; None for ``any``.

    Args:
        value: None (every class), ``"any"`` or a list of distinct 1-based ClassIds in 1..``classes``.

    Raises:
        ConfigError: anything else, naming ``key`` and the offending entry.
    """
    if value is None:
        return tuple(range(classes))
    if value == ANY_DEFECT:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}: expected a list of ClassIds in 1..{classes} (e.g. [3]) or {ANY_DEFECT!r}, "
                          f"got {value!r}")
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= classes:
            raise ConfigError(f"{key}[{position}]: {item!r} is not a ClassId in 1..{classes} (classes: {classes})")
        if item in value[:position]:
            raise ConfigError(f"{key}[{position}]: ClassId {item} is listed twice")
    return tuple(sorted(item - 1 for item in value))


def output_classes(config: Mapping) -> OutputClasses:
    """The dataset classes a run's outputs are, from its ``classes``, ``class_names`` and ``train_classes``.

    A config without ``data_loader.args.train_classes`` (every config before it existed)
    predicts every class.
    """
    loader = config.get("data_loader")
    args = loader.get("args") if isinstance(loader, Mapping) else None
    chosen = args.get("train_classes") if isinstance(args, Mapping) else None
    names = config.get("class_names")
    return OutputClasses(config["classes"], parse_train_classes(chosen, config["classes"]),
                         tuple(names) if names else None)


def normalise_amp(value: Any) -> str:
    """``amp`` as one of ``off``, ``bf16``, ``fp16`` (YAML reads a bare ``off`` as False)."""
    if value in (None, False, "off", "none"):
        return "off"
    if value in ("bf16", "fp16"):
        return value
    raise ConfigError(f"amp: expected off, bf16 or fp16, got {value!r}")


def validate_config(config: Mapping) -> dict:
    """Validate sever's own keys and fill in defaults; returns a new dict."""
    result = validate_section(config, TOP_SCHEMA)
    result["trainer"] = validate_section(result["trainer"], TRAINER_SCHEMA, "trainer.")
    result["amp"] = normalise_amp(result["amp"])
    names = result["class_names"]
    if names is not None and len(names) != result["classes"]:
        raise ConfigError(f"class_names: {len(names)} names given but classes is {result['classes']}")
    output_classes(result)  # a bad data_loader.args.train_classes fails here, before anything is built
    if result["trainer"]["time_budget"] is not None:
        parse_duration(result["trainer"]["time_budget"], "trainer.time_budget")
    monitor = result["trainer"]["monitor"]
    if monitor != "off" and (len(monitor.split()) != 2 or monitor.split()[0] not in ("min", "max")):
        raise ConfigError(f"trainer.monitor: expected 'off' or 'min|max METRIC' (e.g. 'max val_dice_mean'), got {monitor!r}")
    if result["metrics"] is not None:
        for i, spec in enumerate(result["metrics"]):
            _check_value(f"metrics.{i}", spec, Field(SPEC))
    return result
