"""The report's figures: matplotlib PNGs and JPEG mosaics.

The figures are bare :class:`matplotlib.figure.Figure` objects saved with the Agg renderer:
pyplot is never imported, so no display is needed and the caller's backend (a notebook's, a
training process's) is left alone.

Each function draws one figure into ``folder`` and returns the file name, relative to
``folder``, for the page's ``<img src>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sever.report.history import History
from sever.report.validation import Example, ValidationScores
from sever.utils.visualization import CLASS_COLOURS

DPI = 100
MOSAIC_WIDTH = 1600  # pixels of one mosaic row (truth and prediction side by side)
MOSAIC_QUALITY = 90  # JPEG quality of the mosaics


def _colour(index: int) -> tuple[float, float, float]:
    """Matplotlib colour of class ``index``, the same as the overlays'."""
    return tuple(CLASS_COLOURS[index % len(CLASS_COLOURS)] / 255.0)


def _subplots(*grid, **options):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state."""
    figure = Figure(figsize=options.pop("figsize"))
    return figure, figure.subplots(*grid, **options)


def _epoch_axis(axes) -> None:
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(figure, folder: Path, name: str) -> str:
    figure.tight_layout()
    figure.savefig(folder / name, dpi=DPI)
    return name


def _class_label(key: str, prefix: str) -> str:
    """``val_dice_0`` -> ``0``; the part after the metric prefix names the class."""
    return key[len(prefix):]


def loss_curves(history: History, folder: Path) -> str | None:
    """Training and validation losses (``*_loss``) per epoch; None when none were logged."""
    keys = [k for k in history.values if k.endswith("loss") and k.startswith(("train_", "val_"))]
    if not keys:
        return None
    figure, axes = _subplots(figsize=(8, 4))
    for key in sorted(keys):
        epochs, values = history.series(key)
        axes.plot(epochs, values, marker="o", markersize=3, linestyle="--" if key.startswith("train_") else "-",
                  label=key)
    _epoch_axis(axes)
    axes.set(ylabel="loss", title="Losses (dashed: training, solid: validation)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, folder, "loss.png")


def dice_curves(history: History, folder: Path) -> str | None:
    """Per-class and mean Dice per epoch, training dashed, validation solid; None when not logged."""
    if not history.keys("train_dice_") and not history.keys("val_dice_"):
        return None
    figure, axes = _subplots(figsize=(8, 4))
    for split, style in (("train", "--"), ("val", "-")):
        prefix = f"{split}_dice_"
        classes = [k for k in history.keys(prefix) if k != f"{prefix}mean" and not k.endswith("loss")]
        for index, key in enumerate(classes):
            epochs, values = history.series(key)
            axes.plot(epochs, values, style, color=_colour(index), label=f"{split} {_class_label(key, prefix)}")
        epochs, values = history.series(f"{prefix}mean")
        if epochs:
            axes.plot(epochs, values, style, color="black", linewidth=2, label=f"{split} mean")
    _epoch_axis(axes)
    axes.set(ylabel="Dice", title="Dice per class (dashed: training, solid: validation)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", ncol=2)
    return _save(figure, folder, "dice.png")


def learning_rate(history: History, folder: Path) -> str | None:
    """Learning rate of each parameter group by logged step; None when not recorded."""
    if not history.lr:
        return None
    figure, axes = _subplots(figsize=(8, 3))
    for group, points in sorted(history.lr.items()):
        steps = sorted(points)
        axes.plot(steps, [points[s] for s in steps], label=group)
    axes.set(xlabel="TensorBoard step", ylabel="learning rate", title="Learning rate per parameter group")
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
        rows.append(_caption(pair, f"{example.name}  mean Dice {example.dice:.3f}   left: truth   right: prediction"))
    image = np.concatenate(rows)
    cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, MOSAIC_QUALITY])
    return name
