"""The folder of a K-fold study: ``saved/<name>/<MMDD_HHMMSS>/`` holding one run folder per fold.

::

    saved/sever-unet-b5/1026_140000/
        study.yml           the folds of every round, each with its status and run folder, each
                            round's out-of-fold score and the time budget's ledger (this module)
        splits.json         the fold of every labelled image, written once (:mod:`sever.study.splits`)
        config.yaml         the study's config (each fold adds data_loader.args.folds/fold/split_file)
        postprocess.yml     round 0's, tuned on its out-of-fold maps (at the end of the round,
                            or by ``sever tune -m STUDY``)
        fold0/ ... fold{K-1}/
            (a normal run folder, see :mod:`sever.utils.run`)
            oof/            the best checkpoint's uint8 probabilities of the fold's validation images
        final/              with ``final_model: true``: a run on every labelled image, trained after
                            the rounds for a fold's share of the time, carrying the chosen round's
                            post-processing; ``sever predict -m STUDY`` predicts with it (:mod:`sever.study.final`)
        round1/ ... round{R}/   pseudo-label rounds (a ``pseudo`` block in the config)
            pseudo.csv      the previous round's confident predictions of ``pseudo.images``
            postprocess.yml, fold0/ ... fold{K-1}/   as above, for this round

Round 0 (the labelled data alone) keeps the layout of a study without rounds. A
fold is ``pending`` until its training starts, ``running`` while it trains (or when
it was interrupted), ``done`` once its out-of-fold probabilities are written and
``failed`` when its training raised; the final model's entry (``final``) has a status too.
Several processes may update the study file (one per fold, see :mod:`sever.study.folds`), so
every update is a read-modify-write under a lock file, written atomically. The study file is
validated whenever it is read (:func:`check_study_file`): a hand edit that breaks it is refused
with the file, the round, the fold and the key named, before anything is written.

``StudyPaths(root)`` reads and writes the round the study predicts with
(:meth:`StudyPaths.chosen_round`: the finished round with the best out-of-fold score),
so ``sever predict/tune/evaluate -m STUDY`` use it unchanged; ``StudyPaths(root, r)``
is round ``r``.

The time budget (``trainer.time_budget`` of the study) is kept in ``budget``: its
``seconds``, the fold ``slots`` trained at once, the seconds ``spent`` by each fold
(and pseudo-labelling) and the share ``reserved`` by each fold in training, keyed
``round<r>/fold<k>`` (the final model: ``final``); see :meth:`StudyPaths.reserve`. Each round's
out-of-fold tuning is charged too (``round<r>/tuning``); it ends by the study's deadline
(:meth:`StudyPaths.tuning_deadline`), using the ``tuning_reserve`` ``sever auto`` keeps.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

from sever.exceptions import CheckpointError, ConfigError, SeverError
from sever.utils import time_budget

STUDY_FILE = "study.yml"
SPLITS_FILE = "splits.json"
STATUSES = ("pending", "running", "done", "failed")
FINAL_RUN = "final"  # the final model's run folder and its key in the time budget's ledger
LOCK_TIMEOUT_S = 60.0

CLOCK: Callable[[], float] = time.monotonic  # seconds; what the time budget's ledger is measured with


class StudyFailed(SeverError):
    """Some folds of a study failed to train; their logs say why."""


class BudgetSpent(SeverError):
    """The study's time budget is spent before all its folds trained."""


@dataclass(frozen=True)
class FoldEntry:
    """One fold of a study: its number, status and run folder (absolute)."""

    fold: int
    status: str
    run: Path


@dataclass(frozen=True)
class FinalEntry:
    """The study's final model (``final_model: true``): its status and run folder (absolute)."""

    status: str
    run: Path

    @property
    def predicts(self) -> bool:
        """Whether it predicts for the study (``sever predict -m STUDY``): done, its run folder present."""
        return self.status == "done" and self.run.is_dir()


def is_study(path: str | Path) -> bool:
    """Whether ``path`` is a study folder (it holds ``study.yml``)."""
    return (Path(path) / STUDY_FILE).is_file()


@dataclass(frozen=True)
class StudyPaths:
    """Paths inside one study folder, and its study file.

    Args:
        root: the study folder.
        round: the round whose folds, post-processing and out-of-fold maps it names;
            None: the round the study predicts with (:meth:`chosen_round`).
    """

    root: Path
    round: int | None = None

    def at_round(self, number: int) -> StudyPaths:
        """The same study at round ``number``."""
        return StudyPaths(self.root, number)

    @property
    def round_number(self) -> int:
        """The round this names (:meth:`chosen_round` when none was given)."""
        return self.round if self.round is not None else self.chosen_round()

    def round_dir(self, number: int | None = None) -> Path:
        """Round ``number``'s folder (default: this round's): the study folder for round 0."""
        number = self.round_number if number is None else number
        return self.root if number == 0 else self.root / f"round{number}"

    @property
    def pseudo_csv(self) -> Path:
        """The pseudo-labels this round trains with (rounds >= 1)."""
        return self.round_dir() / "pseudo.csv"

    @property
    def file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits(self) -> Path:
        """The saved fold of every labelled image (one for every round)."""
        return self.root / SPLITS_FILE

    @property
    def postprocess(self) -> Path:
        return self.round_dir() / "postprocess.yml"

    def fold_dir(self, fold: int) -> Path:
        return self.round_dir() / f"fold{fold}"

    def oof_dir(self, fold: int) -> Path:
        """The fold's out-of-fold probability folder (``--save-probs`` format)."""
        return self.fold_dir(fold) / "oof"

    def initialise(self, folds: int, rounds: int = 0, final: bool = False) -> None:
        """Write the study file of a new study: every fold of round 0 and of ``rounds`` pseudo-label rounds pending,
        and with ``final`` the final model pending."""
        data: dict = {"folds": folds, "runs": _pending_runs(folds, "")}
        if rounds:
            data["rounds"] = [{"round": r, "runs": _pending_runs(folds, f"round{r}/")} for r in range(1, rounds + 1)]
        if final:
            data["final"] = {"status": "pending", "run": FINAL_RUN}
        self._write(data)

    def final_entry(self) -> FinalEntry | None:
        """The final model's entry; None for a study without one."""
        final = self._read().get("final")
        return None if final is None else FinalEntry(str(final["status"]), self.root / str(final["run"]))

    def set_final_status(self, status: str) -> None:
        """Record ``status`` for the final model (read-modify-write under the lock)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._locked():
            data = self._read()
            if data.get("final") is None:
                raise CheckpointError(f"{self.file}: the study has no final model")
            data["final"]["status"] = status
            self._write(data)

    def entries(self) -> list[FoldEntry]:
        """Every fold's entry of this round, by fold number.

        Raises:
            CheckpointError: no study file, or one sever did not write.
        """
        data = self._read()
        runs = _round_entry(data, self.round_number, self.file)["runs"]
        return [FoldEntry(int(run["fold"]), str(run["status"]), self.root / str(run["run"])) for run in runs]

    @property
    def folds(self) -> int:
        return int(self._read()["folds"])

    @property
    def rounds(self) -> int:
        """The pseudo-label rounds after round 0 (0 without a ``pseudo`` block)."""
        return len(self._read().get("rounds") or [])

    def set_status(self, fold: int, status: str) -> None:
        """Record ``status`` for ``fold`` of this round (read-modify-write under the lock)."""
        if status not in STATUSES:
            raise ValueError(f"unknown fold status {status!r}")
        number = self.round_number
        with self._locked():
            data = self._read()
            for run in _round_entry(data, number, self.file)["runs"]:
                if run["fold"] == fold:
                    run["status"] = status
            self._write(data)

    def record(self, **values) -> None:
        """Store plain values (e.g. ``score``, ``pseudo_images``) in this round's entry."""
        number = self.round_number
        with self._locked():
            data = self._read()
            _round_entry(data, number, self.file).update(values)
            self._write(data)

    def round_record(self, number: int | None = None) -> dict:
        """Round ``number``'s entry (default: this round's): ``runs`` and what :meth:`record` stored."""
        return dict(_round_entry(self._read(), self.round_number if number is None else number, self.file))

    def chosen_round(self) -> int:
        """The round a study predicts with: of the rounds whose folds are all done, the one with
        the best out-of-fold ``score`` (the earlier one on a tie; without scores, the last);
        round 0 while no round has finished."""
        data = self._read()
        finished = [r for r in range(len(data.get("rounds") or []) + 1)
                    if all(run["status"] == "done" for run in _round_entry(data, r, self.file)["runs"])]
        scored = [r for r in finished if _round_entry(data, r, self.file).get("score") is not None]
        if scored:
            return max(scored, key=lambda r: (_round_entry(data, r, self.file)["score"], -r))
        return finished[-1] if finished else 0

    # ------------------------------------------------------------------------- the time budget

    def set_budget(self, seconds: float, slots: int | None = None) -> None:
        """Set the study's budget (``trainer.time_budget``) in seconds; with ``slots`` (the folds trained
        at once) also forget every reservation, which only a whole-study run may do."""
        with self._locked():
            data = self._read()
            budget = data.setdefault("budget", {"spent": {}, "reserved": {}})
            budget["seconds"] = float(seconds)
            if slots is not None:
                budget["slots"], budget["reserved"] = int(slots), {}
            self._write(data)

    def reserve(self, key: str, waiting: list[str], alone: bool = False) -> float | None:
        """The seconds fold ``key`` may train, reserved for it; None without a budget.

        The budget holds ``seconds * slots`` slot-seconds. What is neither spent nor
        reserved by other folds in training is shared equally by ``key`` and the other
        ``waiting`` folds (every fold still to train, in this round and the later ones, and the
        final model) that hold no reservation. Returns that share plus what ``key`` spent in earlier
        sessions, which its run's own clock counts (0 or less: the budget is spent).
        ``alone``: ``key`` trains with every other slot idle (the final model), so its share is
        also held to the wall seconds the study has left.
        """
        with self._locked():
            data = self._read()
            budget = data.get("budget")
            if budget is None:
                return None
            reserved = {k: v for k, v in budget["reserved"].items() if k != key}
            sharing = [k for k in dict.fromkeys([key, *waiting]) if k not in reserved]
            share = time_budget.ledger_share(budget["seconds"] * budget.get("slots", 1), budget["spent"].values(),
                                             reserved.values(), len(sharing))
            if alone:
                share = min(share, time_budget.study_left(budget["seconds"], budget.get("slots", 1),
                                                          budget["spent"].values()))
            budget["reserved"] = {**reserved, key: share}
            self._write(data)
        return share + budget["spent"].get(key, 0.0)

    def charge(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to what ``key`` (a fold, or a round's pseudo-labelling) spent; release its reservation."""
        with self._locked():
            data = self._read()
            budget = data.get("budget")
            if budget is None:
                return
            budget["spent"][key] = budget["spent"].get(key, 0.0) + float(seconds)
            budget["reserved"].pop(key, None)
            self._write(data)

    def note_overhead(self, key: str, seconds: float) -> None:
        """Record that fold ``key`` took ``seconds`` beyond the training time its run was given
        (set-up, self-tuning, report, out-of-fold maps: what a run's own clock does not count)."""
        with self._locked():
            data = self._read()
            budget = data.get("budget")
            if budget is None:
                return
            budget.setdefault("overhead", {})[key] = max(0.0, float(seconds))
            self._write(data)

    def expect_overhead(self, seconds: float) -> None:
        """Record the overhead a fold is expected to have before any fold has measured one (seconds)."""
        with self._locked():
            data = self._read()
            data["expected_overhead"] = max(0.0, float(seconds))
            self._write(data)

    def overhead(self) -> float:
        """The mean of the recorded per-fold overheads in seconds; before any fold finished, the
        expected overhead (:meth:`expect_overhead`), else 0."""
        data = self._read()
        noted = list(((data.get("budget") or {}).get("overhead") or {}).values())
        return time_budget.mean_overhead(noted, data.get("expected_overhead", 0.0))

    def keep_reserve(self, seconds: float) -> None:
        """Record the seconds of the whole budget kept beyond ``trainer.time_budget`` for the study's out-of-fold
        tuning (``sever auto`` keeps :data:`~sever.utils.time_budget.STUDY_RESERVE` of ``--time``)."""
        with self._locked():
            data = self._read()
            data["tuning_reserve"] = max(0.0, float(seconds))
            self._write(data)

    def reservation(self, key: str) -> float | None:
        """The seconds fold ``key`` holds now (:meth:`reserve`), or None."""
        budget = self._read().get("budget") or {}
        return budget.get("reserved", {}).get(key)

    def tuning_deadline(self) -> time_budget.Deadline | None:
        """When the study's time ends, for its out-of-fold tuning: what its folds left of the budget, and the
        reserve kept for the tuning (:meth:`keep_reserve`); None without a budget."""
        data = self._read()
        budget = data.get("budget")
        if budget is None:
            return None
        left = time_budget.study_left(budget["seconds"], budget.get("slots", 1), budget["spent"].values(),
                                      data.get("tuning_reserve", 0.0))
        return time_budget.Deadline(left, clock=CLOCK)

    def spent(self) -> float:
        """Seconds the study has spent so far (0 without a budget)."""
        budget = self._read().get("budget")
        return float(sum(budget["spent"].values())) if budget else 0.0

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
        check_study_file(data, self.file)
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


def unfinished(study: StudyPaths) -> list[int]:
    """Folds of ``study``'s round not ``done``: pending, interrupted (``running``) or failed."""
    return [entry.fold for entry in study.entries() if entry.status != "done"]


def check_study_file(data: dict, source: Path) -> None:
    """Refuse a study file whose entries sever cannot use, naming the file, round, fold and key.

    Checked: ``folds`` an integer >= 1; ``rounds`` a list of entries with ``runs``; each round's
    ``runs`` a list of one entry per fold 0..K-1, each with an integer ``fold``, a known
    ``status`` (:data:`STATUSES`) and a ``run`` folder (a relative path); a ``final`` entry
    likewise with a ``status`` and a ``run``.

    Raises:
        CheckpointError: one line, e.g. ``STUDY/study.yml: round 0, fold 1: 'run' is missing ...``.
    """
    folds = data["folds"]
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 1:
        raise CheckpointError(f"{source}: folds: an integer >= 1, got {folds!r}")
    rounds = data.get("rounds") or []
    if not isinstance(rounds, list) or not all(isinstance(entry, dict) for entry in rounds):
        raise CheckpointError(f"{source}: rounds: a list of round entries (each with runs), got {rounds!r}")
    for number, entry in enumerate([data, *rounds]):
        _check_runs(entry.get("runs"), folds, f"{source}: round {number}")
    if data.get("final") is not None:
        _check_final(data["final"], f"{source}: final")


def _check_final(final, where: str) -> None:
    """The final model's entry: a mapping with a ``status`` and a ``run`` folder."""
    if not isinstance(final, dict):
        raise CheckpointError(f"{where}: the final model's entry (status, run), got {final!r}")
    for key in ("status", "run"):
        if key not in final:
            raise CheckpointError(f"{where}: {key!r} is missing (the final model's entry has status and run)")
    _check_status_and_run(final, where, "the final model's")


def _check_status_and_run(entry: dict, where: str, whose: str) -> None:
    """An entry's ``status`` one of :data:`STATUSES` and its ``run`` a folder relative to the study."""
    if entry["status"] not in STATUSES:
        raise CheckpointError(f"{where}: status: one of {', '.join(STATUSES)}, got {entry['status']!r}")
    if not isinstance(entry["run"], str) or not entry["run"] or Path(entry["run"]).is_absolute():
        raise CheckpointError(f"{where}: run: {whose} run folder relative to the study, got {entry['run']!r}")


def _check_runs(runs, folds: int, where: str) -> None:
    """One round's ``runs``: a list of fold entries, fold k at position k."""
    if not isinstance(runs, list):
        raise CheckpointError(f"{where}: runs: a list of fold entries, got {runs!r}")
    for index, run in enumerate(runs):
        at = f"{where}, fold {index}"  # entries are in fold order: the k-th names fold k
        if not isinstance(run, dict):
            raise CheckpointError(f"{at}: a fold entry (fold, status, run), got {run!r}")
        for key in ("fold", "status", "run"):
            if key not in run:
                raise CheckpointError(f"{at}: {key!r} is missing (each fold entry has fold, status and run)")
        fold = run["fold"]
        if not isinstance(fold, int) or isinstance(fold, bool) or fold != index:
            raise CheckpointError(f"{at}: fold: the integer {index} (entries are in fold order), got {fold!r}")
        _check_status_and_run(run, at, "the fold's")
    if len(runs) != folds:
        raise CheckpointError(f"{where}: runs: {len(runs)} fold entries for folds: {folds}")


def _pending_runs(folds: int, prefix: str) -> list[dict]:
    return [{"fold": k, "status": "pending", "run": f"{prefix}fold{k}"} for k in range(folds)]


def _round_entry(data: dict, number: int, source: Path) -> dict:
    """Round ``number``'s entry of the study file: the file itself for round 0 (older studies have only that)."""
    if number == 0:
        return data
    rounds = data.get("rounds") or []
    if not 1 <= number <= len(rounds):
        raise CheckpointError(f"{source}: no round {number} (the study has rounds 0..{len(rounds)})")
    return rounds[number - 1]
