"""What a model path is: a run folder, a checkpoint file, a study folder, or an exported model.

``sever.load(PATH)`` and ``sever predict -m PATH`` both ask :func:`open_models`, the one
place that tells the kinds apart (:func:`source_kind`) and turns them into a
:class:`ModelSource`: the checkpoints to load (a study's finished folds), their ensemble
weights, and the post-processing tuned for them (a study's out-of-fold ``postprocess.yml``).
An exported model (ONNX, TorchScript, an ``smp`` folder) is a source like a checkpoint:
:func:`~sever.inference.checkpoints.open_checkpoint` reads it from its metadata and
:func:`~sever.inference.exported.open_exported` runs it for the predictor, with the
post-processing it carries.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sever.exceptions import CheckpointError, ConfigError
from sever.inference.checkpoints import (
    CheckpointRef,
    OpenedCheckpoint,
    expand_studies,
    open_checkpoint,
)
from sever.inference.compose import compose
from sever.inference.predictor import Predictor, build_predictor, run_settings
from sever.inference.tiling import Tiling
from sever.model.postprocess import PostProcessing
from sever.utils.config import OutputClasses
from sever.study.folder import StudyPaths, is_study

RUN, CHECKPOINT, STUDY = "run", "checkpoint", "study"
ONNX, TORCHSCRIPT, SMP = "onnx", "torchscript", "smp"
EXPORTED_KINDS = (ONNX, TORCHSCRIPT, SMP)
SMP_FILES = ("config.json", "model.safetensors")  # what smp's save_pretrained writes


def source_kind(path: str | Path) -> str:
    """Which kind of model ``path`` is: ``run``, ``checkpoint``, ``study``, ``onnx``, ``torchscript`` or ``smp``.

    Only names and archive listings are read, never weights.

    Raises:
        CheckpointError: nothing at ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder (nor study folder, nor exported model)")
    if path.is_dir():
        if is_study(path):
            return STUDY
        return SMP if all((path / name).is_file() for name in SMP_FILES) else RUN
    if path.suffix.lower() == ".onnx":
        return ONNX
    return TORCHSCRIPT if _is_torchscript(path) else CHECKPOINT


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds its code (``<name>/code/...``); a torch.save checkpoint holds none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


@dataclass
class ModelSource:
    """The sever checkpoints one ``sever.load`` / ``-m`` names, ready to become a predictor.

    Attributes:
        models: run folders, checkpoint files or opened checkpoints, each study replaced by
            its finished folds' runs.
        weights: one ensemble weight per entry of ``models`` (a study's shared by its folds), or None.
        tuned: the post-processing file tuned for them when no run's own applies: a lone
            study's out-of-fold ``postprocess.yml`` (None when it has none, or for other kinds).
        given: the paths as given (a study before its expansion).
        kinds: the kind of each given path (:func:`source_kind`).
    """

    models: list[CheckpointRef]
    weights: list[float] | None = None
    tuned: Path | None = None
    given: list[CheckpointRef] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def open(self) -> list[OpenedCheckpoint]:
        """The checkpoints, each read once (configs now, weights when the predictor loads them)."""
        self.models = [open_checkpoint(model) for model in self.models]
        return self.models

    @property
    def outputs(self) -> OutputClasses:
        """Which dataset classes the prediction's channels are (from the checkpoints' configs)."""
        return compose(self.open()).outputs

    @property
    def config(self) -> dict:
        """The first checkpoint's config."""
        return self.open()[0].config

    @property
    def study(self) -> Path | None:
        """The study folder when the paths given are one study alone, else None."""
        return Path(self.given[0]) if self.kinds == [STUDY] else None

    def check_has_split(self) -> None:
        """Refuse exported models where a run's validation split is needed: they carry no data or split.

        Raises:
            ConfigError: naming the exported path.
        """
        for path, kind in zip(self.given, self.kinds):
            if kind in EXPORTED_KINDS:
                raise ConfigError(f"{path}: an exported {kind} model carries no validation split; predict images "
                                  f"with it (sever predict -m) and score the CSV with sever evaluate --pred")

    def predictor(self, classifiers: Sequence[str | Path] = (), average: str = "mean", tta: str = "none",
                  device: str = "auto", amp: str = "auto", tiling: Tiling | None = None,
                  every_class: bool = False) -> Predictor:
        """Load the models on ``device`` as a :class:`~sever.inference.predictor.Predictor` (see ``build_predictor``)."""
        return build_predictor(self.models, classifiers, average, self.weights, tta, device, amp, tiling, every_class)

    def settings(self, predictor: Predictor, option: str | Path | None = None) -> tuple[PostProcessing, str]:
        """The post-processing and where it came from: ``option`` (a file, ``default``), else :attr:`tuned`,
        else the run's own (:func:`~sever.inference.predictor.run_settings`)."""
        chosen = option if option is not None else self.tuned
        return run_settings(None if chosen is None else str(chosen), predictor.models, bool(predictor.classifiers))


def open_models(paths: Sequence[CheckpointRef], weights: Sequence[float] | None = None,
                allow_missing_folds: bool = False) -> ModelSource:
    """The :class:`ModelSource` of one or more model paths (an ensemble), studies expanded into their folds.

    Raises:
        CheckpointError: a missing path, an unfinished study fold (unless ``allow_missing_folds``).
        ConfigError: ``weights`` not one per path.
    """
    kinds = [CHECKPOINT if isinstance(path, OpenedCheckpoint) else source_kind(path) for path in paths]
    models, shares = expand_studies(paths, list(weights) if weights else None, allow_missing_folds)
    source = ModelSource(models, shares, None, list(paths), kinds)
    if source.study is not None and StudyPaths(source.study).postprocess.is_file():
        source.tuned = StudyPaths(source.study).postprocess
    return source
