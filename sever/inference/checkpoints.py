"""Turn a run folder or checkpoint file into a model ready for inference.

``-m saved/demo/1122_035652`` uses that run's ``checkpoints/model_best.pth``
(else ``last.pth``, else its newest ``checkpoint-epoch{N}.pth``); ``-m
path/to/file.pth`` uses the file; ``-m`` of a study folder is its folds' runs
(:func:`expand_studies`). The checkpoint's own config rebuilds the
model (with ``encoder_weights`` off: the weights come from the checkpoint, so
nothing is downloaded) and gives the normalisation its training used. When the
run kept an exponential moving average, its weights are loaded: validation
scored them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sever.data_loader.augmentation import Normalization
from sever.exceptions import CheckpointError, ConfigError
from sever.model.model import build_model
from sever.registries import TRANSFORMS
from sever.tasks import SEGMENTATION, task_of
from sever.utils.checkpoint import load_checkpoint
from sever.utils.config import OutputClasses, output_classes
from sever.utils.logger import info_once
from sever.utils.run import RunPaths
from sever.study.folder import StudyPaths, is_study

logger = logging.getLogger(__name__)

CONFIG_KEYS = ("arch", "classes")  # what rebuilds the network; prediction also needs "augmentation"
EMA_PREFIX = "module."


@dataclass
class LoadedModel:
    """A network in eval mode with what inference needs to feed it.

    Attributes:
        model: maps ``(B, 1, H, W)`` normalised grey images to logits
            ``(B, C, H, W)`` (segmentation) or ``(B, C)`` (classification).
        source: the checkpoint file (for messages).
        config: the run's validated config.
        normalization: the run's augmentation's, from uint8 grey images to ``model``'s input.
        postprocess: the post-processing settings tuned for this checkpoint at the end of
            training (a mapping, see :class:`~sever.model.postprocess.PostProcessing`), or None.
        exported: ``"onnx"``, ``"torchscript"`` or ``"smp"`` for a model written by ``sever export``
            (:mod:`sever.inference.exported`; ``config`` then holds only its classes and task),
            None for a checkpoint.
    """

    model: nn.Module
    source: Path
    config: dict
    normalization: Normalization
    postprocess: dict | None = None
    exported: str | None = None

    @property
    def classes(self) -> int:
        """Output channels of the network (the run's ``train_classes``; every class when it sets none)."""
        return self.outputs.outputs

    @property
    def outputs(self) -> OutputClasses:
        """Which of the dataset's classes the network's outputs are."""
        return output_classes(self.config)

    @property
    def task(self) -> str:
        return self.config["task"]


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or the best one of a run folder.

    Raises:
        CheckpointError: nothing there, or a folder without checkpoints.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    run = RunPaths(path)
    epochs = run.saved_epochs()
    candidates = [run.best, run.last] + ([run.epoch_checkpoint(epochs[-1])] if epochs else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path}: not a run folder with checkpoints (looked for {run.best} and {run.last})"
    )


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint file read once (tensors memory-mapped): what it is, then its weights, from one read.

    Attributes:
        source: the checkpoint file.
        state: its contents, as :func:`~sever.utils.checkpoint.load_checkpoint` returns them.
    """

    source: Path
    state: dict

    @property
    def config(self) -> dict:
        return self.state["config"]

    def __str__(self) -> str:  # messages name the file, as they do for a path
        return str(self.source)


CheckpointRef = str | Path | OpenedCheckpoint


def open_checkpoint(path: CheckpointRef) -> OpenedCheckpoint:
    """Read a run folder's best checkpoint or a checkpoint file once; an opened one is returned as it is.

    A model written by ``sever export`` (ONNX, TorchScript, smp folder) is opened from its
    metadata: its ``state`` holds the config's classes and task and ``"exported"`` its format.

    Raises:
        CheckpointError: missing, corrupt or foreign file, or a config without ``arch`` and ``classes``.
    """
    if isinstance(path, OpenedCheckpoint):
        return path
    from sever.inference.exported import exported_format, open_exported_checkpoint

    if exported_format(path):
        return open_exported_checkpoint(path)
    source = resolve_checkpoint(path)
    state = load_checkpoint(source, mmap=True)
    _checked_config(state, source)
    return OpenedCheckpoint(source, state)


def _checked_config(state: dict, source: Path, keys: Sequence[str] = CONFIG_KEYS) -> dict:
    """The checkpoint's config, with ``task`` (default ``segmentation``); CheckpointError when it lacks ``keys``."""
    config = state["config"]
    missing = [key for key in keys if not isinstance(config, dict) or key not in config]
    if missing:
        raise CheckpointError(f"{source}: not a sever checkpoint: its config lacks {', '.join(missing)}")
    config.setdefault("task", SEGMENTATION.name)
    return config


def _weights(state: dict, source: Path) -> tuple[dict[str, torch.Tensor], str]:
    """``(weights, "ema")`` when the checkpoint kept an EMA (prefix ``module.`` removed), else ``(state_dict, "model")``."""
    ema = state.get("ema_state_dict")
    if not ema:
        return state["state_dict"], "model"
    logger.info("%s: using the EMA weights", source)
    return {key[len(EMA_PREFIX):]: value for key, value in ema.items() if key.startswith(EMA_PREFIX)}, "ema"


def _arch_block(config: dict) -> dict:
    """The config's ``arch`` as ``{"type": ..., "args": {...}}`` (a bare name is allowed in configs)."""
    arch = config["arch"]
    arch = {"type": arch} if isinstance(arch, str) else arch
    return {"type": arch.get("type"), "args": dict(arch.get("args") or {})}


def build_eval_model(config: dict, source: Path) -> nn.Module:
    """The model ``config`` describes, without pretrained weights (nothing is downloaded)."""
    arch = _arch_block(config)
    arch["args"][task_of(config).pretrained_arg] = None
    try:
        return build_model(arch, output_classes(config).outputs)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: cannot rebuild the model of this checkpoint: {exc}") from exc


def as_loaded_model(model: nn.Module, config: dict, source: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Wrap ``model`` with the normalisation of its ``config``, in eval mode on ``device``."""
    transforms = TRANSFORMS.build(config["augmentation"], "augmentation")
    return LoadedModel(model.to(device).eval(), source, config, transforms.normalization)


def run_config(path: CheckpointRef) -> dict:
    """The config of a run folder or checkpoint file, read without loading its weights."""
    return open_checkpoint(path).config


def load_network(path: CheckpointRef, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, Path, str]:
    """Load a run folder, checkpoint file or opened checkpoint of any task.

    Returns:
        ``(eval-mode network on device, config, checkpoint file, "ema" or "model")``: which
        weights were loaded.

    Raises:
        CheckpointError: missing, corrupt or foreign file, or weights that do not fit
            the model its config describes.
    """
    opened = open_checkpoint(path)
    source, state, config = opened.source, opened.state, opened.config
    if state.get("exported"):
        raise CheckpointError(f"{source}: a model exported by sever export ({state['exported']}), not a checkpoint; "
                              f"give the run folder or checkpoint it was exported from")
    model = build_eval_model(config, source)
    weights, kind = _weights(state, source)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: the weights do not fit the {_arch_block(config)['type']} model its config describes: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    info_once(logger, "loaded %s (%s, epoch %s)", source, _arch_block(config)["type"], state.get("epoch"))
    return model.to(device).eval(), config, source, kind


def load_model(path: CheckpointRef, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a segmentation or classification run as a :class:`LoadedModel` on ``device``.

    Raises:
        CheckpointError: as :func:`load_network`; a detection run.
    """
    opened = open_checkpoint(path)
    if opened.state.get("exported"):
        from sever.inference.exported import open_exported

        return open_exported(opened.source, device)
    model, config, source, _ = load_network(opened, device)
    _checked_config({"config": config}, source, ("augmentation",))
    if task_of(config).boxes:
        raise CheckpointError(f"{source}: a {config['task']} run; sever predict and evaluate take it alone "
                              f"(-m DETECTOR ... with --threshold), without segmentation models")
    loaded = as_loaded_model(model, config, source, device)
    loaded.postprocess = opened.state.get("postprocess")
    return loaded


def load_models(paths: Sequence[CheckpointRef], task: str, device: torch.device | str = "cpu",
                option: str = "-m") -> list[LoadedModel]:
    """Load several checkpoints of one task (an ensemble, or a composition of their classes).

    Args:
        paths: run folders, checkpoint files or opened checkpoints.
        task: ``segmentation`` or ``classification``: what every checkpoint must be.
        option: the command-line option that named them, for messages.

    Raises:
        CheckpointError: a load fails, or a checkpoint is of the other task. Whether their
            classes fit together is :mod:`sever.inference.compose`'s to say.
    """
    models = [load_model(path, device) for path in paths]
    for loaded in models:
        if loaded.task != task:
            option_for_it = task_of(loaded.config).ensemble_option
            hint = (f"give it with {option_for_it}" if option_for_it
                    else "predict, evaluate and tune take segmentation runs and classifiers")
            raise CheckpointError(f"{option} {loaded.source}: a {loaded.task} run; {hint}")
    return models


def study_runs(study: str | Path, allow_missing: bool = False) -> list[Path]:
    """The run folders a study predicts with: its final model when it has one trained
    (:mod:`sever.study.final`), else its finished folds.

    Raises:
        CheckpointError: a fold not ``done`` (pending, running, failed) or without its
            run folder, unless ``allow_missing`` (then a warning names it); no fold done.
    """
    paths = StudyPaths(Path(study))
    final = paths.final_entry()
    if final is not None and final.predicts:
        info_once(logger, "%s: predicting with its final model %s (trained on every labelled image after the folds); "
                          "its fold ensemble: -m %s/fold0 -m %s/fold1 ... --postprocess %s", study, final.run, study,
                  study, paths.postprocess)
        return [final.run]
    if final is not None:
        logger.warning("%s: its final model is %s: predicting with the folds", study,
                       final.status if final.run.is_dir() else f"missing ({final.run})")
    runs = []
    for entry in paths.entries():
        if entry.status == "done" and entry.run.is_dir():
            runs.append(entry.run)
            continue
        problem = f"fold {entry.fold} is {entry.status if entry.run.is_dir() else 'missing'} ({entry.run})"
        if not allow_missing:
            raise CheckpointError(f"{study}: {problem}; finish it with sever train -r {study}, or predict "
                                  f"with the other folds with --allow-missing-folds")
        logger.warning("%s: %s; predicting without it (--allow-missing-folds)", study, problem)
    if not runs:
        raise CheckpointError(f"{study}: no fold has finished training")
    return runs


def expand_studies(models: Sequence[CheckpointRef], weights: Sequence[float] | None,
                   allow_missing: bool = False) -> tuple[list[CheckpointRef], list[float] | None]:
    """``-m`` with each study folder replaced by its folds' runs (a fold ensemble).

    A study's ``-w`` weight is shared equally by its folds, so ``-m STUDY -m RUN -w 1 -w 1``
    weighs the fold ensemble as much as the run.

    Raises:
        CheckpointError: as :func:`study_runs`; ConfigError: ``-w`` not one per ``-m``.
    """
    if weights and len(weights) != len(models):
        raise ConfigError(f"-w: {len(weights)} weight(s) for {len(models)} -m")
    expanded: list[CheckpointRef] = []
    shares: list[float] = []
    for position, model in enumerate(models):
        is_a_study = not isinstance(model, OpenedCheckpoint) and is_study(model)
        runs = study_runs(model, allow_missing) if is_a_study else [model]
        expanded += runs
        if weights:
            shares += [weights[position] / len(runs)] * len(runs)
    return expanded, shares or None
