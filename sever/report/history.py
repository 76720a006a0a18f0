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
from typing import BinaryIO, Iterator

import yaml

from sever.utils.run import RunPaths

logger = logging.getLogger(__name__)

EPOCH_PREFIX = "epoch/"
LR_PREFIX = "lr/"
_LOG_EPOCH = re.compile(r"\bepoch (\d+)(?:/\d+)?\s+(.*)$")
_LOG_VALUE = re.compile(r"([A-Za-z][\w.\-]*) (-?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|nan|inf))(?=\s|$)")
_RECORD_HEAD = 12  # TFRecord: uint64 length, uint32 length CRC, then the data
_RECORD_FRAME = _RECORD_HEAD + 4  # and a uint32 data CRC after it
SCALAR_RECORD_BYTES = 4096  # a scalar's event is tens of bytes; images and histograms are far longer


@dataclass
class History:
    """Logged values by name and step.

    Attributes:
        values: ``{"val_dice_0": {epoch: value}, ...}``, one entry per epoch logged (a resumed
            run's events replace what the run logged before from the resume's first epoch on; in
            ``train.log`` the last line of an epoch wins).
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


def _records(handle: BinaryIO, size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of the data of each complete TFRecord in an open event file of ``size`` bytes;
    stops at a record the file ends inside. Only the framing is walked (8-byte little-endian lengths)."""
    offset = 0
    while offset + 8 <= size:
        handle.seek(offset)
        (length,) = struct.unpack("<Q", handle.read(8))
        if offset + _RECORD_FRAME + length > size:
            return
        yield offset + _RECORD_HEAD, length
        offset += _RECORD_FRAME + length


def truncated(path: Path) -> bool:
    """Whether a TensorBoard event file ends inside a record (a crash or full disk while writing).

    Only the record framing is walked; contents are not checked.
    """
    size, end = path.stat().st_size, 0
    with open(path, "rb") as handle:
        for offset, length in _records(handle, size):
            end = offset + length + _RECORD_FRAME - _RECORD_HEAD
    return end != size


def scalar_events(path: Path) -> Iterator[tuple[str, int, float]]:
    """``(tag, step, value)`` of each scalar in a TensorBoard event file, in the order written.

    Records longer than :data:`SCALAR_RECORD_BYTES` are skipped unread: the trainer's validation
    images (megabytes an epoch) would otherwise be read, checksummed and decoded with the scalars, which
    took TensorBoard's reader 24 s for an 80-epoch run (295 MB). No checksum is computed; a record the
    file ends inside ends the values (:func:`truncated` says so).
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.util.tensor_util import make_ndarray

    with open(path, "rb") as handle:
        for offset, length in list(_records(handle, path.stat().st_size)):
            if length > SCALAR_RECORD_BYTES:
                continue
            handle.seek(offset)
            event = Event.FromString(handle.read(length))
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    yield value.tag, event.step, value.simple_value
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    yield value.tag, event.step, float(make_ndarray(value.tensor))


def _from_events(run: RunPaths, history: History) -> None:
    files = sorted(run.tensorboard.glob("events.out.tfevents.*"))  # by creation time: a resume's file comes last
    damaged = [f.name for f in files if truncated(f)]
    if damaged:
        history.notes.append(f"TensorBoard event file(s) {', '.join(damaged)} end in a truncated record "
                             "(training stopped while writing?): the curves stop at the last complete value.")
    class_names = _class_names(run)
    for path in files:
        first = True
        for tag, step, value in scalar_events(path):
            if first and tag.startswith((EPOCH_PREFIX, LR_PREFIX)):
                _forget_from(history, step)  # a resume logs again from its first epoch on: what came after is stale
                first = False
            if tag.startswith(EPOCH_PREFIX):
                history.values.setdefault(numbered(tag[len(EPOCH_PREFIX):], class_names), {})[step] = value
            elif tag.startswith(LR_PREFIX):
                history.lr.setdefault(tag[len(LR_PREFIX):], {})[step] = value


def _forget_from(history: History, epoch: int) -> None:
    """Drop every value and rate logged at ``epoch`` or later."""
    for points in (*history.values.values(), *history.lr.values()):
        for stale in [step for step in points if step >= epoch]:
            del points[stale]


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
