"""The folder of a K-fold study: ``saved/<name>/<MMDD_HHMMSS>/`` holding one run folder per fold.

::

    saved/sever-unet-b5/1026_140000/
        study.yml           the folds, each with its status and run folder (this module)
        config.yaml         the study's config (each fold adds data_loader.args.folds/fold)
        postprocess.yml     written by ``sever tune -m STUDY`` (tuned on the out-of-fold maps)
        fold0/ ... fold{K-1}/
            (a normal run folder, see :mod:`sever.utils.run`)
            oof/            the best checkpoint's uint8 probabilities of the fold's validation images

A fold is ``pending`` until its training starts, ``running`` while it trains (or when
it was interrupted), ``done`` once its out-of-fold probabilities are written and
``failed`` when its training raised. Several processes may update the study file (one
per fold, see :mod:`sever.study`), so every update is a read-modify-write under a lock
file, written atomically.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from sever.exceptions import CheckpointError, ConfigError

STUDY_FILE = "study.yml"
STATUSES = ("pending", "running", "done", "failed")
LOCK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FoldEntry:
    """One fold of a study: its number, status and run folder (absolute)."""

    fold: int
    status: str
    run: Path


def is_study(path: str | Path) -> bool:
    """Whether ``path`` is a study folder (it holds ``study.yml``)."""
    return (Path(path) / STUDY_FILE).is_file()


@dataclass(frozen=True)
class StudyPaths:
    """Paths inside one study folder, and its study file."""

    root: Path

    @property
    def file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def postprocess(self) -> Path:
        return self.root / "postprocess.yml"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold{fold}"

    def oof_dir(self, fold: int) -> Path:
        """The fold's out-of-fold probability folder (``--save-probs`` format)."""
        return self.fold_dir(fold) / "oof"

    def initialise(self, folds: int) -> None:
        """Write the study file of a new study: every fold pending."""
        self._write({"folds": folds, "runs": [{"fold": k, "status": "pending", "run": f"fold{k}"}
                                              for k in range(folds)]})

    def entries(self) -> list[FoldEntry]:
        """Every fold's entry, by fold number.

        Raises:
            CheckpointError: no study file, or one sever did not write.
        """
        data = self._read()
        return [FoldEntry(int(run["fold"]), str(run["status"]), self.root / str(run["run"])) for run in data["runs"]]

    @property
    def folds(self) -> int:
        return int(self._read()["folds"])

    def set_status(self, fold: int, status: str) -> None:
        """Record ``status`` for ``fold`` (read-modify-write under the lock)."""
        if status not in STATUSES:
            raise ValueError(f"unknown fold status {status!r}")
        with self._locked():
            data = self._read()
            for run in data["runs"]:
                if run["fold"] == fold:
                    run["status"] = status
            self._write(data)

    def check_fold(self, fold: int) -> None:
        """ConfigError unless ``fold`` is one of this study's folds (``--fold``)."""
        folds = self.folds
        if not 0 <= fold < folds:
            raise ConfigError(f"--fold {fold}: {self.root} has folds 0..{folds - 1}")

    def _read(self) -> dict:
        if not self.file.is_file():
            raise CheckpointError(f"{self.root}: not a study folder (no {STUDY_FILE})")
        try:
            data = yaml.safe_load(self.file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"{self.file}: cannot read the study file: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or "folds" not in data:
            raise CheckpointError(f"{self.file}: not a sever study file (needs folds and runs)")
        return data

    def _write(self, data: dict) -> None:
        temporary = self.file.with_name(f".{STUDY_FILE}.{os.getpid()}")
        temporary.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(temporary, self.file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``study.yml.lock`` (created exclusively, so it works wherever ``open`` does)."""
        lock = self.file.with_name(f"{STUDY_FILE}.lock")
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise CheckpointError(f"{lock}: held for over {LOCK_TIMEOUT_S:.0f} s; delete it if no "
                                          f"sever process is running this study") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            os.close(handle)
            lock.unlink()
