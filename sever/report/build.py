"""Write ``report/`` inside a run folder: figures and an ``index.html`` that opens offline.

The page uses only relative image paths and inline CSS (no script, no external
file or font); the gallery beside it (``gallery.html``) has one small inline script. Whatever cannot be drawn (no validation yet, truncated events,
data no longer on disk, a classification run) is said on the page in a
"missing" box; only a folder that is not a run is an error.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sever.exceptions import DataError, Interrupted, SeverError
from sever.inference.checkpoints import run_config
from sever.utils.run import RunPaths
from sever.utils.time_budget import Deadline, items_fitting

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
TUNED_SETTINGS = "postprocess.yml"  # where the report looks for `sever tune` output: RUN/postprocess.yml
DEFAULT_MAX_IMAGES = 200
DEFAULT_EXAMPLES = 4
BUDGET_CAP = "time budget"  # ImageCap.option of a cap the run's deadline lowered
RANKING = ("Images are ranked by the mean Dice over the classes present in the truth or the prediction "
           "(a class absent from both is left out: it is right by default); images with no class in either are "
           "not ranked.")


@dataclass(frozen=True)
class ImageCap:
    """How many validation images are predicted for the scores, and the setting that chose it (for the page).

    With a ``deadline`` (a run's, after training) the images are also fitted to the time left at
    ``per_image`` measured seconds each (:meth:`within`).
    """

    images: int = 200
    option: str = "max_images"
    deadline: Deadline | None = None
    per_image: float = 0.0

    def describe(self) -> str:
        """What capped the images, for the page: ``trainer.report_images 16``."""
        if self.option == BUDGET_CAP:
            return f"the time left in the run's budget, at {self.per_image:.2f} s an image"
        return f"{self.option} {self.images}"

    def within(self, reserve: float) -> ImageCap:
        """This cap, lowered to the images whose predictions end ``reserve`` seconds before the deadline."""
        if self.deadline is None or self.per_image <= 0:
            return self
        fitting = items_fitting(self.deadline.left() - reserve, self.per_image, self.images)
        if fitting >= self.images:
            return self
        return ImageCap(fitting, BUDGET_CAP, per_image=self.per_image)


@dataclass
class Section:
    """One heading of the page: a text paragraph, images (relative paths) and an optional table."""

    title: str
    text: str = ""
    images: list[str] = field(default_factory=list)
    table: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (relative href, text)


@dataclass
class Report:
    """What was written: the page, its sections and what is missing from it."""

    index: Path
    sections: list[Section]
    missing: list[str]


def check_run_folder(run_dir: str | Path) -> RunPaths:
    """The run at ``run_dir``.

    Raises:
        DataError: the folder does not exist or holds none of a run's files.
    """
    run = RunPaths(Path(run_dir))
    if not run.root.is_dir():
        raise DataError(f"run folder not found: {run.root}")
    if not (run.config.is_file() or run.checkpoints.is_dir() or run.log_file.is_file()):
        raise DataError(f"{run.root} is neither a sever run folder (no config.yaml, checkpoints/ or train.log) nor "
                        "a study folder (no study.yml); give a folder like saved/<name>/<MMDD_HHMMSS>")
    return run


def _curves(run: RunPaths, folder: Path, missing: list[str]) -> list[Section]:
    from sever.report import figures
    from sever.report.history import read_history

    history = read_history(run)
    missing += history.notes
    if not history.values:
        return []
    labels = run_class_labels(run.root)
    drawn = [("Losses", figures.loss_curves(history, folder)),
             ("Dice", figures.dice_curves(history, folder, labels)),
             ("Other scores", figures.score_curves(history, folder, labels)),
             ("Learning rate", figures.learning_rate(history, folder))]
    return [Section(title, f"From {history.source}, one value per epoch.", [image]) for title, image in drawn if image]


def run_class_labels(run_dir: Path) -> list[str]:
    """The labels of a run's output classes (``"1 pits"``) from its config.yaml; empty when it cannot be read."""
    from sever.utils.config import load_config, output_classes

    try:
        return output_classes(load_config(RunPaths(Path(run_dir)).config)).labels()
    except (SeverError, OSError, KeyError, TypeError, ValueError):
        return []


def _validation(run: RunPaths, folder: Path, cap: ImageCap, examples: int, postprocess: Path | None,
                missing: list[str]) -> list[Section]:
    from sever.report import figures
    from sever.report.gallery import GALLERY_DIR, write_gallery
    from sever.report.validation import score_validation

    try:
        task = run_config(run.root)["task"]
    except SeverError as exc:
        missing.append(f"validation predictions: no usable checkpoint ({exc}).")
        return []
    if task != "segmentation":
        missing.append(f"validation predictions: drawn for segmentation runs only (this is a {task} run).")
        return []
    if cap.images == 0:
        missing.append(f"validation predictions: none fitted in {cap.describe()}; draw them with "
                       f"sever report {run.root}")
        return []
    settings_note = _settings_note(run, postprocess, missing)
    try:
        scores = score_validation(run.root, cap.images, examples, postprocess or _tuned_settings(run),
                                  gallery_dir=folder / GALLERY_DIR)
    except Interrupted:
        raise  # a stop request is not a missing section
    except SeverError as exc:
        missing.append(f"validation predictions: {exc}")
        return []
    scored = (f"{scores.scored} of the {scores.total} validation images were predicted on the CPU with "
              f"{scores.checkpoint.name}" + (f" (capped by {cap.describe()}, spread evenly over the split)"
                                             if scores.scored < scores.total else "") + ".")
    sections = [
        Section("Validation scores", f"{scored} {settings_note} IoU beside Dice: the mean over the images of "
                                      "each image's IoU (1 where both are empty).",
                [figures.class_scores(scores, folder)], _confusion_table(scores)),
        Section("Precision and recall", "Per class, from the predicted probabilities of the scored images. "
                "Image level: a class is present when at least max(1, min_pixels) of its pixels are above the "
                "threshold; the curve sweeps the threshold with min_pixels as set. Pixel level: every pixel "
                "is a decision at thresholds k/256. The star is the post-processing in use, measured on its "
                "masks (one class per pixel and components included, so it may lie off the curve). "
                + settings_note, [figures.precision_recall(scores, folder)]),
        Section("Dice against threshold", "Each class's mean Dice on the predicted images for every probability "
                                          "threshold, as sever tune scores them. " + settings_note,
                [image] if (image := figures.threshold_curves(scores, folder)) else []),
        Section("Data", f"Image sizes and true defect sizes of the {scores.scored} predicted validation images.",
                [figures.distributions(scores, folder)]),
    ]
    gallery = write_gallery(scores.gallery, scores.evaluation.class_names, folder,
                            f"{scored} {settings_note}")
    sections.append(Section("Gallery", f"Every one of the {scores.scored} predicted validation images, filtered by "
                                       "class and error kind, sorted by Dice, page by page.",
                            links=[(gallery.name, "open the gallery")]))
    if scores.thresholds is None:
        missing.append("Dice against threshold: the settings use component_domination, which couples the classes.")
    for title, chosen, name in (("Best validation images", scores.best, "best.jpg"),
                                ("Worst validation images", scores.worst, "worst.jpg")):
        sections.append(Section(title, "Truth outlined on the left, prediction on the right, in class colours. "
                                       f"{RANKING} {'Highest' if name == 'best.jpg' else 'Lowest'} first.",
                                [image] if (image := figures.mosaic(chosen, folder, name)) else []))
    return sections


def learning_section(verdicts, where: str) -> Section | None:
    """The "Was each class learned?" section from :mod:`sever.inference.learning` verdicts (None: not tuned).

    ``where``: the images the tuning scored (``"validation split"``, ``"out-of-fold images"``).
    """
    from sever.inference.learning import LEARNED_GAIN, learning_lines

    if verdicts is None:
        return None
    missed = [v.name for v in verdicts if v.shown and not v.learned]
    text = (f"Per class, on the {where}: the tuned mean Dice against what predicting nothing scores on the same "
            f"images, and the gain (tuned - nothing) / (1 - nothing): Dice per image showing the class, false alarms "
            f"subtracted. A class is learned from a gain of {LEARNED_GAIN} on, with the tuned post-processing keeping "
            "a mask on some image; otherwise sever predict will (almost) never predict it. ")
    text += (f"NOT LEARNED: {', '.join(missed)}. " + learning_lines(verdicts, where)[-1] if missed
             else "Every class shown in these images was learned.")
    head = "".join(f"<th>{h}</th>" for h in ("class", "tuned Dice", "predicting nothing", "gain",
                                             "images keeping a mask", "verdict"))
    rows = []
    for v in verdicts:
        verdict = ("not judged" if not v.shown else "learned" if v.learned
                   else "NOT learned, switched off" if v.switched_off else "NOT learned")
        cells = [html.escape(v.name), f"{v.tuned:.4f}", f"{v.empty:.4f}", f"{v.gain:.3f}",
                 "-" if v.survivors is None else v.survivors, verdict]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return Section("Was each class learned?", text, table=f"<table><tr>{head}</tr>{''.join(rows)}</table>")


def _learning(run: RunPaths, missing: list[str]) -> list[Section]:
    from sever.inference.learning import run_learning

    try:
        section = learning_section(run_learning(run.root), "validation split")
    except SeverError as exc:
        missing.append(f"learning verdict: {exc}")
        return []
    if section is None:
        missing.append("learning verdict: the run's checkpoint holds no self-tuning scores with the empty "
                       f"predictor's (tune it: sever tune -m {run.root} --split val).")
        return []
    return [section]


def _tuned_settings(run: RunPaths) -> Path | None:
    path = run.root / TUNED_SETTINGS
    return path if path.is_file() else None


def _settings_note(run: RunPaths, postprocess: Path | None, missing: list[str]) -> str:
    if postprocess is not None:
        return f"Post-processing from {postprocess}."
    if _tuned_settings(run) is not None:
        return f"Post-processing tuned by sever tune, read from {TUNED_SETTINGS} in the run folder."
    missing.append(f"tuning: no sever tune output for this run ({run.root / TUNED_SETTINGS}; write it with "
                   f"sever tune -m {run.root} --split val -o {run.root / TUNED_SETTINGS}): the scores use the "
                   "default post-processing.")
    return "Default post-processing (no sever tune output for this run)."


def _confusion_table(scores) -> str:
    evaluation = scores.evaluation
    confusion, precision, recall = evaluation.confusion(), evaluation.precision(), evaluation.recall()
    head = "".join(f"<th>{h}</th>" for h in ("class", "Dice", "IoU", "TP", "FP", "FN", "TN", "precision", "recall"))
    class_iou = scores.iou.mean(axis=0)
    rows = []
    for c, name in enumerate(evaluation.class_names):
        (tn, fp), (fn, tp) = confusion[c]
        cells = [html.escape(name), f"{evaluation.class_dice[c]:.4f}", f"{class_iou[c]:.4f}", tp, fp, fn, tn,
                 *("-" if value != value else f"{value:.3f}" for value in (precision[c], recall[c]))]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    rows.append(f"<tr><td>mean</td><td>{evaluation.mean_dice:.4f}</td><td>{scores.iou.mean():.4f}</td>"
                + "<td></td>" * 6 + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1700px;color:#222}
img{max-width:100%;border:1px solid #ccc;display:block;margin:0.5em 0}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}
.missing{background:#fff4e5;border:1px solid #f0a040;padding:0.5em 1em}"""


def page(title: str, heading: str, sections: list[Section], missing: list[str]) -> str:
    """The HTML of a report page (``title`` in the tab, ``heading`` on top): the missing box, then the sections."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(heading)}</h1>",
             f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S')} by sever report.</p>"]
    if missing:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in missing)
        parts.append(f"<div class='missing'><h2>Missing from this report</h2><ul>{items}</ul></div>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        parts += [f"<img src='{html.escape(image)}' alt='{html.escape(section.title)}'>" for image in section.images]
        parts += [f"<p><a href='{html.escape(href)}'>{html.escape(text)}</a></p>" for href, text in section.links]
        parts.append(section.table)
    parts.append("</body></html>")
    return "\n".join(parts)


def report_folder(root: Path) -> Path:
    """``root/report/``, created.

    Raises:
        DataError: it cannot be created.
    """
    folder = root / REPORT_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder}: {exc.strerror or exc}") from None
    return folder


def write_report(run_dir: str | Path, max_images: int = DEFAULT_MAX_IMAGES, examples: int = DEFAULT_EXAMPLES,
                 postprocess: str | Path | None = None, cap_option: str = "max_images",
                 deadline: Deadline | None = None, seconds_per_image: float = 0.0) -> Report:
    """Write ``RUN/report/index.html`` and its figures; return what was written and what is missing.

    Args:
        run_dir: the run folder.
        max_images: most validation images predicted (CPU) for the scores, curves and mosaics.
        examples: best and worst images shown.
        postprocess: settings YAML; default ``RUN/postprocess.yml`` when present, else the defaults.
        cap_option: the setting ``max_images`` came from, named on the page when it caps the images
            (``--max-images`` from the CLI, ``trainer.report_images`` after training).
        deadline: when the report must be written by (a run's time budget after training); the
            validation images are then fewer where ``max_images`` would not fit (:func:`fitted_cap`).
        seconds_per_image: the measured seconds to predict and score one validation image (0: unknown,
            the deadline is not applied).

    Raises:
        DataError: ``run_dir`` is not a run folder, or ``report/`` cannot be written.
    """
    run = check_run_folder(run_dir)
    if postprocess is not None and not Path(postprocess).is_file():
        raise DataError(f"--postprocess: file not found: {postprocess}")
    folder = report_folder(run.root)
    missing: list[str] = []
    clock = deadline.clock if deadline is not None else time.monotonic
    started = clock()
    sections = _learning(run, missing) + _curves(run, folder, missing)
    cap = fitted_cap(ImageCap(max_images, cap_option, deadline, seconds_per_image), examples, clock() - started)
    if cap.option == BUDGET_CAP:
        logger.info("the report predicts at most %d validation images, not %d: more would not end in the run's "
                    "budget", cap.images, max_images)
    sections += _validation(run, folder, cap, examples, Path(postprocess) if postprocess else None, missing)
    index = folder / "index.html"
    index.write_text(page(f"sever report: {run.root.name}", f"Run {run.root}", sections, missing), encoding="utf-8")
    return Report(index, sections, missing)


def fitted_cap(cap: ImageCap, examples: int, drawing: float) -> ImageCap:
    """``cap`` lowered to the validation images that leave time, before its deadline, for what follows them.

    After the predictions come the examples' second pass (``2 * examples`` images) and the drawing of the
    validation figures, mosaics and gallery page. That drawing is taken to cost what the sections before
    the predictions just took (``drawing`` seconds: the learning verdict, reading the history, four
    figures), the same kind of work on a similar number of figures, measured on this machine now.
    """
    return cap.within(drawing + 2 * examples * cap.per_image)


def report_after_training(run_dir: Path, max_images: int, deadline: Deadline | None = None,
                          seconds_per_image: float = 0.0) -> None:
    """Write the report at the end of training (``trainer.report_images`` validation images
    predicted on the CPU, fewer where they would not end by ``deadline`` at ``seconds_per_image``);
    a failure is logged as a warning, never raised."""
    try:
        report = write_report(run_dir, max_images=max_images, cap_option="trainer.report_images",
                              deadline=deadline, seconds_per_image=seconds_per_image)
    except Interrupted:
        raise  # the command that trained says how to continue
    except Exception as exc:  # noqa: BLE001 - the run is saved; a drawing failure must not fail training
        logger.warning("could not write the run report (%s: %s); retry with: sever report %s",
                       type(exc).__name__, exc, run_dir)
        return
    logger.info("report: %s", report.index)
