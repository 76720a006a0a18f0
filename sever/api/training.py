"""``sever.train`` and ``sever.auto``: train a run (or a study) from a config, or from a folder of labelled images.

>>> run = sever.train("demo", trainer={"epochs": 1})     # doctest: +SKIP
>>> model = run.load()                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sever import experiment
from sever.api.model import Model, load
from sever.inference.checkpoints import resolve_checkpoint
from sever.planning.fingerprint import Layout
from sever.planning.plan import Plan
from sever.utils.config import load_config, resolve_experiment
from sever.utils.run import RunPaths
from sever.utils.time_budget import Deadline, parse_budget
from sever.study.auto import AutoResult, plan_dataset, run_auto
from sever.study.folder import StudyPaths, is_study
from sever.study.train import train_study

ConfigSource = str | Path | Mapping[str, Any]


@dataclass
class Run:
    """A trained run folder (or study folder).

    Attributes:
        root: the folder: ``<save_dir>/<name>/<MMDD_HHMMSS>`` for a run, the study folder for a study.
    """

    root: Path

    @property
    def is_study(self) -> bool:
        return is_study(self.root)

    @property
    def config(self) -> dict:
        """The config it trained with, every default filled in (its ``config.yaml``)."""
        return load_config(StudyPaths(self.root).config if self.is_study else RunPaths(self.root).config)

    @property
    def best(self) -> Path | None:
        """The checkpoint ``sever.load(run.root)`` predicts with (the best, else the newest); None for a study."""
        return None if self.is_study else resolve_checkpoint(self.root)

    def load(self, **options: Any) -> Model:
        """The trained model (:func:`sever.load` of :attr:`root`, with its tuned post-processing)."""
        return load(self.root, **options)


def merge(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A copy of ``config`` with ``overrides`` merged in: mappings key by key, at any depth; other values replace.

    ``merge(c, {"trainer": {"epochs": 1}})`` changes ``trainer.epochs`` and keeps the rest of ``trainer``.
    """
    merged = copy.deepcopy(dict(config))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_config(config: ConfigSource) -> tuple[dict, str | None]:
    """``(config dict, its file or None)`` of a YAML path, a built-in name (``demo``) or a dict."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), None
    path = resolve_experiment(config)
    return load_config(path), str(path)


def train(config: ConfigSource, folds: int | None = None, dotted: Sequence[str] = (), **overrides: Any) -> Run:
    """Train a run (``sever train -c``), or a K-fold study with ``folds`` (``--folds K``).

    Args:
        config: an experiment YAML file, the name of a built-in one (``"demo"``), or a config dict.
        folds: train a study of ``folds`` folds instead of one run.
        dotted: ``KEY=VALUE`` overrides by dotted path, as ``--set`` (e.g. ``"trainer.epochs=1"``).
        overrides: top-level config blocks merged into the config (:func:`merge`), e.g.
            ``trainer={"epochs": 1}``, ``seed=3``, ``data_loader={"args": {"data_dir": "data"}}``.

    Returns:
        The :class:`Run` (its folder holds checkpoints, ``config.yaml``, ``postprocess.yml``, the report).

    Raises:
        ConfigError: a bad config (checked before anything trains), naming the key and the file.
    """
    loaded, source = read_config(config)
    merged = merge(loaded, overrides)
    if folds is not None:
        return Run(train_study(merged, folds, overrides=tuple(dotted)).root)
    experiment.check_single_run(merged, tuple(dotted), source)
    return Run(experiment.train(merged, tuple(dotted)).root)


def train_files(configs: Sequence[str | Path], dotted: Sequence[str] = ()) -> list[Run]:
    """Train several experiment files in turn (``sever train -c A -c B``), every one checked before the first trains."""
    paths = tuple(str(resolve_experiment(config)) for config in configs)
    return [Run(paths.root) for paths in experiment.train_from_files(paths, tuple(dotted))]


def resume(path: str | Path, dotted: Sequence[str] = ()) -> Run:
    """Continue a run from its newest valid checkpoint (or a checkpoint file), ``dotted`` overrides as ``--set``."""
    return Run(experiment.resume(path, tuple(dotted)).root)


@dataclass
class AutoRun:
    """What :func:`auto` made.

    Attributes:
        result: the experiment file, the study or run folder, the tuning summary, the reports and
            whether each class was learned.
        planned: the plan it trained (None for a resumed ``sever auto``).
    """

    result: AutoResult
    planned: Plan | None = None

    @property
    def saved(self) -> Path:
        """The study folder (or, for a budget too short for two folds, the run folder)."""
        return self.result.saved

    @property
    def plan(self) -> Plan | None:
        """The plan: each config value with its reason (None when resumed)."""
        return self.planned

    @property
    def experiment(self) -> Path:
        """The planned experiment file (``sever train -c`` repeats it)."""
        return self.result.experiment

    @property
    def final(self) -> Path | None:
        """The study's final model on every labelled image (``final_model: true``), or None."""
        return self.result.final

    def load(self, **options: Any) -> Model:
        """The trained study (its final model when it has one, else its folds' ensemble; tuned out-of-fold) or
        run, as :func:`sever.load` gives it."""
        return load(self.saved, **options)


def plan(data_dir: str | Path, time: str = "1h", name: str | None = None, format: str | None = None,
         images: str = "train_images", csv: str = "train.csv", masks: str = "train_masks", device: str = "auto",
         unlabelled: str | Path | None = None, seed: int = 42) -> Plan:
    """Fingerprint ``data_dir`` and plan an experiment for ``device`` within ``time`` (``sever plan``).

    ``format``: ``kaggle`` (``csv`` beside ``images``) or ``mask_folder`` (``masks``); None: kaggle when
    the CSV is there. ``name``: the experiment's, default ``data_dir``'s folder name.
    """
    layout = Layout(format or "kaggle", images, csv, masks)
    return plan_dataset(data_dir, time, name or Path(data_dir).resolve().name, layout, format, device,
                        None if unlabelled is None else str(unlabelled), seed)


def run_plan(planned: Plan, out: str | Path = "saved/auto", deadline: Deadline | None = None) -> AutoRun:
    """Train a plan's study (or run) in ``out`` and tune it out-of-fold (``sever auto``'s second half).

    ``deadline``: when the whole budget ends, started before planning so that the plan's own
    time counts (None: the plan's ``trainer.time_budget`` from now).
    """
    return AutoRun(run_auto(planned, out, deadline), planned)


def auto(data_dir: str | Path, time: str = "10m", out: str | Path = "saved/auto", **options: Any) -> AutoRun:
    """Plan, train a K-fold study within ``time`` and tune it out-of-fold: ``sever auto DATA_DIR``.

    Args:
        data_dir: labelled images (Kaggle CSV layout or a mask folder).
        time: the whole run's budget, e.g. ``"10m"``, ``"2h30m"``.
        out: where the experiment file, ``fingerprint.json`` and the study go.
        options: as :func:`plan`: ``format``, ``images``, ``csv``, ``masks``, ``device``, ``name``,
            ``unlabelled``, ``seed``.

    Returns:
        An :class:`AutoRun`: ``.saved`` the study folder, ``.load()`` its model.
    """
    deadline = Deadline(parse_budget(time))  # ``time`` counts from here: the plan's own measurements included
    return run_plan(plan(data_dir, time, **options), out, deadline)
