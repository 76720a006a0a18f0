"""``sever auto``: from a folder of labelled images to a tuned fold ensemble, nothing set by hand.

The steps, each refusing bad input before the next starts:

1. fingerprint the data and plan the experiment for the device and the time budget
   (:mod:`sever.planning.plan`); the experiment file and ``fingerprint.json`` go to the
   output folder, so the study can be repeated with ``sever train -c``;
2. train the planned K-fold study (:func:`sever.study.train.train_study`), each fold within its
   share of the budget, each writing its out-of-fold probabilities and its run report;
3. the study, once its folds are done, tunes the post-processing on the union of the
   out-of-fold probabilities (every labelled image scored by a model that never saw it;
   :func:`sever.study.tuning.tune_out_of_fold`, once) into its ``postprocess.yml``, which
   ``sever predict -m STUDY`` uses;
4. when the plan says so (``final_model: true``), a final model trains on every labelled image
   for a fold's share of the budget and carries those settings (:mod:`sever.study.final`):
   ``sever predict -m STUDY`` then predicts with it instead of the fold ensemble.

A stop (SIGTERM, Ctrl-C) in any step ends with ``sever auto --resume OUT_DIR``
(:func:`resume_auto`): it reads ``OUT_DIR/auto.yml`` and the experiment file, resumes the
study as ``sever train -r STUDY`` does, and ends as ``sever auto`` would have.

A budget too short for two folds (to train a few epochs each, or the steps the data needs to
learn) plans one run with a validation split instead (:func:`sever.planning.sizing.plan_folds`):
it trains, tunes itself on that split and writes its report, and ``sever predict -m RUN`` uses
its tuned settings.

With unlabelled images, the plan carries ``pseudo: {images: DIR, rounds: 1}``, which a
study that runs pseudo-label rounds reads.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sever import experiment
from sever.exceptions import ConfigError, DataError, Interrupted
from sever.inference.learning import learning_lines, run_learning, study_learning
from sever.inference.predictor import TUNED_FILE
from sever.planning.fingerprint import Layout, fingerprint
from sever.planning.plan import Plan, make_plan
from sever.planning.probe import device_target
from sever.report.compare import report_after_study
from sever.study.folder import StudyPaths, is_study
from sever.study.train import resume_study, train_study
from sever.utils import time_budget
from sever.utils.config import dump_config, load_config
from sever.utils.run import RunPaths
from sever.utils.time_budget import Deadline, parse_budget

logger = logging.getLogger(__name__)


AUTO_FILE = "auto.yml"  # in the output folder: what `sever auto --resume` reads (the experiment file, folds, overhead)


@dataclass
class AutoResult:
    """What ``sever auto`` made: the experiment file, the study (or single run) folder, the tuning
    summary, the reports, and whether each class was learned
    (:func:`sever.inference.learning.learning_lines`); ``folds`` 1 for a single run; ``final`` the
    study's final model (:mod:`sever.study.final`), which ``sever predict -m STUDY`` uses, or None."""

    folds: int
    experiment: Path
    saved: Path
    tuning: str
    reports: list[Path]
    learning: list[str] = field(default_factory=list)
    final: Path | None = None

    @property
    def kind(self) -> str:
        """``study`` or ``run``."""
        return "study" if self.folds > 1 else "run"

    @property
    def predict_command(self) -> str:
        return f"sever predict -m {self.saved} -i IMAGES -o submission.csv"


def plan_dataset(data_dir: str | Path, time: str, name: str, layout: Layout = Layout(), format: str | None = None,
                 device: str = "auto", unlabelled: str | None = None, seed: int = 42) -> Plan:
    """Fingerprint ``data_dir`` and plan its experiment (with ``seed``) for ``device`` and ``time`` (e.g. ``2h``).

    Raises:
        DataError: the data is missing or wrong; PlanError: no plan fits the budget.
    """
    budget = parse_budget(time)
    if unlabelled is not None and not Path(unlabelled).is_dir():
        raise DataError(f"--unlabelled: folder not found: {unlabelled}")
    fp = fingerprint(data_dir, layout, format)
    return make_plan(fp, device_target(device, len(fp.classes), fp), budget, name, seed, unlabelled)


def tuning_summary(study: StudyPaths) -> str:
    """What the study's own out-of-fold tuning recorded (the round it predicts with), in a line."""
    record = study.round_record()
    if record.get("score") is None:
        return "post-processing not tuned out-of-fold (see the log): sever predict uses the defaults"
    return (f"post-processing tuned out-of-fold: {study.postprocess} (out-of-fold score {record['score']:.4f}, "
            f"{record['default_score']:.4f} with the defaults)")


def within_deadline(config: dict, folds: int, deadline: Deadline | None) -> dict:
    """``config`` with its ``trainer.time_budget`` less what fingerprinting and planning took of ``deadline``.

    The plan sized the budget to the whole ``--time``; the time it took itself is taken from
    it (:func:`~sever.utils.time_budget.after_planning`), so the study or run ends by ``--time``.
    """
    if deadline is None or deadline.seconds is None:
        return config
    planned = parse_budget(config["trainer"]["time_budget"], "trainer.time_budget")
    seconds = time_budget.after_planning(planned, deadline.seconds, deadline.left(), shared=folds > 1)
    logger.info("planning took %.0f s of --time: trainer.time_budget %.0f s -> %.0f s",
                deadline.seconds - deadline.left(), planned, seconds)
    return {**config, "trainer": {**config["trainer"], "time_budget": f"{round(seconds, 1):g}s"}}


def run_auto(plan: Plan, out_dir: str | Path, deadline: Deadline | None = None) -> AutoResult:
    """Write the plan into ``out_dir``, train its study there and tune it out-of-fold.

    ``deadline``: when ``--time`` ends, started before the plan (:func:`within_deadline`).

    Raises:
        Interrupted: SIGINT/SIGTERM, its command ``sever auto --resume OUT_DIR`` (:func:`resume_auto`).
    """
    out = Path(out_dir)
    config = plan.config = {**plan.config, "save_dir": str(out)}
    plan.reasons["save_dir"] = "sever auto's output folder: the study is made here"
    experiment_file = plan.write(out / f"{config['name']}.yml")
    dump_config({"experiment": experiment_file.name, "folds": plan.folds, "fold_overhead": float(plan.fold_overhead)},
                out / AUTO_FILE)
    logger.info("experiment planned: %s", experiment_file)
    config = within_deadline(config, plan.folds, deadline)
    with _continued_by(out):
        return _train_planned(config, plan.folds, plan.fold_overhead, experiment_file, deadline)


def resume_auto(out_dir: str | Path) -> AutoResult:
    """Continue a ``sever auto`` that stopped: the saved study resumed as ``sever train -r STUDY`` does
    (its unfinished folds, then its out-of-fold tuning), a single run resumed (then tuned, reported),
    or, when nothing was saved yet, the planned experiment trained from the start.

    Raises:
        ConfigError: ``out_dir`` holds no ``auto.yml`` (not the output folder of ``sever auto``).
    """
    out = Path(out_dir)
    if not (out / AUTO_FILE).is_file():
        raise ConfigError(f"--resume {out}: not an output folder of sever auto (no {AUTO_FILE}); give the -o folder "
                          f"of the sever auto to continue")
    saved = load_config(out / AUTO_FILE)
    experiment_file = out / saved["experiment"]
    config = load_config(experiment_file)
    folds, overhead = int(saved["folds"]), saved.get("fold_overhead")
    with _continued_by(out):
        started = _started_folder(config)
        if started is None:
            return _train_planned(config, folds, overhead, experiment_file)
        logger.info("sever auto: continuing %s", started)
        if folds > 1:
            return _study_result(resume_study(started), experiment_file)
        run = experiment.resume(started) if RunPaths(started).last.is_file() else experiment.train(config,
                                                                                                   run_dir=started)
        return _run_result(run, experiment_file)


@contextlib.contextmanager
def _continued_by(out: Path) -> Iterator[None]:
    """An :class:`Interrupted` inside says: continue with ``sever auto --resume out``."""
    try:
        yield
    except Interrupted as stop:
        raise stop.resume_with(f"sever auto --resume {out}") from None


def _started_folder(config: dict) -> Path | None:
    """The study (or run) folder the planned experiment made in its ``save_dir``, or None before it was made."""
    parent = Path(config["save_dir"]) / config["name"]
    made = sorted(path for path in parent.glob("*") if path.is_dir()) if parent.is_dir() else []
    if config["data_loader"]["args"].get("folds", 1) > 1:
        made = [path for path in made if is_study(path)]
    return made[-1] if made else None


def _train_planned(config: dict, folds: int, overhead: float | None, experiment_file: Path,
                   deadline: Deadline | None = None) -> AutoResult:
    """Train the planned experiment from the start: the study of ``folds`` folds (keeping the share of
    its budget its out-of-fold tuning needs), or one run (ending its tuning and report by ``deadline``)."""
    if folds == 1:
        return _run_result(experiment.train(config, deadline=deadline), experiment_file)
    budget = config["trainer"].get("time_budget")
    reserve = None if budget is None else time_budget.reserve_seconds(parse_budget(budget, "trainer.time_budget"))
    paths = train_study(config, folds, expected_overhead=overhead, tuning_reserve=reserve)
    return _study_result(paths, experiment_file)


def _run_result(run: RunPaths, experiment_file: Path) -> AutoResult:
    tuned = run.root / TUNED_FILE
    tuning = (f"post-processing tuned on the run's validation split: {tuned}" if tuned.is_file() else
              "post-processing not tuned (see the run's log): sever predict uses the defaults")
    report = run.root / "report" / "index.html"
    learning = learning_lines(run_learning(run.root), "validation split") if tuned.is_file() else []
    return AutoResult(1, experiment_file, run.root, tuning, [report] if report.is_file() else [], learning)


def _study_result(paths: StudyPaths, experiment_file: Path) -> AutoResult:
    summary = tuning_summary(StudyPaths(paths.root))
    reports = [report for entry in paths.entries() if (report := entry.run / "report" / "index.html").is_file()]
    study_page = report_after_study(paths.root)  # the study's own page, listed before its folds' reports
    learning = learning_lines(study_learning(paths.root), "out-of-fold images")
    final = paths.final_entry()
    return AutoResult(paths.folds, experiment_file, paths.root, summary,
                      ([study_page] if study_page else []) + reports, learning,
                      final.run if final is not None and final.predicts else None)
