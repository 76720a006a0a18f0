"""A dataset's fingerprint: what ``sever plan`` reads from a folder of labelled images.

The folder is read through its registered data source
(:mod:`sever.data_loader.sources`) and checked by the pre-flight data check
(:func:`sever.data_loader.checks.preflight`) before anything is measured, so a plan is
never made for data training would refuse. The fingerprint holds:

- the images: count, heights and widths (min / median / max pixels), channels on disk,
  grey mean and standard deviation (fractions of 255, over up to ``GREY_SAMPLE`` images);
- the classes: how many images show each, the share of defect-free images and of empty
  image-class pairs;
- per class, percentiles (5, 50, 95) of the defect area per image and of the
  connected-component sizes in pixels, and the 95th percentile of the component
  bounding-box height and width (the defect extent a crop should hold).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.data_loader.checks import image_header_size, preflight
from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.mask_folder import MASK_SUFFIX, read_mask
from sever.data_loader.sources import DataFolder, mask_formats, mask_source
from sever.exceptions import DataError
from sever.utils.progress import progress

logger = logging.getLogger(__name__)

GREY_SAMPLE = 200  # images read for the grey statistics and channels, spread over the dataset
MAX_CLASS_ID = 255  # the highest ClassId a CSV may use when the classes are detected
PERCENTILES = (5, 50, 95)


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files are, relative to its folder (the ``data_loader.args`` of the same names)."""

    format: str = "kaggle"
    images: str = "train_images"
    csv: str = "train.csv"
    masks: str = "train_masks"


@dataclass
class ClassStats:
    """One defect class: ``images`` showing it; pixel percentiles at :data:`PERCENTILES`.

    ``area``: defect pixels per image that shows the class; ``component``: pixels per
    connected component; ``extent``: 95th percentile ``(height, width)`` of the components'
    bounding boxes, pixels.
    """

    name: str
    images: int
    frequency: float
    area: list[float]
    component: list[float]
    extent: list[int]


@dataclass
class Fingerprint:
    """What a plan is made from (see the module docstring); saved as ``fingerprint.json``."""

    data_dir: str
    layout: dict
    images: int
    heights: list[int]  # min, median, max pixels
    widths: list[int]
    channels: list[int]  # channel counts found on disk
    grey_mean: float  # fraction of 255
    grey_std: float
    empty_images: float  # share of images without any defect
    empty_pairs: float  # share of image-class pairs without a defect
    classes: list[ClassStats] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def table(self) -> list[str]:
        """The fingerprint as lines of a small table (what ``sever plan`` prints)."""
        lines = [
            f"images          {self.images} ({self.layout['format']}, {self.data_dir})",
            f"image heights   min {self.heights[0]}, median {self.heights[1]}, max {self.heights[2]}",
            f"image widths    min {self.widths[0]}, median {self.widths[1]}, max {self.widths[2]}",
            f"channels        {', '.join(map(str, self.channels))}",
            f"grey            mean {self.grey_mean:.4f}, std {self.grey_std:.4f} (fractions of 255)",
            f"defect-free     {self.empty_images:.1%} of images, {self.empty_pairs:.1%} of image-class pairs",
            f"{'class':<16}{'images':>7}{'share':>8}{'area p5/p50/p95':>24}{'component p5/p50/p95':>24}"
            f"{'extent p95':>12}",
        ]
        for c in self.classes:
            lines.append(f"{c.name:<16}{c.images:>7}{c.frequency:>8.1%}{_triple(c.area):>24}"
                         f"{_triple(c.component):>24}{c.extent[0]:>6}x{c.extent[1]:<5}")
        return lines

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def _triple(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def detect_layout(data_dir: Path, layout: Layout, format: str | None) -> Layout:
    """The layout with its format: ``format`` as given (any registered mask source,
    :func:`~sever.data_loader.sources.mask_formats`), else ``kaggle`` when the CSV exists, else ``mask_folder``.

    Raises:
        DataError: neither the CSV nor the mask folder exists (no labels), or ``format`` is no mask source.
    """
    if format is None:
        if (data_dir / layout.csv).is_file():
            format = "kaggle"
        elif (data_dir / layout.masks).is_dir():
            format = "mask_folder"
        else:
            raise DataError(f"{data_dir}: no labels: neither the masks CSV {layout.csv} nor the mask folder "
                            f"{layout.masks}/ is there (--csv, --masks name others)")
    if format not in mask_formats():
        raise DataError(f"--format: {format!r} is not one of {', '.join(mask_formats())}")
    return Layout(format, layout.images, layout.csv, layout.masks)


def detect_classes(data_dir: Path, layout: Layout) -> tuple[int, list[str] | None]:
    """The number of classes the labels use, and the per-class folder names of a per-class mask folder.

    Kaggle CSV: the highest ClassId. Mask folder: its class sub-folders (sorted, numbers
    by value), else the highest value of its label maps. Another source: the highest class
    its labels use, read with the most classes a dataset may have.

    Raises:
        DataError: the labels hold no defect at all.
    """
    if layout.format != "mask_folder":
        annotations = (read_rle_csv(data_dir / layout.csv, MAX_CLASS_ID) if layout.format == "kaggle" else
                       read_dataset(data_dir, layout, MAX_CLASS_ID, None, check=False)[0])
        used = np.flatnonzero(annotations.has_defect().any(axis=0))
        top = int(used[-1]) + 1 if used.size else 0
        names = None
    else:
        mask_dir = data_dir / layout.masks
        if not mask_dir.is_dir():
            raise DataError(f"mask folder not found: {mask_dir}")
        folders = sorted((p.name for p in mask_dir.iterdir() if p.is_dir()),
                         key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
        if folders:
            numbered = folders == [str(k + 1) for k in range(len(folders))]
            return len(folders), None if numbered else folders
        top = max((int(read_mask(p).max(initial=0)) for p in sorted(mask_dir.glob(f"*{MASK_SUFFIX}"))), default=0)
        names = None
    if top == 0:
        source = data_dir / (layout.masks if layout.format == "mask_folder" else layout.csv)
        raise DataError(f"{source}: no labels: not one defect is marked, so there is nothing to learn")
    return top, names


def read_dataset(data_dir: str | Path, layout: Layout, classes: int, class_names: list[str] | None,
                 check: bool = True) -> tuple[Annotations, list[Path]]:
    """The labelled images through their data source, checked as training will check them (``check``).

    Raises:
        DataError: no images, labels for images that are not there, bad images or masks.
    """
    root = Path(data_dir)
    source = mask_source(layout.format, "--format")
    annotations, paths = source.read(DataFolder(root, classes, class_names, images=layout.images, csv=layout.csv,
                                                masks=layout.masks))
    if check:
        preflight([(annotations, paths)], "quick")
    return annotations, paths


def fingerprint(data_dir: str | Path, layout: Layout = Layout(), format: str | None = None,
                classes: int | None = None, class_names: list[str] | None = None) -> Fingerprint:
    """Read, check and measure the dataset in ``data_dir`` (see the module docstring).

    Args:
        data_dir: the dataset folder.
        layout: its file names; ``format`` (a registered mask source: ``kaggle``, ``mask_folder``, ...)
            overrides the layout's; ``kaggle`` or ``mask_folder`` is detected when both are None.
        classes, class_names: the classes; detected from the labels when None.

    Raises:
        DataError: the folder, its images or its labels are missing or wrong (naming them).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    layout = detect_layout(root, layout, format)
    list_images(root / layout.images)  # "no images in ..." before any label is read
    if classes is None:
        classes, detected = detect_classes(root, layout)
        class_names = class_names or detected
    annotations, paths = read_dataset(root, layout, classes, class_names)
    sizes = np.array([image_header_size(path) for path in paths])
    has_defect = annotations.has_defect()
    names = list(class_names) if class_names else [f"class{k + 1}" for k in range(classes)]
    areas, components, extents = _defect_shapes(annotations, sizes, classes)
    stats = [
        ClassStats(names[k], int(has_defect[:, k].sum()), float(has_defect[:, k].mean()), _percentiles(areas[k]),
                   _percentiles(components[k]), _extent(extents[k]))
        for k in range(classes)
    ]
    mean, std, channels = _grey_statistics(paths)
    return Fingerprint(
        data_dir=str(root), layout=asdict(layout), images=len(paths),
        heights=_min_median_max(sizes[:, 0]), widths=_min_median_max(sizes[:, 1]), channels=channels,
        grey_mean=mean, grey_std=std, empty_images=float((~has_defect.any(axis=1)).mean()),
        empty_pairs=float((~has_defect).mean()), classes=stats,
    )


def _min_median_max(values: np.ndarray) -> list[int]:
    return [int(values.min()), int(np.median(values)), int(values.max())]


def _percentiles(values: list[float]) -> list[float]:
    return [float(v) for v in np.percentile(values, PERCENTILES)] if values else [0.0] * len(PERCENTILES)


def _extent(boxes: list[tuple[int, int]]) -> list[int]:
    return [int(np.percentile([box[axis] for box in boxes], 95)) for axis in (0, 1)] if boxes else [0, 0]


def _defect_shapes(annotations: Annotations, sizes: np.ndarray, classes: int):
    """Per class: defect pixels of each image showing it, pixels and ``(h, w)`` of each connected component."""
    areas: list[list[float]] = [[] for _ in range(classes)]
    components: list[list[float]] = [[] for _ in range(classes)]
    extents: list[list[tuple[int, int]]] = [[] for _ in range(classes)]
    has_defect = annotations.has_defect()
    for position in progress(np.flatnonzero(has_defect.any(axis=1)), "measuring defects"):
        masks = annotations.decode(int(position), tuple(sizes[position]))
        for k in np.flatnonzero(has_defect[position]):
            plane = np.ascontiguousarray(masks[..., k])
            areas[k].append(float(plane.sum()))
            count, _, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
            for label in range(1, count):
                components[k].append(float(stats[label, cv2.CC_STAT_AREA]))
                extents[k].append((int(stats[label, cv2.CC_STAT_HEIGHT]), int(stats[label, cv2.CC_STAT_WIDTH])))
    return areas, components, extents


def _grey_statistics(paths: list[Path]) -> tuple[float, float, list[int]]:
    """Grey mean and std (fractions of 255) over up to :data:`GREY_SAMPLE` images, and their channel counts."""
    chosen = np.unique(np.linspace(0, len(paths) - 1, min(GREY_SAMPLE, len(paths))).astype(int))
    total = total_sq = pixels = 0.0
    channels = set()
    for index in chosen:
        grey = read_grey(paths[index]).astype(np.float64) / 255
        total += grey.sum()
        total_sq += (grey**2).sum()
        pixels += grey.size
        on_disk = cv2.imread(str(paths[index]), cv2.IMREAD_UNCHANGED)
        channels.add(1 if on_disk is None or on_disk.ndim == 2 else int(on_disk.shape[2]))
    mean = total / pixels
    return float(mean), float(np.sqrt(max(total_sq / pixels - mean**2, 0.0))), sorted(channels)
