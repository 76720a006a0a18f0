"""Build an experiment from its config and train it.

Every part comes from its YAML block by name (``type`` + ``args``) through the
registries; all blocks are checked before anything heavy is built, so a typo in
the last block fails in a second, not after the data has loaded.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from sever.exceptions import CheckpointError, ConfigError, Interrupted
from sever.inference.tiling import valid_tiling
from sever.model.model import build_model
from sever.model.optimizer import build_optimizer
from sever.model.scheduler import build_scheduler
from sever.report import report_after_training
from sever.registries import ARCHITECTURES, DATA_LOADERS, LOSSES, METRICS, SCHEDULERS, TASKS, TRAINERS, TRANSFORMS
from sever.tasks import task_of
from sever.utils import distributed, time_budget
from sever.utils.checkpoint import load_checkpoint, remove_stale_temporaries
from sever.utils.distributed import Distributed
from sever.utils.config import (apply_overrides, dump_config, load_config, output_classes, validate_config,
                                with_defaults)
from sever.utils.device import check_amp, resolve_device
from sever.utils.registry import parse_spec
from sever.utils.logger import add_file_log
from sever.utils.run import RunPaths, resolve_resume
from sever.utils.time_budget import Deadline

logger = logging.getLogger(__name__)

# The config blocks whose type a task may reserve for itself (Task.parts).
TASK_PARTS = {"arch": ARCHITECTURES, "data_loader": DATA_LOADERS, "augmentation": TRANSFORMS, "loss": LOSSES}
# ``arch.args`` that do not change the shapes of the weights, so they may differ on resume.
WEIGHTLESS_ARCH_ARGS = ("encoder_weights", "dropout")
SUPPLIED = {
    "arch": ("classes",),
    "data_loader": ("classes", "class_names", "transforms", "seed", "task", "rank", "world_size"),
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_config(config: dict, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """Apply ``--set`` overrides, validate sever's keys and every ``type``/``args`` block."""
    config = validate_config(apply_overrides(config, overrides))
    check_task_parts(config)
    ARCHITECTURES.check(config["arch"], "arch", supplied=SUPPLIED["arch"])
    DATA_LOADERS.check(config["data_loader"], "data_loader", supplied=SUPPLIED["data_loader"])
    TRANSFORMS.check(config["augmentation"], "augmentation")
    LOSSES.check(config["loss"], "loss")
    for i, spec in enumerate(metric_specs(config)):
        METRICS.check(spec, f"metrics.{i}")
    if config["lr_scheduler"] is not None:
        SCHEDULERS.check(config["lr_scheduler"], "lr_scheduler", supplied=("optimizer",))
    valid_tiling(config)
    return config


def with_block_defaults(config: dict) -> dict:
    """A prepared config with every block's constructor defaults filled in too: what ``config.yaml`` records."""
    config = dict(config)
    blocks = {"arch": ARCHITECTURES, "data_loader": DATA_LOADERS, "augmentation": TRANSFORMS, "loss": LOSSES,
              "lr_scheduler": SCHEDULERS}
    supplied = {**SUPPLIED, "arch": (*SUPPLIED["arch"], "config_key"), "lr_scheduler": ("optimizer",)}
    for key, registry in blocks.items():
        if config[key] is not None:
            name = parse_spec(config[key], key)[0]
            config[key] = with_defaults(config[key], registry.get(name, f"{key}.type"), key, supplied.get(key, ()))
    config["metrics"] = [with_defaults(spec, METRICS.get(parse_spec(spec, f"metrics.{i}")[0], f"metrics.{i}.type"),
                                       f"metrics.{i}") for i, spec in enumerate(metric_specs(config))]
    return config


def check_task_parts(config: dict) -> None:
    """A task's own parts (``Task.parts``, e.g. detection's boxes) with that task, and only with it."""
    task = task_of(config)
    for key, registry in TASK_PARTS.items():
        name = parse_spec(config[key], key)[0]
        entry = registry.get(name, f"{key}.type")
        for owner in (TASKS.get(other, "task") for other in TASKS.names()):
            required = owner.parts.get(key)
            if required is None:
                continue
            fits = isinstance(entry, type) and issubclass(entry, registry.get(required, f"{key}.type"))
            if owner is task and not fits:
                raise ConfigError(f"{key}.type: task {task.name} needs {required}, got {name}")
            if owner is not task and fits:
                raise ConfigError(f"{key}.type: task {task.name} needs anything but {required}, got {name}")


def metric_specs(config: dict) -> list:
    return config["metrics"] if config["metrics"] is not None else list(task_of(config).default_metrics)


@dataclass
class Experiment:
    """Everything a trainer needs, built from one config."""

    config: dict
    device: torch.device
    distributed: Distributed
    model: Any
    data: Any
    loss: Any
    metrics: list
    optimizer: Any
    lr_scheduler: Any
    normalization: Any  # from the loaders' uint8 images to the model's input, or None (see Trainer)


def build_experiment(config: dict) -> Experiment:
    """Build data, model, loss, metrics, optimiser and schedule from a prepared config.

    Under ``torchrun`` this also joins the process group and takes this rank's device.
    """
    seed_everything(config["seed"])
    context = distributed.from_environment()
    device = distributed.setup(context, resolve_device(config["device"]))
    check_amp(config["amp"], device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config["trainer"]["cudnn_benchmark"]
    transforms = TRANSFORMS.build(config["augmentation"], "augmentation")
    data = DATA_LOADERS.build(
        config["data_loader"], "data_loader",
        classes=config["classes"], class_names=config["class_names"], transforms=transforms, seed=config["seed"],
        task=config["task"], rank=context.rank, world_size=context.world_size,
    )
    model = build_model(config["arch"], output_classes(config).outputs).to(device)
    if config["trainer"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    logger.info("model: %s over %s, %s trainable parameters", config["arch"]["type"],
                _backbone_name(config["arch"]), f"{model.trainable_parameters():,}")
    loss = LOSSES.build(config["loss"], "loss")
    metrics = [METRICS.build(spec, f"metrics.{i}") for i, spec in enumerate(metric_specs(config))]
    optimizer = build_optimizer(model, config["optimizer"])
    scheduler = build_scheduler(optimizer, config["lr_scheduler"])
    return Experiment(config, device, context, model, data, loss, metrics, optimizer, scheduler,
                      transforms.normalization)


def make_trainer(experiment: Experiment, run: RunPaths):
    trainer_class = TRAINERS.get(task_of(experiment.config).trainer, "task")
    return trainer_class(
        experiment.model, experiment.loss, experiment.metrics, experiment.optimizer,
        experiment.lr_scheduler, experiment.config, run,
        train_loader=experiment.data.train_loader, valid_loader=experiment.data.valid_loader,
        device=experiment.device, amp=experiment.config["amp"], distributed=experiment.distributed,
        normalization=experiment.normalization, tiling=valid_tiling(experiment.config),
    )


def _backbone_name(arch: dict) -> str:
    args = arch.get("args", {})
    return args.get("encoder_name", args.get("backbone", "?"))


def _checkpoint_bytes(model: torch.nn.Module) -> int:
    """Rough size of one checkpoint: weights plus two optimiser moments."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def train(config: dict, overrides: tuple[str, ...] | list[str] = (), run_dir: Path | None = None,
          deadline: Deadline | None = None) -> RunPaths:
    """Train a new run from a loaded config; returns its folder (``run_dir``, e.g. a study's fold, or a new one).

    ``deadline``: when the run's whole time ends (a study's fold: its share); its self-tuning
    and report then shrink to end by it (:func:`after_training`).
    """
    config = prepare_config(config, overrides)
    experiment = build_experiment(config)
    context = experiment.distributed
    run = None
    if context.is_main:
        run = RunPaths(run_dir) if run_dir is not None else RunPaths.create(config["save_dir"], config["name"])
        run.make_dirs()
        run.check_free_space(4 * _checkpoint_bytes(experiment.model))
        dump_config(with_block_defaults(config), run.config)
    run = RunPaths(Path(context.broadcast(str(run.root) if run else None)))
    _run_trainer(experiment, run, "run folder: %s", run.root, deadline=deadline)
    return run


def resume(path: str | Path, overrides: tuple[str, ...] | list[str] = (), deadline: Deadline | None = None) -> RunPaths:
    """Continue a run from a checkpoint file or the newest valid one in a run folder.

    The checkpoint's architecture and classes are compared with the config in
    use before anything is built, and the run folder is test-written first.
    """
    checkpoint = resolve_resume(path)
    state = load_checkpoint(checkpoint)
    config = prepare_config(state["config"], overrides)
    check_compatible(state["config"], config, str(checkpoint))
    experiment = build_experiment(config)
    run = RunPaths(checkpoint.resolve().parent.parent)
    if experiment.distributed.is_main:
        run.make_dirs()
        remove_stale_temporaries(run.checkpoints)
        run.check_free_space(4 * _checkpoint_bytes(experiment.model))
        dump_config(with_block_defaults(config), run.config)  # with the --set values it now trains with
    _run_trainer(experiment, run, "resuming from %s", checkpoint, state=state, deadline=deadline)
    return run


def check_compatible(checkpoint_config: Mapping, config: Mapping, source: str = "the checkpoint") -> None:
    """Refuse to load weights into a model they were not trained for.

    Compares what fixes the shapes of the weights: ``task``, ``classes``,
    ``arch.type`` and every ``arch.args`` entry except those in
    :data:`WEIGHTLESS_ARCH_ARGS` (an argument left out counts as its default).

    Args:
        checkpoint_config: the config saved in the checkpoint (``state["config"]``).
        config: the validated config in use (after ``--set`` overrides).
        source: the checkpoint's path, for the message.

    Raises:
        CheckpointError: listing each key that disagrees, with both values.
    """
    differences = [
        f"{key} is {theirs!r} in the checkpoint but {ours!r} in the config"
        for key, theirs, ours in _structure_differences(checkpoint_config, config)
    ]
    if differences:
        raise CheckpointError(
            f"{source} does not fit the config in use: {'; '.join(differences)}. Its weights only load into "
            "the model they were trained as: drop the overrides of these keys, or start a new run with -c."
        )


def _structure_differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    found = [(key, old.get(key), new.get(key)) for key in ("task", "classes") if old.get(key) != new.get(key)]
    if not found and output_classes(old).ids != output_classes(new).ids:  # same output count, other classes
        found.append(("data_loader.args.train_classes", output_classes(old).describe(), output_classes(new).describe()))
    old_type, old_args = _arch_parts(old.get("arch"))
    new_type, new_args = _arch_parts(new.get("arch"))
    if old_type != new_type:
        return found + [("arch.type", old_type, new_type)]
    defaults = _arch_defaults(new_type)
    for name in sorted(set(old_args) | set(new_args) | set(defaults)):
        if name in WEIGHTLESS_ARCH_ARGS:
            continue
        theirs, ours = old_args.get(name, defaults.get(name)), new_args.get(name, defaults.get(name))
        if theirs != ours:
            found.append((f"arch.args.{name}", theirs, ours))
    return found


def _arch_parts(arch: Any) -> tuple[Any, dict]:
    """``(type, args)`` of an ``arch`` block (a mapping or a bare name)."""
    if isinstance(arch, Mapping):
        args = arch.get("args")
        return arch.get("type"), dict(args) if isinstance(args, Mapping) else {}
    return arch, {}


def _arch_defaults(name: Any) -> dict[str, Any]:
    """The default arguments of architecture ``name`` (empty if unknown)."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        return {}
    parameters = inspect.signature(ARCHITECTURES.get(name, "arch.type")).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty and p.kind is not p.KEYWORD_ONLY}


def _run_trainer(experiment: Experiment, run: RunPaths, message: str, *args: Any, state: dict | None = None,
                 deadline: Deadline | None = None) -> None:
    """Train with the run's log file attached; rank 0 logs, the others only warn."""
    context = experiment.distributed
    sever_logger = logging.getLogger("sever")
    handler = add_file_log(run.log_file) if context.is_main else None
    if not context.is_main:
        sever_logger.setLevel(logging.WARNING)
    try:
        logger.info(message, *args)
        trainer = make_trainer(experiment, run)
        if state is not None:
            trainer.resume(state)
        trainer.train()
        if context.is_main:
            after_training(experiment, run, deadline)
    except Interrupted as stop:  # tuning or the report: a resume of the trained run does them again
        raise stop if stop.command else stop.resume_with(f"sever train -r {run.root}")
    finally:
        if handler is not None:
            sever_logger.removeHandler(handler)
            handler.close()
        distributed.teardown(context)


def after_training(experiment: Experiment, run: RunPaths, deadline: Deadline | None = None) -> None:
    """The finished run tunes itself and writes its report, each timed; by a ``deadline``, each shrinks:
    the tuning to an even subset of the validation images, the report to the images that fit in the time
    left at the tuning's measured seconds per image, once its sections without images are drawn
    (:func:`sever.report.build.fitted_cap`; none fit from the start: no report, said so)."""
    started = time.monotonic()
    tuned = tune_postprocess(experiment.config, run, experiment.device, deadline)
    tuning = time.monotonic() - started
    logger.info("self-tuning took %.0f s", tuning)
    report_images = experiment.config["trainer"]["report_images"]
    per_image = tuning / tuned if tuned else 0.0
    if report_images and deadline is not None:
        report_images = time_budget.items_fitting(deadline.left(), per_image, report_images)
    reason = deadline.reason() if deadline is not None else None
    if not report_images or reason is not None:
        if experiment.config["trainer"]["report_images"]:
            logger.info("no run report: %s; write it with sever report %s", reason or time_budget.BUDGET_ENDS,
                        run.root)
        return
    started = time.monotonic()
    report_after_training(run.root, report_images, deadline, per_image)
    logger.info("the run report took %.0f s", time.monotonic() - started)


def tune_postprocess(config: dict, run: RunPaths, device: torch.device, deadline: Deadline | None = None) -> int:
    """Tune the finished run's post-processing on its validation split (``trainer.tune_postprocess``);
    returns the images it was tuned on (0: not tuned).

    Writes ``postprocess.yml`` and the settings into the tuned checkpoint
    (:func:`sever.inference.tune.tune_run`) and logs the default and tuned validation
    scores; a run that cannot be tuned is skipped with the reason logged.
    """
    if not config["trainer"]["tune_postprocess"]:
        logger.info("post-processing not tuned: trainer.tune_postprocess is false")
        return 0
    if not task_of(config).pixel_maps:
        logger.info("post-processing not tuned: a %s run has no segmentation post-processing", config["task"])
        return 0
    from sever.inference.predictor import TUNED_FILE
    from sever.inference.tune import tune_run

    try:
        result = tune_run(run.root, device, deadline, data_config=config)
    except ConfigError as exc:
        logger.info("post-processing not tuned: %s", exc)
        return 0
    logger.info("post-processing tuned on the validation split (competition metric and per-class Dice, "
                "default settings against tuned):\n%s", result.summary())
    logger.info("wrote %s; sever predict/evaluate -m %s use it by default", run.root / TUNED_FILE, run.root)
    from sever.inference.learning import judge_classes, learning_lines

    for line in learning_lines(judge_classes(result.class_names, result.recorded_scores(), result.best),
                               "validation split"):
        if line.startswith("WARNING: "):
            logger.warning(line.removeprefix("WARNING: "))
        else:
            (logger.warning if "NOT learned" in line else logger.info)(line)
    return len(result.image_ids)


def check_single_run(config: dict, overrides: tuple[str, ...] | list[str] = (), source: str | None = None) -> dict:
    """``config`` prepared for one run (:func:`prepare_config`); a config of pseudo-label rounds or with a
    final model is a study's.

    Raises:
        ConfigError: a bad config, or ``pseudo`` or ``final_model`` set; the message starts with ``source``
            (its file) when given.
    """
    try:
        prepared = prepare_config(config, overrides)
        if prepared["pseudo"] is not None:
            raise ConfigError("pseudo: pseudo-label rounds train a study: give --folds K")
        if prepared["final_model"]:
            raise ConfigError("final_model: a study trains its final model after its folds: give --folds K, or set "
                              "final_model: false for one run")
    except ConfigError as exc:
        if source is None:
            raise
        raise ConfigError(f"{source}: {exc}") from exc
    return prepared


def train_from_files(config_paths: tuple[str, ...], overrides: tuple[str, ...] = ()) -> list[RunPaths]:
    """Train each config file in turn (``sever train -c a.yml -c b.yml``).

    Every file is loaded and validated before the first one trains.
    """
    configs = [load_config(path) for path in config_paths]
    for path, config in zip(config_paths, configs):
        check_single_run(config, overrides, str(path))
    return [train(config, overrides) for config in configs]
