"""``sever predict``, ``pseudo-label``, ``evaluate`` and ``tune``: the commands that run models over images."""

from __future__ import annotations

from pathlib import Path

import click

from sever.cli.common import launch_distributed


def _prediction_options(command):
    """The options shared by ``predict``, ``evaluate -m`` and ``tune -m``: models and how they predict."""
    options = [
        click.option("-m", "--model", "models", multiple=True, type=click.Path(),
                     help="Run folder (its best checkpoint), checkpoint file or study folder (its final model "
                          "when it has one, else its folds' ensemble); repeat for an ensemble."),
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


def _predict_options(options: dict) -> dict:
    """The shared options as keyword arguments of :meth:`sever.api.model.Model.prepare`."""
    return {"tta": options["tta"], "tile": options["tile"], "overlap": options["overlap"], "blend": options["blend"],
            "batch_size": options["batch_size"], "device": options["device"], "amp": options["amp"],
            "postprocess": options["postprocess"], "classifier": options["classifiers"]}


def _check_tiling(options: dict) -> None:
    """``--tile``/``--overlap``/``--blend`` checked before any model loads, so a bad value stops the command at once."""
    from sever.api.model import tiling_of

    tiling_of(options["tile"], options["overlap"], options["blend"], options["batch_size"])


def _single_study(options: dict) -> str | None:
    """The study folder when ``-m`` names one study and nothing else, else None."""
    from sever.study.folder import is_study

    models = options["models"]
    return models[0] if len(models) == 1 and is_study(models[0]) else None


def _study_postprocess(options: dict) -> None:
    """``-m STUDY`` alone without ``--postprocess``: the study's tuned settings, when it has them (said so)."""
    from sever.study.folder import StudyPaths

    study = _single_study(options)
    if study is None or options["postprocess"] is not None:
        return
    tuned = StudyPaths(Path(study)).postprocess
    if tuned.is_file():
        options["postprocess"] = str(tuned)
        click.echo(f"post-processing: {tuned} (the study's, tuned out-of-fold; --postprocess FILE overrides)",
                   err=True)


def _load_model(options: dict):
    """``sever.load`` of the ``-m`` models (studies expanded into their folds, each checkpoint read once).

    ``options["models"]`` and ``options["weights"]`` become the expanded, opened checkpoints and their
    weights, for the detection and ``--oof`` paths that read them.
    """
    from sever.api.model import load

    _check_tiling(options)
    _study_postprocess(options)
    model = load(options["models"], list(options["weights"]) or None, options["average"],
                 options["allow_missing_folds"])
    options["models"], options["weights"] = model.open_checkpoints(), tuple(model.source.weights or ())
    return model


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


@click.command()
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
    from sever.inference import outputs
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
        ctx.exit(launch_distributed(ctx, nproc))
    model = _load_model(options)
    if _box_runs(options):
        if from_environment().enabled:
            raise click.UsageError("detection runs predict in one process: drop --nproc")
        _predict_boxes(options, image_dir, output, save_probs, visualize, labels_csv, threshold)
        return
    prediction = model.predict_folder(image_dir, output, fmt, save_probs, visualize, labels_csv,
                                      num_workers=options["num_workers"], **_predict_options(options))
    if prediction.summary is not None:  # rank 0 alone speaks
        click.echo(f"post-processing: {prediction.postprocessing}")
        click.echo(prediction.describe())


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


@click.command("pseudo-label")
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
    prepared = _load_model(options).prepare(**_predict_options(options))
    click.echo(f"post-processing: {prepared.postprocessing}")
    result = write_pseudo_labels(prepared.predictor, prepared.settings, image_dir, output, rule,
                                 options["batch_size"], options["num_workers"])
    click.echo(result.describe(prepared.predictor.class_names))
    click.echo(f"train with them: data_loader.args.pseudo_csv: {Path(output).resolve()}, "
               f"pseudo_images: {Path(image_dir).resolve()}")


@click.command()
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
    model = _load_model(options) if options["models"] else None
    if model is not None and (as_boxes or _box_runs(options)):
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
        from sever.api.scoring import evaluate as evaluate_model

        result = evaluate_model(model, split, num_workers=options["num_workers"], **_predict_options(options))
        click.echo(f"post-processing: {result.postprocessing}")
    click.echo(result.table())


def _evaluate_oof(options: dict) -> None:
    """``sever evaluate -m STUDY --oof``: the out-of-fold score per class."""
    from sever.inference.evaluate import evaluate_saved
    from sever.inference.predictor import class_labels, load_settings
    from sever.study import tuning as study

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


@click.command()
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
    if probs_dir:
        if not truth_csv:
            raise click.UsageError("--probs needs --truth LABELS_CSV")
        if options["tile"]:
            raise click.UsageError("--tile is for -m: --probs are already predicted")
        stats = tuning.statistics_from_files(probs_dir, truth_csv, options["postprocess"], grid[0],
                                             batch_size=options["batch_size"])
        result = tuning.search_widening(stats, grid[1], grid[2])
        _print_tuning(result, result.write(output, probs_dir))
        return
    if _single_study(options):
        if options["classifiers"]:
            raise click.UsageError("-m STUDY tunes on out-of-fold probabilities, which hold no classifier's; "
                                   "drop --classifier")
    elif split is None:
        raise click.UsageError("-m needs --split val (or tune on saved probabilities with --probs)")
    from sever.api.model import load
    from sever.api.scoring import tune as tune_model

    _check_tiling(options)
    study_dir = _single_study(options)
    model = study_dir or load(options["models"], list(options["weights"]) or None, options["average"],
                              options["allow_missing_folds"])
    default_output = click.get_current_context().get_parameter_source("output") is click.core.ParameterSource.DEFAULT
    tuned = tune_model(model, split, None if default_output else output, *grid, num_workers=options["num_workers"],
                       **_predict_options(options))
    if tuned.postprocessing:
        click.echo(f"post-processing: {tuned.postprocessing}")
    _print_tuning(tuned.result, tuned.path)


def _print_tuning(result, written: Path) -> None:
    """What ``sever tune`` prints: every candidate's table, the summary, the file written."""
    click.echo(result.tables())
    click.echo("")
    click.echo(result.summary())
    click.echo(f"wrote {written}")
