"""The ``sever`` command line.

User errors (bad config, data or checkpoints) print one clear message and exit
with status 1; ``--debug`` shows the traceback. Heavy imports happen inside the
commands so ``sever --help`` answers at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from sever import __version__
from sever.exceptions import ConfigError, SeverError, TrainingInterrupted

logger = logging.getLogger("sever")

EXIT_USER_ERROR = 1


def _debug_after_the_command(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``sever train --debug`` means the same as ``sever --debug train``."""
    if value:
        from sever.utils.logger import setup_logging

        ctx.find_root().obj["debug"] = True
        setup_logging(verbose=True)


class SeverGroup(click.Group):
    """A click group that turns :class:`SeverError` into a message and an exit code.

    Every command also takes ``--debug`` itself, so it may follow the command name.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                       callback=_debug_after_the_command,
                                       help="Show full tracebacks for errors (as sever --debug)."))
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrainingInterrupted as exc:
            click.echo(str(exc), err=True)
            ctx.exit(128 + exc.signal_number)
        except SeverError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=SeverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to the console.")
@click.version_option(__version__, prog_name="sever")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """sever: steel-surface defect segmentation (Severstal's recipe as a framework)."""
    from sever.utils.logger import setup_logging

    setup_logging(verbose or debug)
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="Experiment YAML, or the name of a built-in one (e.g. demo); repeat to train several "
                   "one after another.")
@click.option("-r", "--resume", type=click.Path(), default=None,
              help="Checkpoint file or run folder to continue (its newest valid checkpoint).")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted path, e.g. --set trainer.epochs=5 (repeatable).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine (DistributedDataParallel, one per GPU); "
                   "the same as launching with torchrun --standalone --nproc_per_node N.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Train a K-fold study of the config: fold0..fold{K-1} runs in one study folder.")
@click.option("--fold", type=click.IntRange(min=0), default=None,
              help="With --folds or -r STUDY: train only this fold (0..K-1).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Study folds trained at once, each in its own process on its own GPU(s).")
@click.pass_context
def train(ctx: click.Context, configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...],
          nproc: int, folds: int | None, fold: int | None, parallel: int) -> None:
    """Train models from experiment files, or resume a run or a study."""
    if bool(configs) == bool(resume):
        raise click.UsageError("give either -c CONFIG (one or more) or -r CHECKPOINT_OR_RUN_DIR")
    from sever.utils.config import resolve_experiment
    from sever.utils.study import is_study

    configs = tuple(str(resolve_experiment(config)) for config in configs)
    if folds is not None or (resume and is_study(resume)):
        _train_study(ctx, configs, resume, overrides, nproc, folds, fold, parallel)
        return
    if fold is not None or parallel > 1:
        raise click.UsageError("--fold and --parallel are for studies: give --folds K with -c, or -r STUDY_DIR")
    if nproc > 1:
        ctx.exit(_launch_distributed(ctx, nproc))
    from sever import main
    from sever.utils.distributed import from_environment

    runs = [main.resume(resume, overrides)] if resume else main.train_from_files(configs, overrides)
    if from_environment().is_main:
        for run in runs:
            click.echo(f"run saved in {run.root}")
        click.echo(f"next: {_next_command(runs[-1])}")


def _next_command(run) -> str:
    """The command that uses a finished run: predict with it (a classifier gates a segmentation run)."""
    from sever.utils.config import load_config

    if load_config(run.config)["task"] == "classification":
        return f"sever predict -m SEGMENTATION_RUN --classifier {run.root} -i IMAGE_DIR -o submission.csv"
    return f"sever predict -m {run.root} -i IMAGE_DIR -o submission.csv"


def _train_study(ctx: click.Context, configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...],
                 nproc: int, folds: int | None, fold: int | None, parallel: int) -> None:
    """``sever train --folds K -c X`` or ``-r STUDY``: train a study's folds."""
    from sever import study
    from sever.utils.config import load_config
    from sever.utils.distributed import from_environment
    from sever.utils.study import StudyPaths

    if resume and folds is not None:
        raise click.UsageError("-r STUDY_DIR trains the study's own folds; drop --folds")
    if len(configs) > 1:
        raise click.UsageError("--folds trains one -c CONFIG")
    options = dict(only=fold, overrides=overrides, parallel=parallel, nproc=nproc, debug=ctx.obj["debug"])
    if configs:
        paths = study.train_study(load_config(configs[0]), folds, **options)
    else:
        paths = study.resume_study(resume, **options)
    if from_environment().is_main:
        whole = StudyPaths(paths.root)
        for number in range(whole.rounds + 1):
            at = whole.at_round(number)
            if whole.rounds:
                score = at.round_record().get("score")
                click.echo(f"round {number}: out-of-fold score "
                           f"{'not yet tuned' if score is None else format(score, '.4f')}")
            for entry in at.entries():
                click.echo(f"fold {entry.fold}: {entry.status:<8} {entry.run}")
        if whole.rounds:
            click.echo(f"sever predict -m {paths.root} uses round {whole.chosen_round()} (the finished round with the "
                       f"best out-of-fold score)")
        click.echo(f"study saved in {paths.root}")


def _launch_distributed(ctx: click.Context, nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine; returns its exit code.

    The command line is rebuilt from the options the user gave (defaults stay defaults), less ``--nproc``.
    """
    import subprocess
    import sys

    args = ["--debug"] if ctx.obj["debug"] else []
    if ctx.find_root().params.get("verbose"):
        args.append("--verbose")
    args.append(ctx.info_name)
    for param in ctx.command.params:
        if param.name == "nproc" or param.name not in ctx.params:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT:
            continue
        values = ctx.params[param.name] if param.multiple else (ctx.params[param.name],)
        option = max(param.opts, key=len)
        for value in values:
            if getattr(param, "is_flag", False):
                args.append(option if value else param.secondary_opts[0])
            else:
                args.append(f"{option}={value}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "sever", *args]
    logger.info("launching %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, check=False).returncode


@cli.command("demo-data")
@click.option("-o", "--out", "out_dir", default="data/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the synthetic dataset to.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same data.")
@click.option("--overwrite", is_flag=True, help="Regenerate even if a complete demo dataset is there.")
@click.option("--mixed-sizes", is_flag=True,
              help="Give every image its own size, each side between a third of 256x1600 and all of it.")
def demo_data(out_dir: str, seed: int, overwrite: bool, mixed_sizes: bool) -> None:
    """Write the synthetic demo dataset (Kaggle competition layout)."""
    from sever.data_loader.demo import make_demo_data

    path = make_demo_data(out_dir, seed=seed, overwrite=overwrite, mixed_sizes=mixed_sizes)
    click.echo(f"demo data in {path}")


# ----------------------------------------------------------------------------- predict, evaluate, tune


def _prediction_options(command):
    """The options shared by ``predict``, ``evaluate -m`` and ``tune -m``: models and how they predict."""
    options = [
        click.option("-m", "--model", "models", multiple=True, type=click.Path(),
                     help="Run folder (its best checkpoint), checkpoint file or study folder (its folds' "
                          "ensemble); repeat for an ensemble."),
        click.option("-w", "--weight", "weights", multiple=True, type=float,
                     help="Ensemble weight of each -m (or --from-probs), in order; mean and rms only."),
        click.option("--average", default="mean", show_default=True, type=click.Choice(["mean", "rms", "max"]),
                     help="How the models' probabilities are combined, per class and pixel."),
        click.option("--tta", default="none", show_default=True, type=click.Choice(["none", "hflip", "vflip", "both"]),
                     help="Test-time flips, averaged in probability space (both: h, v and h+v)."),
        click.option("--classifier", "classifiers", multiple=True, type=click.Path(),
                     help="Classification run gating the segmentation (repeat to average several)."),
        click.option("--postprocess", type=click.Path(dir_okay=False), default=None,
                     help="Post-processing YAML (thresholds, min_pixels, ...), e.g. from sever tune, or 'default' "
                          "for the built-in settings [default: the run's own postprocess.yml, tuned at the end "
                          "of training, with one -m; the study's tuned postprocess.yml with -m STUDY alone; "
                          "the built-in settings otherwise]."),
        click.option("--allow-missing-folds", is_flag=True,
                     help="-m STUDY: predict with the finished folds when some are missing or failed."),
        click.option("--batch-size", default=8, show_default=True,
                     help="Images (with --tile: tiles) per forward pass, one per TTA view."),
        click.option("--tile", default=None, metavar="HxW",
                     help="Predict images larger than HxW pixels (multiples of 32) in overlapping tiles "
                          "[--split val: the run's trainer.valid_tile]."),
        click.option("--overlap", default=0.25, show_default=True, type=float,
                     help="With --tile: share of a tile overlapping its neighbour, in [0, 1)."),
        click.option("--blend", default="gaussian", show_default=True, type=click.Choice(["gaussian", "linear"]),
                     help="With --tile: weights blending overlapping tiles."),
        click.option("--num-workers", default=2, show_default=True, help="Image reading threads."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--amp", default="auto", show_default=True, type=click.Choice(["auto", "off", "bf16", "fp16"]),
                     help="Mixed precision; auto: fp16 on CUDA, off on CPU."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _predictor_and_settings(options: dict, echo: bool = True, split: str | None = None, every_class: bool = False):
    """Build the predictor and post-processing settings from the shared options; say which settings (``echo``).

    ``split="val"``: without ``--tile`` the run's validation split is predicted as the run validated it
    (its ``trainer.valid_tile``). ``every_class``: the models must predict every class between them (a
    submission).
    """
    from sever.inference.predictor import build_predictor, run_settings
    from sever.inference.tiling import valid_tiling

    tiling = _tiling(options)
    if tiling is None and split == "val":
        _open_models(options)
        tiling = valid_tiling(options["models"][0].config)
    predictor = build_predictor(options["models"], options["classifiers"], options["average"],
                                list(options["weights"]) or None, options["tta"], options["device"], options["amp"],
                                tiling, every_class)
    settings, source = run_settings(options["postprocess"], predictor.models, bool(options["classifiers"]))
    if echo:
        click.echo(f"post-processing: {source}")
    return predictor, settings


def _tiling(options: dict):
    """The :class:`~sever.inference.tiling.Tiling` of ``--tile``/``--overlap``/``--blend``, or None without ``--tile``.

    Checked before any model loads, so a bad value stops the command before prediction.
    """
    from sever.inference.tiling import Tiling, parse_tile

    if options["tile"] is None:
        return None
    height, width = parse_tile(options["tile"])
    return Tiling(height, width, options["overlap"], options["blend"], options["batch_size"])


def _single_study(options: dict) -> str | None:
    """The study folder when ``-m`` names one study and nothing else, else None."""
    from sever.utils.study import is_study

    models = options["models"]
    return models[0] if len(models) == 1 and is_study(models[0]) else None


def _study_postprocess(options: dict) -> None:
    """``-m STUDY`` alone without ``--postprocess``: the study's tuned settings, when it has them (said so)."""
    from sever.utils.study import StudyPaths

    study = _single_study(options)
    if study is None or options["postprocess"] is not None:
        return
    tuned = StudyPaths(Path(study)).postprocess
    if tuned.is_file():
        options["postprocess"] = str(tuned)
        click.echo(f"post-processing: {tuned} (the study's, tuned out-of-fold; --postprocess FILE overrides)",
                   err=True)


def _expand_studies(options: dict) -> None:
    """Replace each ``-m STUDY`` by its folds' runs (and their share of its ``-w``)."""
    from sever.inference.checkpoints import expand_studies

    _study_postprocess(options)
    models, weights = expand_studies(options["models"], list(options["weights"]) or None,
                                     options["allow_missing_folds"])
    options["models"], options["weights"] = models, tuple(weights or ())


def _numbers(text: str, kind: type, option: str) -> list:
    """``"0.3,0.4,0.5"`` -> ``[0.3, 0.4, 0.5]`` (of ``kind``)."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {text!r}",
                                 param_hint=option) from None


def _open_models(options: dict) -> None:
    """Read each ``-m`` checkpoint once: later steps learn its task and load its weights from that read."""
    from sever.inference.checkpoints import open_checkpoint

    options["models"] = [open_checkpoint(model) for model in options["models"]]


def _box_runs(options: dict) -> bool:
    """Whether ``-m`` names runs that predict boxes (detectors); then no segmentation-only option may be set."""
    from sever.tasks import task_of

    _open_models(options)
    if not task_of(options["models"][0].config).boxes:
        return False
    used = [flag for flag, key, default in (("--classifier", "classifiers", ()), ("--postprocess", "postprocess", None),
                                            ("--tta", "tta", "none"), ("-w", "weights", ()), ("--average", "average", "mean"),
                                            ("--tile", "tile", None))
            if options[key] not in (default, None)]
    if used:
        raise click.UsageError(f"{', '.join(used)}: segmentation options; detection runs are pooled by "
                               f"non-maximum suppression and filtered with --threshold")
    return True


@cli.command()
@_prediction_options
@click.option("-i", "--images", "image_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of images to predict (with -m); with --from-probs and --visualize, the images to draw on.")
@click.option("--from-probs", "probs_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Instead of -m and -i: probabilities saved by --save-probs; repeat to ensemble them.")
@click.option("-o", "--output", default="submission.csv", show_default=True, type=click.Path(dir_okay=False),
              help="Submission CSV to write.")
@click.option("--format", "fmt", default="current", show_default=True, type=click.Choice(["current", "original"]),
              help="current: ImageId,EncodedPixels,ClassId; original: ImageId_ClassId,EncodedPixels.")
@click.option("--save-probs", type=click.Path(file_okay=False), default=None,
              help="Folder for each image's probabilities (uint8 .npz), for sever tune --probs.")
@click.option("--visualize", type=click.Path(file_okay=False), default=None,
              help="Folder for JPEG overlays of the predictions (from --from-probs: needs -i IMAGE_DIR).")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="With --visualize: Kaggle CSV (either format) whose true masks are outlined on the overlays; "
                   "images it does not list are defect-free.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Detection runs: keep boxes scoring at least this.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine sharing the images (one per GPU; gloo on CPU), merged into one "
                   "submission identical to a single process's; the same as torchrun --standalone "
                   "--nproc_per_node N. Under torchrun (several machines too) its processes share them.")
@click.pass_context
def predict(ctx: click.Context, image_dir: str | None, probs_dirs: tuple[str, ...], output: str, fmt: str,
            save_probs: str | None, visualize: str | None, labels_csv: str | None, threshold: float, nproc: int,
            **options) -> None:
    """Predict a folder of images and write a submission CSV (a detector: a CSV of scored boxes)."""
    from sever.data_loader.datasets import list_images
    from sever.inference import outputs, sharding
    from sever.inference.predictor import class_labels, load_settings
    from sever.utils.distributed import from_environment

    if bool(options["models"]) == bool(probs_dirs):
        raise click.UsageError("give either -m RUN_OR_CHECKPOINT (one or more) with -i IMAGE_DIR, or --from-probs DIR")
    if labels_csv and not visualize:
        raise click.UsageError("--labels draws the true masks on the overlays: give --visualize DIR too")
    if probs_dirs:
        if nproc > 1:
            raise click.UsageError("--nproc shares the images of -m prediction; --from-probs runs in one process")
        if options["classifiers"] or options["tile"]:
            raise click.UsageError("--from-probs takes no --classifier or --tile (saved probabilities hold their output)")
        if bool(image_dir) != bool(visualize):
            raise click.UsageError("with --from-probs, -i IMAGE_DIR is only for --visualize, and --visualize needs it")
        saved = outputs.SavedProbabilities(probs_dirs, options["average"], list(options["weights"]) or None)
        settings = load_settings(options["postprocess"], saved.classes, saved.gated)
        names = class_labels(None, saved.classes)
        overlays = outputs.Overlays(visualize, names, saved.names, labels_csv, image_dir) if visualize else None
        summary = outputs.write_predictions(saved.batches(options["batch_size"]), settings, output, fmt, save_probs,
                                            overlays)
        click.echo(summary.describe(names))
        return
    if image_dir is None:
        raise click.UsageError("-m needs -i IMAGE_DIR")
    list_images(image_dir)  # an empty or missing folder fails before the models load
    if nproc > 1 and not from_environment().enabled:
        ctx.exit(_launch_distributed(ctx, nproc))
    with sharding.process_group(options["device"]) as (context, device):
        options["device"] = device  # cuda:LOCAL_RANK in a multi-GPU job
        _expand_studies(options)
        if _box_runs(options):
            if context.enabled:
                raise click.UsageError("detection runs predict in one process: drop --nproc")
            _predict_boxes(options, image_dir, output, save_probs, visualize, labels_csv, threshold)
            return
        predictor, settings = _predictor_and_settings(options, echo=context.is_main, every_class=True)
        summary = sharding.predict_sharded(context, predictor, settings, image_dir, output, fmt, save_probs, visualize,
                                           labels_csv, options["batch_size"], options["num_workers"])
    if summary is not None:
        click.echo(summary.describe(predictor.class_names))


def _predict_boxes(options: dict, image_dir: str, output: str, save_probs: str | None, visualize: str | None,
                   labels_csv: str | None, threshold: float) -> None:
    """``sever predict`` with detection runs: a CSV of scored boxes."""
    from sever.detection.predict import predict_to_csv
    from sever.utils.device import resolve_device

    if save_probs or labels_csv:
        raise click.UsageError("--save-probs and --labels are for segmentation runs, not detectors")
    images, boxes = predict_to_csv(options["models"], image_dir, output, threshold,
                                   resolve_device(options["device"]), visualize)
    click.echo(f"wrote {boxes} boxes scoring >= {threshold} in {images} images to {output}"
               + (f"; drawings in {visualize}" if visualize else ""))


@cli.command("pseudo-label")
@_prediction_options
@click.option("-i", "--images", "image_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of unlabelled images to predict.")
@click.option("-o", "--output", default="pseudo.csv", show_default=True, type=click.Path(dir_okay=False),
              help="Pseudo-label CSV to write (ImageId_ClassId,EncodedPixels; the confident images only): "
                   "data_loader.args.pseudo_csv, with pseudo_images the -i folder.")
@click.option("--low", default=0.2, show_default=True, type=float,
              help="Lower end of the uncertain probability band.")
@click.option("--high", default=0.8, show_default=True, type=float,
              help="Upper end of the uncertain probability band.")
@click.option("--max-uncertain", default=0.02, show_default=True, type=float,
              help="Keep an image only when, for every class, at most this share of its pixels has a probability "
                   "inside (low, high).")
@click.option("--min-peak", default=None, type=float,
              help="Also drop an image when a class's largest probability lies between --low and this "
                   "(a faint blob) [default: no such check].")
def pseudo_label(image_dir: str, output: str, low: float, high: float, max_uncertain: float,
                 min_peak: float | None, **options) -> None:
    """Predict unlabelled images and write the confident predictions as pseudo-labels."""
    from sever.inference.pseudo_label import ConfidenceRule, pseudo_label as write_pseudo_labels

    rule = ConfidenceRule(low, high, max_uncertain, min_peak).check(lambda name: "--" + name.replace("_", "-"))
    if not options["models"]:
        raise click.UsageError("give -m RUN_OR_STUDY (one or more)")
    from sever.data_loader.datasets import list_images

    list_images(image_dir)  # an empty or missing folder fails before the models load
    _expand_studies(options)
    predictor, settings = _predictor_and_settings(options)
    result = write_pseudo_labels(predictor, settings, image_dir, output, rule, options["batch_size"],
                                 options["num_workers"])
    click.echo(result.describe(predictor.class_names))
    click.echo(f"train with them: data_loader.args.pseudo_csv: {Path(output).resolve()}, "
               f"pseudo_images: {Path(image_dir).resolve()}")


@cli.command()
@_prediction_options
@click.option("--split", type=click.Choice(["val"]), default=None,
              help="With -m: score the run's own validation split.")
@click.option("--pred", "pred_csv", type=click.Path(dir_okay=False), default=None,
              help="Submission CSV to score (either Kaggle format).")
@click.option("--truth", "truth_csv", type=click.Path(dir_okay=False), default=None,
              help="Labelled CSV to score against (either Kaggle format).")
@click.option("--images", "image_dir", type=click.Path(file_okay=False), default=None,
              help="With --pred: the images (image list and sizes).")
@click.option("--size", default=None, help="With --pred and no --images: every image's HEIGHTxWIDTH, e.g. 256x1600.")
@click.option("--classes", default=4, show_default=True, help="With --pred: number of classes.")
@click.option("--annotations", "annotation_dir", type=click.Path(file_okay=False), default=None,
              help="Boxes (COCO mAP): Pascal VOC XML folder of the --images; with a detection run, or a "
                   "segmentation run and --boxes.")
@click.option("--boxes", "as_boxes", is_flag=True,
              help="Score a segmentation run as a detector: its masks' components become scored boxes, "
                   "truth from --annotations, --truth CSV or --masks.")
@click.option("--masks", "mask_dir", type=click.Path(file_okay=False), default=None,
              help="With --boxes: truth as a mask folder.")
@click.option("--oof", is_flag=True, help="With -m STUDY: score the folds' out-of-fold probabilities per class.")
def evaluate(split: str | None, pred_csv: str | None, truth_csv: str | None, image_dir: str | None, size: str | None,
             classes: int, annotation_dir: str | None, as_boxes: bool, mask_dir: str | None, oof: bool,
             **options) -> None:
    """Score a submission against labels, a run on its validation split or a study out-of-fold."""
    from sever.inference import evaluate as scoring

    if bool(options["models"]) == bool(pred_csv):
        raise click.UsageError("give either --pred CSV --truth CSV, or -m RUN --split val")
    if oof:
        _evaluate_oof(options)
        return
    _expand_studies(options)
    if options["models"] and (as_boxes or _box_runs(options)):
        _evaluate_boxes(options, image_dir, annotation_dir, truth_csv, mask_dir, as_boxes)
        return
    if pred_csv:
        if not truth_csv:
            raise click.UsageError("--pred needs --truth LABELS_CSV")
        result = scoring.evaluate_csv(pred_csv, truth_csv, classes, image_dir,
                                      scoring.parse_size(size) if size else None)
    else:
        if split is None:
            raise click.UsageError("-m needs --split val (or score a submission with --pred)")
        predictor, settings = _predictor_and_settings(options, split=split)
        paths, annotations = scoring.predictor_split(predictor)
        result = scoring.evaluate_predictions(predictor, settings, paths, annotations,
                                              options["batch_size"], options["num_workers"])
    click.echo(result.table())


def _evaluate_oof(options: dict) -> None:
    """``sever evaluate -m STUDY --oof``: the out-of-fold score per class."""
    from sever import study
    from sever.inference.evaluate import evaluate_saved
    from sever.inference.predictor import class_labels, load_settings

    path = _single_study(options)
    if path is None:
        raise click.UsageError("--oof scores one -m STUDY_DIR (made by sever train --folds K)")
    if options["classifiers"]:
        raise click.UsageError("--oof: the out-of-fold probabilities hold no classifier's; drop --classifier")
    _study_postprocess(options)
    sources = study.oof_sources(path)
    classes = sources[0][0].classes
    settings = load_settings(options["postprocess"], classes, False)
    result = evaluate_saved(sources, settings, class_labels(study.class_names(path), classes), options["batch_size"])
    click.echo(result.table())


def _evaluate_boxes(options: dict, image_dir: str | None, annotation_dir: str | None, truth_csv: str | None,
                    mask_dir: str | None, as_boxes: bool) -> None:
    """``sever evaluate`` with COCO box metrics: a detector, or a segmentation run with ``--boxes``."""
    from sever.detection.from_masks import evaluate_segmentation_as_detector
    from sever.detection.metric import map_table
    from sever.detection.predict import evaluate_detector
    from sever.utils.device import resolve_device

    if image_dir is None:
        raise click.UsageError("box metrics need --images DIR")
    device = resolve_device(options["device"])
    _open_models(options)
    class_names = options["models"][0].config["class_names"]
    if not as_boxes:
        if annotation_dir is None:
            raise click.UsageError("a detection run is scored against --annotations VOC_XML_DIR")
        results = evaluate_detector(options["models"], image_dir, annotation_dir, device)
    else:
        if len(options["models"]) > 1:
            raise click.UsageError("--boxes scores one segmentation run at a time")
        results = evaluate_segmentation_as_detector(options["models"][0], image_dir, annotation_dir=annotation_dir,
                                                    mask_dir=mask_dir, csv=truth_csv, device=device)
    click.echo(map_table(results, class_names))


@cli.command()
@_prediction_options
@click.option("--split", type=click.Choice(["val"]), default=None, help="With -m: tune on the run's validation split.")
@click.option("--probs", "probs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of probabilities saved by sever predict --save-probs.")
@click.option("--truth", "truth_csv", type=click.Path(dir_okay=False), default=None,
              help="With --probs: the labels of those images.")
@click.option("-o", "--output", default="postprocess.yml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the best settings (YAML for sever predict --postprocess); "
                   "-m STUDY: the study's postprocess.yml.")
@click.option("--thresholds", default="0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7", show_default=True,
              help="Probability thresholds to try.")
@click.option("--min-pixels", default="0,200,400,600,800,1000,1500,2000,3000,4000", show_default=True,
              help="Minimum defect pixel counts to try.")
@click.option("--c-factors", default="1,2,5,10,20", show_default=True, help="Classifier c_factors to try.")
def tune(split: str | None, probs_dir: str | None, truth_csv: str | None, output: str, thresholds: str,
         min_pixels: str, c_factors: str, **options) -> None:
    """Search per-class thresholds and minimum pixel counts on labelled images."""
    from sever.inference import tune as tuning

    grid = (_numbers(thresholds, float, "--thresholds"), _numbers(min_pixels, int, "--min-pixels"),
            _numbers(c_factors, float, "--c-factors"))
    if bool(options["models"]) == bool(probs_dir):
        raise click.UsageError("give either -m RUN --split val, or --probs DIR --truth CSV")
    study_dir = _single_study(options) if options["models"] else None
    if study_dir is not None:
        from sever import study
        from sever.utils.study import StudyPaths

        if options["classifiers"]:
            raise click.UsageError("-m STUDY tunes on out-of-fold probabilities, which hold no classifier's; "
                                   "drop --classifier")
        stats = tuning.statistics_from_saved(study.oof_sources(study_dir), options["postprocess"], grid[0],
                                             study.class_names(study_dir), options["batch_size"])
        source = f"the out-of-fold probabilities of {study_dir}"
        if click.get_current_context().get_parameter_source("output") is click.core.ParameterSource.DEFAULT:
            output = str(StudyPaths(Path(study_dir)).postprocess)
    elif probs_dir:
        if not truth_csv:
            raise click.UsageError("--probs needs --truth LABELS_CSV")
        if options["tile"]:
            raise click.UsageError("--tile is for -m: --probs are already predicted")
        stats = tuning.statistics_from_files(probs_dir, truth_csv, options["postprocess"], grid[0],
                                             batch_size=options["batch_size"])
        source = probs_dir
    else:
        if split is None:
            raise click.UsageError("-m needs --split val (or tune on saved probabilities with --probs)")
        _expand_studies(options)
        predictor, settings = _predictor_and_settings(options, split=split)
        stats = tuning.statistics_from_run(predictor, settings, grid[0], options["batch_size"],
                                           options["num_workers"])
        source = f"the validation split of {predictor.models[0].source}"
    result = tuning.search_widening(stats, grid[1], grid[2])
    click.echo(result.tables())
    click.echo("")
    click.echo(result.summary())
    click.echo(f"wrote {result.write(output, source)}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--max-images", default=200, show_default=True, type=click.IntRange(min=1),
              help="Validation images predicted on the CPU for the scores, threshold curves and mosaics "
                   "(spread evenly over the split).")
@click.option("--examples", default=4, show_default=True, type=click.IntRange(min=1),
              help="Best and worst validation images shown in the mosaics.")
@click.option("--postprocess", type=click.Path(dir_okay=False), default=None,
              help="Post-processing YAML to score with [default: RUN/postprocess.yml when there, else the defaults].")
def report(run_dir: str, max_images: int, examples: int, postprocess: str | None) -> None:
    """Write RUN/report/: training curves, validation scores and examples as figures and an offline index.html."""
    from sever.report import write_report

    written = write_report(run_dir, max_images=max_images, examples=examples, postprocess=postprocess)
    for line in written.missing:
        click.echo(f"missing: {line}")
    click.echo(f"wrote {written.index}")


@cli.command()
@click.option("-r", "--run", "run_dir", required=True, type=click.Path(),
              help="Run folder, e.g. saved/sever-unet-b5/1026_140000.")
@click.option("-e", "--epoch", "epochs", multiple=True, type=int,
              help="Send checkpoint-epoch{N}.pth of this epoch (repeatable).")
@click.option("--best", is_flag=True, help="Send model_best.pth.")
@click.option("--weights-only", is_flag=True,
              help="Send only what inference needs (weights, EMA weights, config): no optimiser state.")
@click.option("--dataset-id", default=None, metavar="USER/SLUG",
              help="Kaggle dataset to create or add a version to [default: your user name from the Kaggle "
                   "credentials / sever-<name>-<run stamp>].")
@click.option("--title", default=None, help="Dataset title, 6-50 characters, used on creation "
                                            "[default: sever-<name> <run stamp>].")
@click.option("--license", "license_name", default="CC0-1.0", show_default=True, help="Kaggle licence name.")
@click.option("-m", "--message", default=None, help="Notes for a new version [default: the files sent].")
@click.option("--staging", type=click.Path(file_okay=False), default=None,
              help="Empty folder to stage the files in, kept afterwards [default: a temporary folder].")
@click.option("--dry-run", is_flag=True, help="Stage and show what would be sent, then stop.")
def upload(run_dir: str, epochs: tuple[int, ...], best: bool, weights_only: bool, dataset_id: str | None,
           title: str | None, license_name: str, message: str | None, staging: str | None, dry_run: bool) -> None:
    """Publish chosen checkpoints of a run as a Kaggle dataset (for offline Kaggle kernels)."""
    import shlex

    from sever import upload as kaggle_upload

    plan = kaggle_upload.plan_upload(run_dir, epochs, best, dataset_id=dataset_id, title=title,
                                     license_name=license_name, weights_only=weights_only, staging=staging,
                                     sending=not dry_run)
    message = message or kaggle_upload.default_message(plan)
    action = None if dry_run else kaggle_upload.remote_action(plan.dataset_id)
    with kaggle_upload.staging_folder(plan, keep=dry_run) as folder:
        staged = kaggle_upload.stage(plan, folder)
        click.echo(kaggle_upload.describe(staged))
        if dry_run:
            commands = kaggle_upload.kaggle_commands(staged, message)
            click.echo(f"dry run: nothing sent; the staged files stay in {folder}. Sending runs\n"
                       f"  kaggle {shlex.join(commands['create'])}\n"
                       f"or, when {plan.dataset_id} exists,\n  kaggle {shlex.join(commands['version'])}")
            return
        published = kaggle_upload.publish(staged, action, message)
    click.echo(published.output)
    click.echo(f"{'created' if published.action == 'create' else 'new version of'} "
               f"https://www.kaggle.com/datasets/{plan.dataset_id}")


@cli.command()
@click.option("--from", "source", required=True, type=click.Choice(["kaggle", "mask-folder"]),
              help="Format to read.")
@click.option("--to", "target", required=True, type=click.Choice(["kaggle", "mask-folder"]),
              help="Format to write.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Image folder (both formats).")
@click.option("--masks", required=True, type=click.Path(file_okay=False),
              help="Mask folder: read with --from mask-folder, written with --to mask-folder.")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="Kaggle CSV: read with --from kaggle (either format), written with --to kaggle.")
@click.option("--classes", required=True, type=click.IntRange(min=1), help="Number of defect classes.")
@click.option("--class-names", default=None, metavar="A,B,...",
              help="Comma-separated class names: the per-class mask folder names (default 1..classes).")
@click.option("--layout", default="labels", show_default=True, type=click.Choice(["labels", "per-class"]),
              help="Mask folder written: one label map per image, or one binary mask per class.")
@click.option("--csv-format", default="train", show_default=True,
              type=click.Choice(["train", "original", "submission"]),
              help="CSV written: ImageId,ClassId,EncodedPixels (train), ImageId_ClassId (original), ...")
def convert(source: str, target: str, images: str, masks: str, csv_path: str, classes: int,
            class_names: str | None, layout: str, csv_format: str) -> None:
    """Convert masks between a Kaggle CSV and a mask folder (images/ + masks/)."""
    from sever.data_loader.convert import csv_to_mask_folder, mask_folder_to_csv

    if source == target:
        raise click.UsageError("--from and --to are the same format: nothing to convert")
    names = [name.strip() for name in class_names.split(",")] if class_names else None
    if names is not None and len(names) != classes:
        raise click.BadParameter(f"{len(names)} names for {classes} classes", param_hint="--class-names")
    if source == "mask-folder":
        annotations = mask_folder_to_csv(images, masks, csv_path, classes, names, csv_format)
        click.echo(f"wrote {int(annotations.has_defect().sum())} masks of {len(annotations)} images to {csv_path}")
    else:
        annotations = csv_to_mask_folder(images, csv_path, masks, classes, names, layout)
        click.echo(f"wrote {layout} masks of {len(annotations)} images to {masks}")

@cli.command()
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint file, or run folder (its model_best.pth, else its newest checkpoint).")
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "torchscript"]), help="Export format.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--height", default=256, show_default=True, type=click.IntRange(min=1),
              help="Height of the example input, pixels.")
@click.option("--width", default=1600, show_default=True, type=click.IntRange(min=1),
              help="Width of the example input, pixels.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=1), help="ONNX opset version.")
@click.option("--dynamic", is_flag=True,
              help="ONNX: accept any height and width, not only the example's (the batch size is always free).")
@click.option("--atol", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest difference from PyTorch's probabilities (sigmoid of the logits) accepted.")
def export(checkpoint: str, fmt: str, out: str, height: int, width: int, opset: int, dynamic: bool,
           atol: float) -> None:
    """Export a trained model to ONNX or TorchScript and check it against PyTorch."""
    from sever.export import export_model

    result = export_model(checkpoint, fmt, out, height=height, width=width, opset=opset, dynamic=dynamic, atol=atol)
    shapes = ", ".join("x".join(map(str, shape)) for shape in result.checked_shapes)
    click.echo(f"exported the {result.weights} weights of {result.checkpoint} to {result.path} ({fmt})")
    click.echo(f"checked against PyTorch on random inputs {shapes}: probabilities differ by up to "
               f"{result.max_prob_diff:.2e} (--atol {atol:g}), logits by up to {result.max_abs_diff:.2e}")

def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """An ``HxW`` option as ``(height, width)`` pixels, or None when not given."""
    if value is None:
        return None
    from sever.inference.evaluate import parse_size

    try:
        return parse_size(value)
    except ConfigError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH in pixels, e.g. 256x1600, got {value!r}") from None


@cli.command("check-data")
@click.argument("data_dir", type=click.Path())
@click.option("--csv", default="train.csv", show_default=True, help="Masks CSV (either Kaggle format), relative to DATA_DIR.")
@click.option("--images", default="train_images", show_default=True, help="Image folder, relative to DATA_DIR.")
@click.option("--classes", default=4, show_default=True, type=click.IntRange(min=1), help="Number of defect classes.")
@click.option("--full", is_flag=True, help="Also decode every image (slower; finds corrupt data inside files).")
@click.option("--crop", default=None, metavar="HxW", callback=_size_option,
              help="Training crop: say how many images are smaller than it (training pads them).")
@click.option("--tile", default=None, metavar="HxW", callback=_size_option,
              help="Prediction tile: say how many images are larger than it (prediction tiles them).")
@click.pass_context
def check_data(ctx: click.Context, data_dir: str, csv: str, images: str, classes: int, full: bool,
               crop: tuple[int, int] | None, tile: tuple[int, int] | None) -> None:
    """Check every image and mask of a dataset without training; exit 1 if anything is wrong."""
    from sever.data_loader.checks import check_dataset

    report = check_dataset(data_dir, csv=csv, images=images, classes=classes, full=full)
    click.echo(f"{data_dir}: {images}/ and {csv} ({'full' if full else 'quick'} check)")
    for line in report.summary(crop, tile):
        click.echo(line)
    if report.problems:
        click.echo(f"Error: {len(report.problems)} problem(s) found in {data_dir}", err=True)
        ctx.exit(EXIT_USER_ERROR)


def _plan_options(command):
    """The options ``sever plan`` and ``sever auto`` share: where the data is, the device, the budget."""
    options = [
        click.argument("data_dir", type=click.Path()),
        click.option("--format", "fmt", type=click.Choice(["kaggle", "mask_folder"]), default=None,
                     help="Label format [default: kaggle when the CSV is there, else mask_folder]."),
        click.option("--images", default="train_images", show_default=True, help="Image folder, relative to DATA_DIR."),
        click.option("--csv", default="train.csv", show_default=True, help="Masks CSV (kaggle), relative to DATA_DIR."),
        click.option("--masks", default="train_masks", show_default=True,
                     help="Mask folder (mask_folder), relative to DATA_DIR."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="The device the plan is measured on and trains on."),
        click.option("--name", default=None, help="Experiment name [default: the file name / DATA_DIR's name]."),
        click.option("--seed", default=42, show_default=True, type=int,
                     help="Random seed of the planned experiment (its split, weights and batches)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _layout(fmt: str | None, images: str, csv: str, masks: str):
    from sever.planning.fingerprint import Layout

    return Layout(fmt or "kaggle", images, csv, masks)


@cli.command()
@_plan_options
@click.option("--time", "time_budget", default="1h", show_default=True,
              help="Time the whole study may take (e.g. 2h30m): folds, epochs and the model are sized to it.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Experiment file to write (fingerprint.json goes beside it), e.g. experiments/mine.yml.")
def plan(data_dir: str, fmt: str | None, images: str, csv: str, masks: str, device: str, name: str | None,
         seed: int, time_budget: str, output: str) -> None:
    """Read a dataset's fingerprint and write an experiment planned from it, each value with its reason."""
    from sever.planning.auto import plan_dataset

    planned = plan_dataset(data_dir, time_budget, name or Path(output).stem, _layout(fmt, images, csv, masks), fmt,
                           device, seed=seed)
    for line in planned.fingerprint.table():
        click.echo(line)
    for note in planned.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {planned.write(output)} and {Path(output).parent / 'fingerprint.json'}")
    folds = f" --folds {planned.folds}" if planned.folds > 1 else ""
    click.echo(f"next: sever train -c {output}{folds}   (or sever auto {data_dir} --time {time_budget})")


@cli.command()
@_plan_options
@click.option("--time", "time_budget", required=True, help="Time the whole run may take, e.g. 2h.")
@click.option("--unlabelled", type=click.Path(file_okay=False), default=None,
              help="Folder of unlabelled images for a pseudo-label round.")
@click.option("-o", "--out", "out_dir", default="saved/auto", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the experiment file, the fingerprint and the study.")
def auto(data_dir: str, fmt: str | None, images: str, csv: str, masks: str, device: str, name: str | None,
         seed: int, time_budget: str, unlabelled: str | None, out_dir: str) -> None:
    """Plan, train a K-fold study within --time, tune it out-of-fold; ends with the command that predicts."""
    from sever.planning.auto import plan_dataset, run_auto

    planned = plan_dataset(data_dir, time_budget, name or Path(data_dir).resolve().name,
                           _layout(fmt, images, csv, masks), fmt, device, unlabelled, seed)
    for line in planned.fingerprint.table():
        click.echo(line)
    for note in planned.notes:
        click.echo(f"note: {note}")
    result = run_auto(planned, out_dir)
    click.echo(f"experiment: {result.experiment}")
    click.echo(result.tuning)
    for report in result.reports:
        click.echo(f"report: {report}")
    click.echo(f"{result.kind} saved in {result.saved}")
    click.echo(f"next: {result.predict_command}")
