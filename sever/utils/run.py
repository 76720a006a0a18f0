"""The folder of one training run: ``saved/<name>/<MMDD_HHMMSS>/``.

::

    saved/sever-unet-b5/1026_140000/
        config.yaml         the resolved config the run was started with
        train.log           everything logged during training
        runs/               TensorBoard events (``tensorboard --logdir saved/``)
        checkpoints/        checkpoint-epoch{N}.pth, model_best.pth, last.pth
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sever.exceptions import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-epoch(\d+)\.pth$")


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run folder."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "runs"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pth"

    @property
    def best(self) -> Path:
        return self.checkpoints / "model_best.pth"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"checkpoint-epoch{epoch}.pth"

    def saved_epochs(self) -> list[int]:
        """Epochs that have a ``checkpoint-epoch{N}.pth``, ascending."""
        if not self.checkpoints.is_dir():
            return []
        found = (CHECKPOINT_PATTERN.match(p.name) for p in self.checkpoints.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    @classmethod
    def create(cls, save_dir: str | Path, name: str, now: datetime | None = None) -> "RunPaths":
        """Make a new run folder named after the start time (suffixed if taken)."""
        paths = cls(new_folder(save_dir, name, now))
        paths.make_dirs()
        return paths

    def make_dirs(self) -> None:
        """Create the folders and prove they are writable with a test write."""
        try:
            for folder in (self.root, self.checkpoints, self.tensorboard):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.checkpoints / f".write-test-{os.getpid()}"
            with open(probe, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"save_dir: cannot write to {self.root}: {exc.strerror or exc}") from exc

    def check_free_space(self, needed_bytes: int) -> None:
        """Fail now, not at epoch 50, when the disk cannot hold a few checkpoints."""
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes:
            raise ConfigError(
                f"save_dir: only {free / 2**20:.0f} MiB free under {self.root}, "
                f"need about {needed_bytes / 2**20:.0f} MiB for checkpoints"
            )


def new_folder(save_dir: str | Path, name: str, now: datetime | None = None) -> Path:
    """``save_dir/name/MMDD_HHMMSS`` of the start time (suffixed if taken), not yet created: a run's or a study's."""
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ConfigError(f"name: {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    stamp = (now or datetime.now()).strftime("%m%d_%H%M%S")
    parent = Path(save_dir) / name
    root = parent / stamp
    suffix = 1
    while root.exists():
        root = parent / f"{stamp}_{suffix}"
        suffix += 1
    return root


def resolve_resume(path: str | Path) -> Path:
    """The checkpoint to resume from: a file as given, or the newest in a run folder.

    The newest is the one with the most training done (``last.pth`` or the
    highest ``checkpoint-epoch{N}.pth``); files that fail to load are skipped
    with a warning, so a corrupt file never blocks resuming from a good one.
    """
    from sever.utils.checkpoint import load_checkpoint  # torch import kept off the CLI's start-up path

    path = Path(path)
    if path.is_file():
        return path
    run = RunPaths(path)
    if not run.checkpoints.is_dir():
        raise CheckpointError(f"{path}: neither a checkpoint file nor a run folder with checkpoints/")
    candidates = [run.last, *(run.epoch_checkpoint(e) for e in run.saved_epochs())]
    progress = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as exc:
            logger.warning("skipping unusable checkpoint: %s", exc)
            continue
        progress.append(((state["epoch"], state.get("step", 0)), candidate))
    if not progress:
        raise CheckpointError(f"{path}: no loadable checkpoint in {run.checkpoints}")
    return max(progress, key=lambda item: item[0])[1]
