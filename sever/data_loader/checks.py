"""Pre-flight data checks: find every bad image and annotation before training starts.

A training run can last days; a truncated JPEG at image 9,000 or a mask that
runs past its image must not surface in the middle of an epoch. These checks
visit every image and annotation once, cheaply:

- ``quick`` (the default): each image's size comes from its header (JPEG
  start-of-frame marker, PNG ``IHDR`` chunk) and truncation from its last
  bytes (JPEG end-of-image marker, PNG ``IEND`` chunk), without decoding
  pixels; other formats are decoded. Every RLE is parsed and must end inside
  its image (``H * W`` pixels).
- ``full``: also decodes every image, which catches corrupt compressed data
  that a well-formed header and tail hide.

:func:`preflight` runs them for :class:`~sever.data_loader.data_loaders.SteelDataLoader`
(``data_loader.args.check``) and raises one :class:`DataError` listing the
problems; :func:`check_dataset` builds the report ``sever check-data`` prints.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.data_loader.augmentation import MIN_IMAGE_SIDE
from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.rle import rle_parse
from sever.data_loader.sources import DataFolder, mask_source
from sever.exceptions import ConfigError, DataError, RLEError
from sever.utils.progress import progress

logger = logging.getLogger(__name__)

CHECK_MODES = ("quick", "full", "off")
SHOWN_PROBLEMS = 5  # problems quoted in the error that stops a training run
SHOWN_SIZES = 8  # most common image sizes listed by the summary

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8])
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC

Source = tuple[Annotations, Sequence[Path]]


@dataclass
class DataReport:
    """What a data check found.

    Attributes:
        images: images checked.
        masks_per_class: ``(C,)`` number of images with a mask of each class.
        empty_images: images without any mask.
        sizes: ``(H, W)`` in pixels -> number of images of that size.
        problems: one line per problem, each naming its file or CSV row.
        seconds: wall time of the check.
        masks_read: whether the masks CSV could be read; when not, the mask counts mean nothing.
    """

    images: int = 0
    masks_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    empty_images: int = 0
    sizes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    masks_read: bool = True

    def add_counts(self, annotations: Annotations) -> None:
        """Count the images, masks per class and empty images of ``annotations``."""
        per_class = annotations.has_defect().sum(axis=0)
        if self.masks_per_class.size == 0:
            self.masks_per_class = np.zeros_like(per_class)
        self.masks_per_class = self.masks_per_class + per_class
        self.images += len(annotations)
        self.empty_images += int((annotations.n_defects() == 0).sum())

    def raise_if_problems(self, what: str) -> None:
        """Raise one :class:`DataError` quoting the first problems and their count."""
        if not self.problems:
            return
        shown = "\n  ".join(self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        raise DataError(
            f"{len(self.problems)} data problem(s) found before training ({what}):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )

    def summary(self, crop: tuple[int, int] | None = None, tile: tuple[int, int] | None = None) -> list[str]:
        """The report as lines of a small table (what ``sever check-data`` prints).

        Args:
            crop, tile: the training crop and the prediction tile ``(h, w)`` in pixels,
                if any: the shape lines say how many images each changes (:meth:`shape_lines`).
        """
        shown = self.sizes.most_common(SHOWN_SIZES)
        sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in shown) or "none readable"
        if len(self.sizes) > SHOWN_SIZES:
            sizes += f", ... ({len(self.sizes)} sizes in all)"
        lines = [
            f"images          {self.images}",
            f"image sizes     {sizes}",
            *self.shape_lines(crop, tile),
        ]
        if self.masks_read:  # else every image would show as empty: only the CSV's problem is reported
            lines.append(f"empty images    {self.empty_images}")
            lines += [f"class {k + 1} masks   {int(n)}" for k, n in enumerate(self.masks_per_class)]
        lines += [f"check time      {self.seconds:.2f} s", f"problems        {len(self.problems)}"]
        return lines + [f"  {problem}" for problem in self.problems]


    def shape_lines(self, crop: tuple[int, int] | None = None, tile: tuple[int, int] | None = None) -> list[str]:
        """The image-size distribution and what training and prediction do with it, as lines.

        Heights and widths as min / median / max over the images (pixels); with a
        ``crop``, how many images are smaller than it on some axis (training pads
        them); with a ``tile``, how many are larger than it (prediction tiles them).
        """
        if not self.sizes:
            return []
        heights, widths = (np.repeat([size[axis] for size in self.sizes], list(self.sizes.values()))
                           for axis in (0, 1))
        lines = [f"{name:<16}min {v.min()}, median {np.median(v):g}, max {v.max()}"
                 for name, v in (("image heights", heights), ("image widths", widths))]
        if crop is not None:
            small = self.count(lambda h, w: h < crop[0] or w < crop[1])
            lines.append(f"training        {small} image(s) smaller than the {crop[0]}x{crop[1]} crop are padded "
                         f"to it (padding is left out of the loss), {self.images_sized - small} cropped")
        else:
            lines.append("training        whole images, batches padded to one size (padding left out of the loss)")
        if tile is not None:
            large = self.count(lambda h, w: h > tile[0] or w > tile[1])
            lines.append(f"prediction      {large} image(s) larger than the {tile[0]}x{tile[1]} tile are predicted "
                         f"in tiles, {self.images_sized - large} whole")
        else:
            lines.append("prediction      whole images, each padded to a multiple of 32 and cropped back")
        return lines

    @property
    def images_sized(self) -> int:
        """Images whose size could be read."""
        return sum(self.sizes.values())

    def count(self, condition) -> int:
        """Images whose ``(h, w)`` satisfies ``condition(h, w)``."""
        return sum(n for (h, w), n in self.sizes.items() if condition(h, w))


# ------------------------------------------------------------------ images


def image_header_size(path: str | Path, full: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image, read from its header; checks the file is complete.

    JPEG and PNG sizes come from the header and truncation from the last bytes,
    without decoding; other formats are decoded with
    :func:`~sever.data_loader.datasets.read_grey`. With ``full``, every image is
    also decoded and must have the header's size.

    Raises:
        DataError: the file is missing, empty, not an image, has a corrupt
            header, is truncated, or (``full``) does not decode to its header's size.
    """
    try:
        with open(path, "rb") as handle:
            size = _header_size(path, handle)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
    if size is None or full:
        decoded = read_grey(path).shape[:2]
        if size is not None and decoded != size:
            raise DataError(f"{path}: header says {size[0]}x{size[1]} but the image decodes to {decoded[0]}x{decoded[1]}")
        size = decoded
    return size


def _header_size(path: str | Path, handle: BinaryIO) -> tuple[int, int] | None:
    """``(H, W)`` of a JPEG or PNG from its header, None for other formats."""
    start = handle.read(8)
    if not start:
        raise DataError(f"{path}: empty file")
    if start.startswith(_JPEG_START):
        size = _jpeg_size(path, handle)
        _check_tail(path, handle, _JPEG_END, "truncated or corrupt JPEG (no end-of-image marker)")
    elif start == _PNG_SIGNATURE:
        size = _png_size(path, handle)
        _check_tail(path, handle, _PNG_END, "truncated or corrupt PNG (no IEND chunk at the end)")
    elif os.path.splitext(path)[1].lower() in _JPEG_SUFFIXES:
        raise DataError(f"{path}: not a JPEG (no start-of-image marker)")
    else:
        return None
    if size[0] < 1 or size[1] < 1:
        raise DataError(f"{path}: header gives an image size of {size[0]}x{size[1]}")
    return size


def _check_tail(path: str | Path, handle: BinaryIO, ending: bytes, problem: str) -> None:
    handle.seek(0, 2)
    if handle.tell() < len(ending) + 8:
        raise DataError(f"{path}: {problem}")
    handle.seek(-len(ending), 2)
    if handle.read(len(ending)) != ending:
        raise DataError(f"{path}: {problem}")


def _jpeg_size(path: str | Path, handle: BinaryIO) -> tuple[int, int]:
    """Walk the JPEG's marker segments up to the start-of-frame; ``(H, W)`` from it."""
    handle.seek(2)
    while True:
        if handle.read(1) != b"\xff":
            raise DataError(f"{path}: corrupt JPEG header (expected a marker at byte {handle.tell() - 1})")
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = handle.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # end of file, end of image or scan before any frame
            raise DataError(f"{path}: corrupt JPEG header (no frame size before the image data)")
        if marker[0] in _JPEG_STANDALONE:
            continue
        length = int.from_bytes(handle.read(2), "big")
        if marker[0] in _JPEG_FRAMES:
            frame = handle.read(5)  # precision, height, width
            if len(frame) < 5:
                break
            return int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
        if length < 2:
            break
        handle.seek(length - 2, 1)
    raise DataError(f"{path}: corrupt JPEG header (cut short)")


def _png_size(path: str | Path, handle: BinaryIO) -> tuple[int, int]:
    chunk = handle.read(16)  # length, b"IHDR", width, height
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        raise DataError(f"{path}: corrupt PNG header (no IHDR chunk)")
    return int.from_bytes(chunk[12:16], "big"), int.from_bytes(chunk[8:12], "big")


# ------------------------------------------------------------------ annotations


def _rle_bounds_problems(annotations: Annotations, position: int, size: tuple[int, int], path: str | Path) -> list[str]:
    """One line per mask of image ``position`` that runs past its ``(H, W)`` pixels."""
    problems = []
    pixels = size[0] * size[1]
    for k in np.flatnonzero(annotations.encodings[position] != ""):
        try:
            starts0, lengths = rle_parse(annotations.encodings[position, k])
        except RLEError as exc:  # read_rle_csv checked the syntax; kept for Annotations built otherwise
            problems.append(f"{annotations.location(position, k)}: {exc}")
            continue
        end = int(starts0[-1] + lengths[-1]) if starts0.size else 0
        if end > pixels:
            problems.append(
                f"{annotations.location(position, k)}: the mask runs to pixel {end}, past the {pixels} pixels of "
                f"{os.path.basename(path)} ({size[0]}x{size[1]}): mask and image sizes disagree"
            )
    return problems


def check_samples(annotations: Annotations, paths: Sequence[Path], report: DataReport, full: bool = False) -> None:
    """Check every image of ``paths`` and its masks, adding to ``report``.

    Args:
        annotations: the N images' masks, aligned with ``paths``.
        paths: N image files.
        report: receives the counts, sizes and problems.
        full: also decode every image.
    """
    has_defect = annotations.has_defect().any(axis=1)
    for position, path in enumerate(progress(paths, "checking images")):
        try:
            size = image_header_size(path, full)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        report.sizes[size] += 1
        if min(size) < MIN_IMAGE_SIDE:
            report.problems.append(f"{path}: {size[0]}x{size[1]} is too small to train on (sides of at least "
                                   f"{MIN_IMAGE_SIDE} pixels are needed; smaller crops are padded)")
        if has_defect[position]:
            report.problems += _rle_bounds_problems(annotations, position, size, path)
    report.add_counts(annotations)


def _class_problems(annotations: Annotations) -> list[str]:
    """``classes`` against the ClassIds the CSV uses (ids above ``classes`` already failed to read).

    Fewer ids than ``classes`` is suspect (an always-empty class scores Dice 1 and inflates
    the mean) but can be a subset of the data: ``sever check-data`` reports it as a problem,
    training only warns.
    """
    listed = annotations.rows > 0  # a CSV's rows, empty masks included
    if not listed.any():  # a source other than a CSV records no rows: the masks it read
        listed = annotations.has_defect()
    used = np.flatnonzero(listed.any(axis=0))
    if used.size == 0:
        return [f"{annotations.source}: lists no masks at all"]
    if used[-1] + 1 < annotations.n_classes:
        return [
            f"classes: {annotations.n_classes} classes expected but {annotations.source} only uses ClassIds "
            f"1..{used[-1] + 1}; set classes (the config key, or --classes) to {used[-1] + 1}, or check the CSV"
        ]
    return []


def _duplicate_problems(sources: Sequence[Source]) -> list[str]:
    """One line per image id listed by two sources (e.g. a pseudo-labelled image also in train.csv)."""
    problems = []
    seen: dict[str, str] = {}
    for annotations, _ in sources:
        for position, name in enumerate(annotations.image_ids):
            if name in seen:
                problems.append(f"{_where_listed(annotations, position)}: also listed in {seen[name]}")
            else:
                seen[name] = annotations.source
    return problems


# ------------------------------------------------------------------ entry points


def preflight(sources: Sequence[Source], mode: str = "quick", crop: tuple[int, int] | None = None) -> DataReport | None:
    """The start-up check of a data loader: raise before training if anything is wrong.

    Args:
        sources: ``(annotations, image paths)`` of the training CSV first, then
            any pseudo-label CSV.
        mode: ``quick``, ``full`` or ``off`` (``data_loader.args.check``; YAML
            reads a bare ``off`` as False and ``on`` as True, meaning ``off`` and ``quick``).
        crop: the training crop ``(h, w)``, for the log line saying how many images
            it pads and crops.

    Returns:
        The report, or None when ``mode`` is ``off``.

    Raises:
        DataError: listing the first problems and their count.
        ConfigError: an unknown mode.
    """
    if isinstance(mode, bool):
        mode = "quick" if mode else "off"
    if mode not in CHECK_MODES:
        raise ConfigError(f"data_loader.args.check: {mode!r} is not one of {', '.join(CHECK_MODES)}")
    if mode == "off":
        return None
    started = time.perf_counter()
    report = DataReport()
    for annotations, paths in sources:
        check_samples(annotations, paths, report, full=mode == "full")
    for warning in _class_problems(sources[0][0]):
        logger.warning("data check: %s", warning)
    report.problems += _duplicate_problems(sources)
    report.seconds = time.perf_counter() - started
    report.raise_if_problems(f"data_loader.args.check: {mode}; `sever check-data` lists them all")
    logger.info("data check (%s): %d images and their masks are fine (%.2f s); %s", mode, report.images,
                report.seconds, "; ".join(" ".join(line.split()) for line in report.shape_lines(crop)))
    return report


def check_dataset(data_dir: str | Path, csv: str = "train.csv", images: str = "train_images",
                  classes: int = 4, full: bool = False, format: str = "kaggle",
                  masks: str = "train_masks") -> DataReport:
    """Run every data check on a dataset folder without training (``sever check-data``).

    ``format`` is the data source of its labels (a Kaggle CSV by default; any registered
    mask source, :func:`~sever.data_loader.sources.mask_formats`). Unlike :func:`preflight`,
    label problems do not stop the check: they are reported and the images are still checked.

    Raises:
        DataError: the image folder is missing or holds no images; ConfigError: ``format`` is no mask source.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    image_dir = data_dir / images
    names = list_images(image_dir)
    report = DataReport()
    try:
        annotations, paths = _read_labels(data_dir, format, images, csv, masks, classes, names)
    except DataError as exc:
        report.problems.append(str(exc))
        report.masks_read = False
        label_file = data_dir / (masks if format == "mask_folder" else csv)
        annotations = Annotations(tuple(names), np.full((len(names), classes), "", object),
                                  np.zeros((len(names), classes), np.int64), str(label_file))
        paths = [image_dir / name for name in names]
    else:
        report.problems += _missing_problems(annotations, names, image_dir)
        report.problems += _class_problems(annotations)
    check_samples(annotations.subset(np.arange(len(paths))), paths, report, full)
    report.seconds = time.perf_counter() - started
    return report


def _read_labels(data_dir: Path, format: str, images: str, csv: str, masks: str, classes: int,
                 names: Sequence[str]) -> tuple[Annotations, list[Path]]:
    """The labels of ``format`` and their images: a Kaggle CSV lists the folder's images first (its rows
    for images not on disk after them, reported as missing); another source reads its own."""
    source = mask_source(format, "--format")
    if format == "kaggle":
        return read_rle_csv(data_dir / csv, classes, image_ids=names), [data_dir / images / name for name in names]
    return source.read(DataFolder(data_dir, classes, None, images=images, csv=csv, masks=masks))


def _missing_problems(annotations: Annotations, names: Sequence[str], image_dir: Path) -> list[str]:
    """One line per ImageId of the CSV without a file in ``image_dir``, naming its first row."""
    return [
        f"{_where_listed(annotations, annotations.index[name])}: no such image in {image_dir}"
        for name in annotations.ids_not_in(names)
    ]


def _where_listed(annotations: Annotations, position: int) -> str:
    """The CSV row that first lists image ``position``, or just the CSV and ImageId."""
    listed = np.flatnonzero(annotations.rows[position])
    if listed.size:
        return annotations.location(position, int(listed[0]))
    return f"{annotations.source} (ImageId {annotations.image_ids[position]!r})"
