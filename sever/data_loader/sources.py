"""Data sources: what turns a dataset folder into its labels and image paths.

A source is a function ``read(folder: DataFolder) -> (labels, paths)``: the N image
paths and their labels, either :class:`~sever.data_loader.annotations.Annotations`
``(N, C)`` of RLE masks (``labels == "masks"``) or N
:class:`~sever.data_loader.voc.ImageBoxes` (``labels == "boxes"``). Sources are
chosen by name from :data:`DATA_SOURCES`; ``data_loader.args.format`` names the
masks source of a :class:`~sever.data_loader.data_loaders.SteelDataLoader`::

    kaggle        images/ + an annotation CSV (either Kaggle format)
    mask_folder   images/ + PNG masks (:mod:`sever.data_loader.mask_folder`)
    voc           images/ + Pascal VOC XML boxes (:mod:`sever.data_loader.voc`), for detection

A new format is one function here (or in a module of its own) decorated with
``@register_source("name", labels="masks")``; it reads the fields of
:class:`DataFolder` it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.data_loader.datasets import list_images
from sever.data_loader.mask_folder import read_mask_folder
from sever.data_loader.voc import ImageBoxes, find_voc_folders, read_voc_folder
from sever.exceptions import ConfigError, DataError
from sever.registries import DATA_SOURCES
from sever.utils.registry import did_you_mean

LABEL_KINDS = ("masks", "boxes")


@dataclass(frozen=True)
class DataFolder:
    """Where a dataset's files are, as a data loader's config names them.

    Attributes:
        root: the dataset folder (``data_loader.args.data_dir``).
        classes: C, the number of defect classes (config key ``classes``).
        class_names: the config's ``class_names`` (mask folders' per-class folders,
            VOC object names), or None.
        images: the image folder relative to ``root`` (None: the source finds it).
        csv: the annotation CSV relative to ``root`` (``kaggle``).
        masks: the mask folder relative to ``root`` (``mask_folder``).
        annotations: the XML folder relative to ``root`` (``voc``; None: found).
    """

    root: Path
    classes: int
    class_names: Sequence[str] | None = None
    images: str | None = None
    csv: str | None = None
    masks: str | None = None
    annotations: str | None = None


@dataclass(frozen=True)
class DataSource:
    """A registered source: its name, the kind of labels it gives, and its reader."""

    name: str
    labels: str
    read: Callable[[DataFolder], tuple]


def register_source(name: str, labels: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``read(folder) -> (labels, paths)`` as the data source ``name``.

    Args:
        name: the format's name (``data_loader.args.format`` for masks).
        labels: ``"masks"`` (gives Annotations) or ``"boxes"`` (gives ImageBoxes).
    """
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {', '.join(LABEL_KINDS)}, got {labels!r}")

    def add(read: Callable) -> Callable:
        DATA_SOURCES.register(DataSource(name, labels, read), name=name)
        return read

    return add


def mask_formats() -> list[str]:
    """The label formats of segmentation data: the names of the registered sources giving RLE masks, sorted.

    The one list ``sever plan``, ``auto``, ``convert``, ``check-data`` and the CLI offer: a source
    registered with ``@register_source(name, labels="masks")`` is one of them.
    """
    return [entry for entry in DATA_SOURCES.names() if DATA_SOURCES.get(entry, "format").labels == "masks"]


def mask_source(name: str, key: str) -> DataSource:
    """The source of RLE masks called ``name``; ConfigError at ``key`` listing the mask formats otherwise."""
    formats = mask_formats()
    if name in formats:
        return DATA_SOURCES.get(name, key)
    if isinstance(name, str) and name in DATA_SOURCES:
        problem = f"{name!r} gives {DATA_SOURCES.get(name, key).labels}, not masks."
    else:
        problem = f"unknown data source {name!r}.{did_you_mean(name, formats)}"
    raise ConfigError(f"{key}: {problem} Mask formats: {', '.join(formats)}")


def read_csv_folder(image_dir: Path, csv_path: Path, classes: int,
                    listed_only: bool = False) -> tuple[Annotations, list[Path]]:
    """Annotations for every image in ``image_dir`` from ``csv_path``, and the image paths.

    ``listed_only``: only the images ``csv_path`` lists (pseudo-labels: a CSV in the
    original or submission format lists a defect-free image with empty masks, and an
    image it leaves out was not labelled).

    Raises:
        DataError: the folder or CSV is missing, or the CSV names images that are not on disk.
    """
    names = list_images(image_dir)
    if not csv_path.is_file():
        raise DataError(f"masks CSV not found: {csv_path}")
    annotations = read_rle_csv(csv_path, classes, image_ids=None if listed_only else names)
    missing = annotations.ids_not_in(names)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{csv_path}: {len(missing)} ImageId(s) have no image in {image_dir}: {shown}")
    return annotations, [image_dir / name for name in annotations.image_ids]


@register_source("kaggle", labels="masks")
def read_kaggle(folder: DataFolder) -> tuple[Annotations, list[Path]]:
    """``images`` with the masks of the annotation CSV ``csv`` (see :func:`read_csv_folder`)."""
    return read_csv_folder(folder.root / folder.images, folder.root / folder.csv, folder.classes)


@register_source("mask_folder", labels="masks")
def read_masks(folder: DataFolder) -> tuple[Annotations, list[Path]]:
    """``images`` with their PNG masks in ``masks`` (see :func:`~sever.data_loader.mask_folder.read_mask_folder`)."""
    return read_mask_folder(folder.root / folder.images, folder.root / folder.masks, folder.classes,
                            folder.class_names)


@register_source("voc", labels="boxes")
def read_voc(folder: DataFolder) -> tuple[list[ImageBoxes], list[Path]]:
    """The boxes of ``images`` from the XML files in ``annotations`` (both found when None).

    ``class_names`` must be given: the XML files name their objects.
    """
    image_dir, annotation_dir = find_voc_folders(folder.root, folder.images, folder.annotations)
    paths, boxes = read_voc_folder(image_dir, annotation_dir, folder.class_names)
    return boxes, paths

