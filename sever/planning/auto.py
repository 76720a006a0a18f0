"""``sever auto``: from a folder of labelled images to a tuned fold ensemble, nothing set by hand.

The steps, each refusing bad input before the next starts:

1. fingerprint the data and plan the experiment for the device and the time budget
   (:mod:`sever.planning.plan`); the experiment file and ``fingerprint.json`` go to the
   output folder, so the study can be repeated with ``sever train -c``;
2. train the planned K-fold study (:func:`sever.study.train_study`), each fold within its
   share of the budget, each writing its out-of-fold probabilities and its run report;
3. tune the post-processing on the union of the out-of-fold probabilities (every labelled
   image scored by a model that never saw it) into the study's ``postprocess.yml``, which
   ``sever predict -m STUDY`` uses.

A budget too short for two folds plans one run with a validation split instead
(:func:`sever.planning.plan.plan_folds`): it trains, tunes itself on that split and writes
its report, and ``sever predict -m RUN`` uses its tuned settings.

With unlabelled images, the plan carries ``pseudo: {images: DIR, rounds: 1}``, which a
study that runs pseudo-label rounds reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sever import experiment, study
from sever.exceptions import DataError
from sever.inference.predictor import TUNED_FILE
from sever.planning.fingerprint import Layout, fingerprint
from sever.planning.plan import Plan, device_target, make_plan, parse_budget
from sever.utils.study import StudyPaths

logger = logging.getLogger(__name__)


@dataclass
class AutoResult:
    """What ``sever auto`` made: the plan and its file, the study (or single run) folder, the tuning
    summary, the reports."""

    plan: Plan
    experiment: Path
    saved: Path
    tuning: str
    reports: list[Path]

    @property
    def kind(self) -> str:
        """``study`` or ``run``."""
        return "study" if self.plan.folds > 1 else "run"

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


def tune_study(root: Path, batch_size: int = 8) -> str:
    """Tune the study's post-processing on its out-of-fold probabilities into its ``postprocess.yml``.

    Returns:
        The tuning summary (base against tuned Dice per class).
    """
    from sever.inference import tune as tuning

    stats = tuning.statistics_from_saved(study.oof_sources(root), None, tuning.DEFAULT_THRESHOLDS,
                                         study.class_names(root), batch_size)
    result = tuning.search_widening(stats)
    written = result.write(StudyPaths(root).postprocess, f"the out-of-fold probabilities of {root}")
    logger.info("study post-processing tuned out-of-fold: %s", written)
    return result.summary()


def run_auto(plan: Plan, out_dir: str | Path) -> AutoResult:
    """Write the plan into ``out_dir``, train its study there and tune it out-of-fold."""
    out = Path(out_dir)
    config = plan.config = {**plan.config, "save_dir": str(out)}
    plan.reasons["save_dir"] = "sever auto's output folder: the study is made here"
    planned_file = plan.write(out / f"{config['name']}.yml")
    logger.info("experiment planned: %s", planned_file)
    if plan.folds == 1:
        run = experiment.train(config)
        tuned = run.root / TUNED_FILE
        tuning = (f"post-processing tuned on the run's validation split: {tuned}" if tuned.is_file() else
                  "post-processing not tuned (see the run's log): sever predict uses the defaults")
        report = run.root / "report" / "index.html"
        return AutoResult(plan, planned_file, run.root, tuning, [report] if report.is_file() else [])
    paths = study.train_study(config, plan.folds, expected_overhead=plan.fold_overhead)
    summary = tune_study(paths.root, config["data_loader"]["args"]["valid_batch_size"])
    reports = [report for entry in paths.entries() if (report := entry.run / "report" / "index.html").is_file()]
    return AutoResult(plan, planned_file, paths.root, summary, reports)
