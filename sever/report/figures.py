"""The report's figures: matplotlib PNGs and JPEG mosaics.

The figures are bare :class:`matplotlib.figure.Figure` objects saved with the Agg renderer:
pyplot is never imported, so no display is needed and the caller's backend (a notebook's, a
training process's) is left alone.

Each function draws one figure into ``folder`` and returns the file name, relative to
``folder``, for the page's ``<img src>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sever.report.history import History
from sever.report.validation import Example, ValidationScores
from sever.utils.visualization import CLASS_COLOURS

DPI = 100
MOSAIC_WIDTH = 1600  # pixels of one mosaic row (truth and prediction side by side)
MOSAIC_QUALITY = 90  # JPEG quality of the mosaics
MAX_LINES = 8  # most lines in one panel of the curves
# the prefixes of the names every metric of sever.model.metric returns; any other per-epoch value is a loss part
METRIC_PREFIXES = ("dice_", "iou_", "presence_", "accuracy", "precision_", "recall_", "map")
NOT_PLOTTED = ("images_per_s",)  # throughput, not a score
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")  # matplotlib's tab10


def _colour(index: int) -> tuple[float, float, float]:
    """Matplotlib colour of class ``index``, the same as the overlays'."""
    return tuple(CLASS_COLOURS[index % len(CLASS_COLOURS)] / 255.0)


def _series_colour(index: int) -> str:
    """Colour of the ``index``-th series of a panel that is not a class (losses, means, other scores)."""
    return SERIES_COLOURS[index % len(SERIES_COLOURS)]


def _subplots(*grid, **options):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state."""
    figure = Figure(figsize=options.pop("figsize"))
    return figure, figure.subplots(*grid, **options)


def _epoch_axis(axes) -> None:
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def plotted(figure: Figure) -> dict:
    """What ``figure`` draws, as plain data: per axes its title, axis labels and every line
    (label, colour as ``#rrggbb``, line style, marker, x and y), in drawing order."""
    panels = []
    for axes in figure.axes:
        lines = [{"label": str(line.get_label()), "color": to_hex(line.get_color()),
                  "linestyle": str(line.get_linestyle()), "marker": str(line.get_marker()),
                  "x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()]}
                 for line in axes.get_lines()]
        panels.append({"title": axes.get_title(), "xlabel": axes.get_xlabel(), "ylabel": axes.get_ylabel(),
                       "lines": lines})
    return {"axes": panels}


def _save(figure, folder: Path, name: str) -> str:
    """Save ``figure`` as ``folder/name`` and what it plots as ``folder/<stem>.json`` (:func:`plotted`)."""
    figure.tight_layout()
    figure.savefig(folder / name, dpi=DPI)
    (folder / f"{Path(name).stem}.json").write_text(json.dumps(plotted(figure)), encoding="utf-8")
    return name


def _is_loss(name: str) -> bool:
    """Whether a logged name (``train_``/``val_`` removed) is a loss or a loss component rather than a metric.

    Metrics return names that start with their own prefixes (:mod:`sever.model.metric`); every
    other value the trainer logs per epoch, but the throughput, is a part of the loss.
    """
    return name.endswith("loss") or not name.startswith(METRIC_PREFIXES)


def _family(name: str) -> str:
    """``dice_defect_2`` -> ``dice_defect``, ``dice_mean`` -> ``dice``: the metric a value belongs to."""
    return re.sub(r"_(\d+|mean)$", "", name)


def _split_name(key: str) -> tuple[str, str] | None:
    """``val_dice_0`` -> ``("val", "dice_0")``; None for a key of neither split."""
    split, _, name = key.partition("_")
    return (split, name) if split in ("train", "val") and name else None


def _logged_names(history: History) -> list[str]:
    """The names logged for training or validation (the split removed), in a stable order."""
    names = {parts[1] for key in history.values if (parts := _split_name(key))}
    return sorted(names - set(NOT_PLOTTED))


@dataclass(frozen=True)
class Series:
    """One value drawn for training (dashed) and validation (solid) in one colour."""

    name: str  # the logged name without its split, e.g. ``dice_0``
    label: str
    colour: tuple[float, float, float] | str


def _class_series(name: str, class_names: Sequence[str]) -> Series | None:
    """The series of a per-class value (``dice_2``) in its class colour; None for any other value."""
    index = re.search(r"_(\d+)$", name)
    if index is None:
        return None
    c = int(index.group(1))
    return Series(name, class_names[c] if c < len(class_names) else index.group(1), _colour(c))


def _chunks(series: list, title: str) -> list[tuple[str, list]]:
    """``series`` (of one history or of several) cut into panels of at most :data:`MAX_LINES` lines (a series draws two: training, validation)."""
    size = max(1, MAX_LINES // 2)
    chunks = [series[i:i + size] for i in range(0, len(series), size)]
    return [(title + (f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else ""), chunk) for n, chunk in enumerate(chunks)]


def _panels(names: list[str], class_names: Sequence[str]) -> list[tuple[str, list[Series]]]:
    """``(title, series)`` panels: the per-class values of each metric in class colours, then every
    mean and single value together in the series colours; no panel draws more than :data:`MAX_LINES` lines."""
    families: dict[str, list[Series]] = {}
    summaries = []
    for name in names:
        one = _class_series(name, class_names)
        if one is None:
            summaries.append(Series(name, name.replace("_", " "), _series_colour(len(summaries))))
        else:
            families.setdefault(_family(name), []).append(one)
    panels = [panel for family, series in families.items()
              for panel in _chunks(series, f"{family.replace('_', ' ')} per class")]
    return panels + _chunks(summaries, "means and overall values")


def _draw_series(axes, history: History, series: Series) -> None:
    for split, style in (("train", "--"), ("val", "-")):
        epochs, values = history.series(f"{split}_{series.name}")
        if epochs:  # markers: one epoch is a point, not an invisible line
            axes.plot(epochs, values, linestyle=style, marker="o", markersize=4, color=series.colour,
                      label=f"{split} {series.label}")


def _curve_figure(panels: list[tuple[str, list[tuple[History, Series]]]], ylabel, folder: Path,
                  name: str) -> str | None:
    """A grid of panels (two columns), each drawing its ``(history, series)`` per epoch; None without any panel.

    ``ylabel(title)`` labels a panel's y axis.
    """
    if not panels:
        return None
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, grid = _subplots(rows, columns, figsize=(6.5 * columns, 3.6 * rows), squeeze=False)
    for axes, (title, drawn) in zip(grid.flat, panels):
        for history, series in drawn:
            _draw_series(axes, history, series)
        _epoch_axis(axes)
        axes.set(ylabel=ylabel(title), title=f"{title} (dashed: training, solid: validation)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", ncol=2)
    for axes in list(grid.flat)[len(panels):]:
        figure.delaxes(axes)
    return _save(figure, folder, name)


def _one_history(history: History, panels: list[tuple[str, list[Series]]]) -> list:
    return [(title, [(history, series) for series in chunk]) for title, chunk in panels]


def loss_curves(history: History, folder: Path) -> str | None:
    """Every logged loss and loss component (``loss``, ``bce``, ``dice_loss``, ...) per epoch, one colour
    each, training dashed and validation solid; None when none was logged."""
    names = [name for name in _logged_names(history) if _is_loss(name)]
    series = [Series(name, name.replace("_", " "), _series_colour(i)) for i, name in enumerate(names)]
    return _curve_figure(_one_history(history, _chunks(series, "losses")), lambda title: "loss (mean over the epoch)",
                         folder, "loss.png")


def dice_curves(history: History, folder: Path, class_names: Sequence[str] = ()) -> str | None:
    """The Dice scores (``dice_*``: per class, means, defect/empty Dice) per epoch; None when not logged."""
    names = [name for name in _logged_names(history) if not _is_loss(name) and name.startswith("dice_")]
    return _curve_figure(_one_history(history, _panels(names, class_names)), lambda title: "Dice", folder,
                         "dice.png")


def score_curves(history: History, folder: Path, class_names: Sequence[str] = ()) -> str | None:
    """Every other metric (presence precision and recall, IoU, accuracy, ...) per epoch; None when none."""
    names = [name for name in _logged_names(history) if not _is_loss(name) and not name.startswith("dice_")]
    return _curve_figure(_one_history(history, _panels(names, class_names)), _score_label,
                         folder, "scores.png")


def runs_curves(histories: dict[str, History], folder: Path, name: str,
                values: Sequence[str] = ("loss", "dice_mean")) -> str | None:
    """Several runs (or folds) side by side: one panel per logged value in ``values`` (``loss`` draws
    ``train_loss`` dashed and ``val_loss`` solid), one colour per run; None when none logged any."""
    panels = []
    for value in values:
        drawn = [(history, Series(value, label, _series_colour(i))) for i, (label, history) in enumerate(histories.items())
                 if history.series(f"train_{value}")[0] or history.series(f"val_{value}")[0]]
        panels += _chunks(drawn, value.replace("_", " "))
    return _curve_figure(panels, lambda title: title.split(" (")[0], folder, name)


def _score_label(title: str) -> str:
    """The y label of a panel of :func:`score_curves`: the metric of a per-class panel."""
    return title.split(" per class")[0] if " per class" in title else "score (0 to 1)"


def learning_rate(history: History, folder: Path) -> str | None:
    """Learning rate of each parameter group per epoch (the rate the epoch started training with,
    as the trainer logs it once per epoch); None when not recorded."""
    if not history.lr:
        return None
    figure, axes = _subplots(figsize=(8, 3))
    for index, (group, points) in enumerate(sorted(history.lr.items())):
        epochs = sorted(points)
        axes.plot(epochs, [points[e] for e in epochs], marker="o", markersize=4, color=_series_colour(index),
                  label=group)
    _epoch_axis(axes)
    axes.set(ylabel="learning rate", title="Learning rate per parameter group at the start of each epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, folder, "lr.png")


def class_scores(scores: ValidationScores, folder: Path) -> str:
    """Per-class mean Dice bars and each class's presence confusion (TP/FP/FN/TN images)."""
    evaluation = scores.evaluation
    names = evaluation.class_names
    confusion = evaluation.confusion()
    figure, axes = _subplots(1, 1 + len(names), figsize=(3 + 2.2 * len(names), 3.2),
                                gridspec_kw={"width_ratios": [2.5] + [1] * len(names)})
    bars = axes[0]
    bars.bar(range(len(names)), evaluation.class_dice, color=[_colour(c) for c in range(len(names))])
    bars.axhline(evaluation.mean_dice, color="black", linestyle="--", label=f"mean {evaluation.mean_dice:.3f}")
    bars.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    bars.set(ylim=(0, 1), ylabel="mean Dice", title="Dice per class")
    bars.legend(fontsize="small")
    for c, (name, axis) in enumerate(zip(names, axes[1:])):
        axis.imshow(confusion[c], cmap="Blues")
        for (row, col), count in np.ndenumerate(confusion[c]):
            label = ("TN", "FP", "FN", "TP")[2 * row + col]
            axis.text(col, row, f"{label}\n{count}", ha="center", va="center", fontsize="small",
                      color="white" if count > confusion[c].max() / 2 else "black")
        axis.set_xticks([0, 1], ["absent", "present"], fontsize="x-small")
        axis.set_yticks([0, 1], ["absent", "present"], fontsize="x-small")
        axis.set_xlabel("predicted", fontsize="x-small")
        axis.set_ylabel("truth", fontsize="x-small")
        axis.set_title(name, fontsize="small")
    return _save(figure, folder, "classes.png")


def threshold_curves(scores: ValidationScores, folder: Path) -> str | None:
    """Mean Dice of each class against its probability threshold (min_pixels as set); None without a search.

    A dot marks the threshold in use.
    """
    result = scores.thresholds
    if result is None:
        return None
    settings = scores.settings
    figure, axes = _subplots(figsize=(8, 4))
    for c, name in enumerate(result.class_names):
        curve = result.scores[:, result.min_pixels.index(settings.min_pixels[c]), 0, c]
        axes.plot(result.thresholds, curve, color=_colour(c), label=f"{name} (min_pixels {settings.min_pixels[c]})")
        used = result.thresholds.index(settings.threshold[c])
        axes.plot([settings.threshold[c]], [curve[used]], "o", color=_colour(c))
    axes.set(xlabel="probability threshold", ylabel="mean Dice", ylim=(0, 1.02),
             title="Dice against threshold per class (dot: threshold in use)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    return _save(figure, folder, "thresholds.png")


def precision_recall(scores: ValidationScores, folder: Path) -> str:
    """Per-class precision against recall: image-level presence (left) and pixel level (right), a star
    at the operating point of the post-processing in use; at most :data:`MAX_LINES` lines a panel."""
    names = scores.evaluation.class_names
    per_panel = max(1, MAX_LINES // 2)  # a class draws its curve and its operating point
    groups = [list(range(len(names)))[i:i + per_panel] for i in range(0, len(names), per_panel)]
    figure, grid = _subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for row, group in zip(grid, groups):
        for axes, curves, level in ((row[0], scores.presence, "image-level presence"),
                                    (row[1], scores.pixels, "pixel level")):
            for c in group:
                curve = curves[c]
                axes.plot(curve.recall, curve.precision, marker=".", markersize=3, color=_colour(c),
                          label=names[c])
                axes.plot([curve.operating[1]], [curve.operating[0]], linestyle="None", marker="*", markersize=12,
                          markeredgecolor="black", color=_colour(c), label=f"{names[c]}: in use")
            axes.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"recall ({_UNITS[level]})",
                     ylabel=f"precision ({_UNITS[level]})", title=f"Precision-recall, {level} (star: in use)")
            axes.grid(alpha=0.3)
            axes.legend(fontsize="x-small", ncol=2)
    return _save(figure, folder, "precision_recall.png")


_UNITS = {"image-level presence": "share of images", "pixel level": "share of pixels"}


def distributions(scores: ValidationScores, folder: Path) -> str:
    """Image sizes of the scored images and the pixel areas of their true defects per class."""
    figure, (sizes, areas) = _subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 2]})
    labels, counts = np.unique([f"{h}x{w}" for h, w in scores.image_sizes], return_counts=True)
    sizes.bar(range(len(labels)), counts, color="grey")
    sizes.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    sizes.set(ylabel="images", title="Image size (HxW, pixels)")
    present = [(c, a) for c, a in enumerate(scores.defect_areas) if a]
    if present:
        smallest, largest = min(min(a) for _, a in present), max(max(a) for _, a in present)
        bins = np.logspace(np.log10(smallest) - 0.1, np.log10(largest) + 0.1, 30)
        for c, class_areas in present:
            areas.hist(class_areas, bins=bins, histtype="step", linewidth=1.5, color=_colour(c),
                       label=f"{scores.evaluation.class_names[c]} ({len(class_areas)})")
        areas.set_xscale("log")
        areas.legend(fontsize="x-small")
    else:
        areas.text(0.5, 0.5, "no true defect in the scored images", ha="center", va="center",
                    transform=areas.transAxes)
    areas.set(xlabel="defect area (pixels, one connected component)", ylabel="defects",
              title="Defect size per class (truth)")
    return _save(figure, folder, "distributions.png")


def _caption(row: np.ndarray, text: str) -> np.ndarray:
    """``row (h, w, 3)`` with a dark 22-pixel caption strip above it."""
    strip = np.full((22, row.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([strip, row])


def mosaic(examples: Sequence[Example], folder: Path, name: str) -> str | None:
    """One row per example: truth outlines left, prediction outlines right, shrunk to the mosaic width."""
    if not examples:
        return None
    rows = []
    for example in examples:
        pair = np.concatenate([example.truth, np.full((example.truth.shape[0], 8, 3), 255, np.uint8),
                               example.prediction], axis=1)
        if pair.shape[1] > MOSAIC_WIDTH:
            height = max(1, round(pair.shape[0] * MOSAIC_WIDTH / pair.shape[1]))
            pair = cv2.resize(pair, (MOSAIC_WIDTH, height), interpolation=cv2.INTER_AREA)
        rows.append(_caption(pair, f"{example.name}  Dice {example.dice:.3f} (classes in truth or prediction)   left: truth   right: prediction"))
    image = np.concatenate(rows)
    cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, MOSAIC_QUALITY])
    return name
