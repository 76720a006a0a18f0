"""A run's training history: the per-epoch values and learning rates it logged.

The TensorBoard events under ``runs/`` are read first (``epoch/<key>`` scalars,
``lr/<group>`` rates); a run trained with ``trainer.tensorboard: false`` has
only ``train.log``, whose ``epoch N/M  key value ...`` lines give the same
per-epoch values but no learning rate. What could not be read is listed in
:attr:`History.notes` for the report page, never raised.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sever.utils.run import RunPaths

logger = logging.getLogger(__name__)

EPOCH_PREFIX = "epoch/"
LR_PREFIX = "lr/"
_LOG_EPOCH = re.compile(r"\bepoch (\d+)(?:/\d+)?\s+(.*)$")
_LOG_VALUE = re.compile(r"([A-Za-z][\w.\-]*) (-?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|nan|inf))(?=\s|$)")
_RECORD_FRAME = 12 + 4  # TFRecord: uint64 length, uint32 length CRC, data, uint32 data CRC


@dataclass
class History:
    """Logged values by name and step.

    Attributes:
        values: ``{"val_dice_0": {epoch: value}, ...}``, one entry per epoch logged
            (the last one written wins when a resumed run logged an epoch twice).
        lr: ``{"encoder": {step: rate}, ...}`` learning rate per parameter group, by the
            TensorBoard step it was logged at.
        source: where the values came from (for the page).
        notes: what is missing or damaged, one sentence each.
    """

    values: dict[str, dict[int, float]] = field(default_factory=dict)
    lr: dict[str, dict[int, float]] = field(default_factory=dict)
    source: str = "nothing"
    notes: list[str] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of ``key`` in epoch order (empty when never logged)."""
        points = sorted(self.values.get(key, {}).items())
        return [p[0] for p in points], [p[1] for p in points]

    def keys(self, prefix: str) -> list[str]:
        """Logged keys starting with ``prefix``, sorted."""
        return sorted(k for k in self.values if k.startswith(prefix))

    @property
    def has_validation(self) -> bool:
        return any(key.startswith("val_") for key in self.values)


def truncated(path: Path) -> bool:
    """Whether a TensorBoard event file ends inside a record (a crash or full disk while writing).

    Only the record framing is walked (8-byte little-endian lengths); contents are not checked.
    """
    size, offset = path.stat().st_size, 0
    with open(path, "rb") as handle:
        while offset + 8 <= size:
            handle.seek(offset)
            (length,) = struct.unpack("<Q", handle.read(8))
            offset += _RECORD_FRAME + length
    return offset != size


def _from_events(run: RunPaths, history: History) -> None:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    files = sorted(run.tensorboard.glob("events.out.tfevents.*"))
    damaged = [f.name for f in files if truncated(f)]
    if damaged:
        history.notes.append(f"TensorBoard event file(s) {', '.join(damaged)} end in a truncated record "
                             "(training stopped while writing?): the curves stop at the last complete value.")
    accumulator = EventAccumulator(str(run.tensorboard), size_guidance={SCALARS: 0})
    accumulator.Reload()
    class_names = _class_names(run)
    for tag in accumulator.Tags().get("scalars", []):
        for prefix, target in ((EPOCH_PREFIX, history.values), (LR_PREFIX, history.lr)):
            if tag.startswith(prefix):
                key = numbered(tag[len(prefix):], class_names) if target is history.values else tag[len(prefix):]
                points = target.setdefault(key, {})
                points.update((event.step, event.value) for event in accumulator.Scalars(tag))


def _class_names(run: RunPaths) -> list[str]:
    """The run's ``class_names`` (empty when its config is missing or names none)."""
    try:
        config = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    names = config.get("class_names") if isinstance(config, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else []


def numbered(key: str, class_names: list[str]) -> str:
    """``val_dice_scratches`` -> ``val_dice_2``: a TensorBoard tag named by class (the trainer's
    ``_tags``) back to the class number ``train.log`` uses; other keys unchanged."""
    for index, name in sorted(enumerate(class_names), key=lambda item: -len(item[1])):
        if key.endswith(f"_{name}"):
            return f"{key[:-len(name)]}{index}"
    return key


def _from_log(run: RunPaths, history: History) -> None:
    for line in run.log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LOG_EPOCH.search(line)
        if match is None:
            continue
        epoch = int(match.group(1))
        for key, value in _LOG_VALUE.findall(match.group(2)):
            history.values.setdefault(key, {})[epoch] = float(value)


def read_history(run: RunPaths) -> History:
    """The run's logged per-epoch values: from its TensorBoard events, else from ``train.log``."""
    history = History()
    if any(run.tensorboard.glob("events.out.tfevents.*")):
        _from_events(run, history)
        history.source = f"TensorBoard events in {run.tensorboard.name}/"
    if not history.values and run.log_file.is_file():
        _from_log(run, history)
        history.source = run.log_file.name
    if not history.values:
        history.notes.append("no epoch was logged yet (no TensorBoard epoch values, no 'epoch N' line in "
                             "train.log): there are no training curves.")
    elif not history.has_validation:
        history.notes.append("no validation has run yet (no val_ values logged): the curves show training only.")
    if history.values and not history.lr:
        history.notes.append("the learning rate was not recorded (TensorBoard was off for this run: "
                             "trainer.tensorboard).")
    for key, points in history.values.items():
        history.values[key] = {step: value for step, value in points.items() if math.isfinite(value)}
    return history
