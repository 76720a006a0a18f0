"""Pages over several runs: ``sever report RUN_A RUN_B ...`` (a comparison) and ``sever report STUDY``.

A comparison draws the runs' logged curves together, lists their logged scores and the config
keys whose values differ. A study's page shows its folds side by side (curves and scores),
each round's out-of-fold score, the tuned post-processing of each round and the time budget's
ledger, with links to each fold's own report. Both read only what the runs and the study
file hold: nothing is predicted.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from sever.exceptions import DataError
from sever.inference.learning import study_learning
from sever.report.build import (Report, Section, check_run_folder, learning_section, page, report_folder,
                                run_class_labels)
from sever.report.history import History, read_history
from sever.utils.run import RunPaths
# the study folder's reader; its one import in sever.report (the module moves to sever/study/)
from sever.study.folder import StudyPaths, is_study

logger = logging.getLogger(__name__)

__all__ = ["is_study", "report_after_study", "write_comparison", "write_study_report"]

SCORE = "val_dice_mean"
LOSS = "val_loss"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _best(history: History, key: str, highest: bool) -> tuple[float | None, int | None]:
    """``(value, epoch)`` of the best logged ``key`` (None, None when never logged)."""
    epochs, values = history.series(key)
    if not values:
        return None, None
    index = max(range(len(values)), key=lambda i: values[i] if highest else -values[i])
    return values[index], epochs[index]


def _score_row(label: str, history: History) -> list:
    score, at = _best(history, SCORE, True)
    loss, _ = _best(history, LOSS, False)
    epochs = max((max(points) for points in history.values.values() if points), default=None)
    return [label, epochs, score, at, loss]


SCORE_HEAD = ("run", "epochs logged", f"best {SCORE}", "at epoch", f"lowest {LOSS}")


def _config_value(value: Any) -> str:
    """A config value as the YAML file spells it ('-': absent)."""
    return "-" if value is None else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of a nested config (lists kept whole)."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}{key}."[:-1] if not isinstance(value, dict) else f"{prefix}{key}."))
    return flat


def config_differences(configs: Sequence[dict]) -> dict[str, list]:
    """The dotted keys whose values differ between ``configs`` (absent: None), with each config's value."""
    flats = [_flat(config) for config in configs]
    keys = sorted(set().union(*flats))
    return {key: [flat.get(key) for flat in flats] for key in keys
            if len({yaml.safe_dump(flat.get(key)) for flat in flats}) > 1}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: the folder name, with its parent's when two names clash."""
    names = [path.name for path in paths]
    return [f"{path.parent.name}/{path.name}" if names.count(path.name) > 1 else path.name for path in paths]


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Report:
    """Write ``out_dir/index.html`` comparing the runs: their curves, logged scores and config differences.

    Raises:
        DataError: a folder is not a run, or ``out_dir`` cannot be written.
    """
    runs = [check_run_folder(path) for path in run_dirs]
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder}: {exc.strerror or exc}") from None
    labels = _labels([run.root for run in runs])
    histories = {label: read_history(run) for label, run in zip(labels, runs)}
    missing = [f"{label}: {note}" for label, history in histories.items() for note in history.notes]
    sections = _curves_sections(histories, folder, "runs")
    sections.append(Section("Scores", "The best logged values of each run (from its training history), and what "
                                      "sever tune wrote at the top of the run's postprocess.yml.",
                            table=_table((*SCORE_HEAD, "tuned post-processing"),
                                         [[*_score_row(label, h), _tuned_note(run.root / "postprocess.yml")]
                                          for (label, h), run in zip(histories.items(), runs)])))
    differences = config_differences([_read_yaml(run.config) for run in runs])
    sections.append(Section("Config differences", "Every config key whose value differs between the runs "
                                                  "('-': the run's config has no such key).",
                            table=_table(("key", *labels), [(key, *map(_config_value, values))
                                                            for key, values in differences.items()])))
    links = [(_relative(run.root / "report" / "index.html", folder), f"{label}: its own report")
             for label, run in zip(labels, runs) if (run.root / "report" / "index.html").is_file()]
    sections.append(Section("Runs", "\n".join(f"{label}: {run.root}" for label, run in zip(labels, runs)), links=links))
    index = folder / "index.html"
    index.write_text(page("sever comparison", f"{len(runs)} runs compared", sections, missing), encoding="utf-8")
    return Report(index, sections, missing)


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to the page's folder ``start`` (a link that works wherever both are moved together)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _curves_sections(histories: dict[str, History], folder: Path, what: str) -> list[Section]:
    from sever.report import figures

    image = figures.runs_curves(histories, folder, "curves.png")
    if image is None:
        return []
    return [Section("Curves", f"Loss and mean Dice per epoch, one colour per {what[:-1]}, from each one's history.",
                    [image])]


# ----------------------------------------------------------------------------- a study


def _round_rows(paths: StudyPaths) -> list[list]:
    chosen = paths.chosen_round()
    rows = []
    for number in range(paths.rounds + 1):
        record = paths.round_record(number)
        statuses = ", ".join(f"fold{run['fold']} {run['status']}" for run in record["runs"])
        rows.append([number, statuses, record.get("score"), record.get("default_score"), record.get("pseudo_images"),
                     "yes" if number == chosen else ""])
    return rows


def _final_section(paths: StudyPaths, folder: Path) -> Section | None:
    """What the study's final model is (:mod:`sever.study.final`) and whether it predicts; None without one."""
    final = paths.final_entry()
    if final is None:
        return None
    predicts = ("sever predict -m STUDY predicts with it, with the study's tuned post-processing"
                if final.status == "done" else "sever predict -m STUDY predicts with the folds until it is done")
    own = final.run / "report" / "index.html"
    links = [(_relative(own, folder), "the final model's own report")] if own.is_file() else []
    return Section("Final model", f"One run on every labelled image, trained after the folds: {final.status} "
                                  f"({final.run.relative_to(paths.root)}/); {predicts}.", links=links)


def _tuned_note(settings_file: Path) -> str | None:
    """The header comment of a ``postprocess.yml`` (how and how well it was tuned); None without the file."""
    if not settings_file.is_file():
        return None
    lines = settings_file.read_text(encoding="utf-8").splitlines()
    return " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))


def _settings_rows(settings_file: Path, class_names: Sequence[str], class_scores: Sequence[float]
                   ) -> tuple[str, list[list]]:
    """The header comment (how it was tuned) and one row per class of a ``postprocess.yml``, with the class's
    out-of-fold Dice when the study recorded it."""
    comment = _tuned_note(settings_file)
    data = _read_yaml(settings_file)
    threshold, min_pixels = data.get("threshold"), data.get("min_pixels")
    count = len(threshold) if isinstance(threshold, list) else len(class_names)
    rows = [[class_names[c] if c < len(class_names) else c,
             *(_config_value(v[c] if isinstance(v, list) else v) for v in (threshold, min_pixels)),
             float(class_scores[c]) if c < len(class_scores) else None]
            for c in range(count)]
    return comment, rows


def _ledger(data: dict) -> Section | None:
    budget = data.get("budget")
    if not isinstance(budget, dict):
        return None
    spent, reserved, overhead = (budget.get(key) or {} for key in ("spent", "reserved", "overhead"))
    keys = sorted(set(spent) | set(reserved) | set(overhead))
    rows = [[key, float(spent.get(key, 0.0)), reserved.get(key), overhead.get(key)] for key in keys]
    seconds, slots = float(budget.get("seconds", 0.0)), int(budget.get("slots", 1))
    total = sum(float(v) for v in spent.values())
    rows.append(["total", total, None, None])
    text = (f"Budget {seconds:.0f} s with {slots} fold(s) trained at once: {seconds * slots:.0f} slot-seconds, "
            f"{total:.0f} spent ({100 * total / max(seconds * slots, 1e-9):.0f}%). Reserved: what a fold in training "
            "holds; overhead: a fold's time beyond its training (set-up, tuning, report, out-of-fold maps).")
    return Section("Time budget", text, table=_table(("fold or step", "spent (s)", "reserved (s)", "overhead (s)"), rows))


def write_study_report(study_dir: str | Path) -> Report:
    """Write ``STUDY/report/index.html``: folds side by side, each round's out-of-fold score, the tuned
    post-processing and the time budget's ledger.

    Raises:
        SeverError: no readable study file, or ``report/`` cannot be written.
    """
    paths = StudyPaths(Path(study_dir))
    paths.entries()  # the study file's own error when there is none or it is not one
    data = _read_yaml(paths.file)
    folder = report_folder(paths.root)
    class_names = run_class_labels(paths.root)  # the study's config.yaml, as a run's
    missing: list[str] = []
    sections = [Section("Rounds", "Each round's folds and its out-of-fold score (the mean Dice of every labelled "
                                  "image predicted by the fold that did not train on it, with the round's tuned "
                                  "post-processing); the study predicts with the chosen round.",
                        table=_table(("round", "folds", "out-of-fold score", "with default post-processing",
                                      "pseudo-labelled images", "chosen"), _round_rows(paths)))]
    verdicts = study_learning(paths)  # the round the study predicts with
    if (learned := learning_section(verdicts, "out-of-fold images")) is not None:
        sections.append(learned)
    else:
        missing.append("learning verdict: the study's tuning recorded no empty-predictor scores (tune it out-of-fold: "
                       f"sever tune -m {paths.root}).")
    for number in range(paths.rounds + 1):
        sections += _round_sections(paths.at_round(number), folder, class_names, missing)
    if (final := _final_section(paths, folder)) is not None:
        sections.append(final)
    ledger = _ledger(data)
    if ledger is None:
        missing.append("time budget: the study had none (trainer.time_budget), so there is no ledger.")
    else:
        sections.append(ledger)
    index = folder / "index.html"
    index.write_text(page(f"sever study report: {paths.root.name}", f"Study {paths.root}", sections, missing),
                     encoding="utf-8")
    return Report(index, sections, missing)


def report_after_study(root: str | Path) -> Path | None:
    """Write a study's report at the end of ``sever auto`` or of a study; None (and nothing written) when ``root``
    is a single run. A failure is logged as a warning, never raised: the study is saved."""
    if not is_study(root):
        return None
    try:
        index = write_study_report(root).index
    except Exception as exc:  # noqa: BLE001 - the study is saved; a drawing failure must not fail it
        logger.warning("could not write the study report (%s: %s); retry with: sever report %s",
                       type(exc).__name__, exc, root)
        return None
    logger.info("study report: %s", index)
    return index


def _round_sections(paths: StudyPaths, folder: Path, class_names: Sequence[str], missing: list[str]) -> list[Section]:
    number = paths.round_number
    entries = paths.entries()
    histories = {f"fold{entry.fold}": read_history(RunPaths(entry.run)) for entry in entries if entry.run.is_dir()}
    name = f"round{number}"
    sections = []
    from sever.report import figures

    image = figures.runs_curves(histories, folder, f"{name}_folds.png") if histories else None
    links = [(_relative(entry.run / "report" / "index.html", folder), f"fold{entry.fold}: its own report")
             for entry in entries if (entry.run / "report" / "index.html").is_file()]
    sections.append(Section(f"Round {number}: folds side by side",
                            "Loss and mean Dice per epoch, one colour per fold, and each fold's best logged values.",
                            [image] if image else [],
                            _table(("fold", "status", *SCORE_HEAD[1:]),
                                   [[f"fold{e.fold}", e.status, *_score_row("", histories[f"fold{e.fold}"])[1:]]
                                    if f"fold{e.fold}" in histories else [f"fold{e.fold}", e.status]
                                    for e in entries]), links))
    if paths.postprocess.is_file():
        comment, rows = _settings_rows(paths.postprocess, class_names, paths.round_record().get("class_scores") or [])
        sections.append(Section(f"Round {number}: tuned post-processing", f"From {paths.postprocess}: {comment}",
                                table=_table(("class", "threshold", "min_pixels", "out-of-fold Dice"), rows)))
    else:
        missing.append(f"round {number}: no tuned post-processing ({paths.postprocess}): the study was not tuned "
                       f"out-of-fold yet (sever tune -m {paths.root}).")
    return sections
