"""Pascal VOC box annotations (``NAME.xml`` beside ``NAME.jpg``), as in NEU-DET.

Folder layouts found under a data directory, in this order (or name the two
folders yourself)::

    train_images/ + train_annotations/    the NEU-DET seed's layout, with
    valid_images/ + valid_annotations/    its validation split beside it
    JPEGImages/   + Annotations/          Pascal VOC
    images/       + annotations/          NEU-DET as distributed here

An image is paired with the XML file of the same stem. An image without an XML
file is defect-free (no boxes); an XML file without its image is an error.

Coordinates: VOC gives 1-based, inclusive pixel indices. sever's boxes are
float32 ``(x0, y0, x1, y1)`` pixel-edge coordinates (the convention of torchvision
and of the masks' connected components): ``(xmin - 1, ymin - 1, xmax, ymax)``,
so a box covering the whole W-wide image is ``0 .. W``. Labels are 0-based indices
into the config's ``class_names``. ``difficult`` objects are kept as ordinary boxes.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sever.data_loader.datasets import list_images
from sever.data_loader.mask_folder import check_orphans, image_stems
from sever.exceptions import DataError

logger = logging.getLogger(__name__)

VOC_LAYOUTS = (("train_images", "train_annotations"), ("JPEGImages", "Annotations"), ("images", "annotations"))
SEED_VALID = ("valid_images", "valid_annotations")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        boxes: float32 ``(N, 4)`` ``(x0, y0, x1, y1)`` in pixels, pixel-edge coordinates.
        labels: int64 ``(N,)`` 0-based class indices.
        size: ``(H, W)`` stated by the annotation file, or None when it states none.
        source: the XML file, for messages ("" for an image without one).
    """

    boxes: np.ndarray
    labels: np.ndarray
    size: tuple[int, int] | None = None
    source: str = ""

    @classmethod
    def empty(cls) -> ImageBoxes:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.labels)


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number") from None


def _stated_size(root: ET.Element, where: str) -> tuple[int, int] | None:
    """``(H, W)`` from ``<size>``, or None when absent or zero (some tools write 0)."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None
    width, height = _number(size, "width", f"{where} <size>"), _number(size, "height", f"{where} <size>")
    return (int(height), int(width)) if width > 0 and height > 0 else None


def parse_voc(path: str | Path, class_names: Sequence[str]) -> ImageBoxes:
    """Read one VOC XML file.

    Raises:
        DataError: malformed XML, a missing or non-numeric field, an unknown class
            name, or a box that is empty or outside the stated image size; the
            message names the file and the object (counted from 1).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: root element is <{root.tag}>, expected a VOC <annotation>")
    index = {name: k for k, name in enumerate(class_names)}
    size = _stated_size(root, str(path))
    boxes, labels = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: object {number}"
        name = _text(obj, "name", where)
        if name not in index:
            raise DataError(f"{where} has class {name!r}, which is not in class_names ({', '.join(class_names)})")
        box_element = obj.find("bndbox")
        if box_element is None:
            raise DataError(f"{where} ({name}): missing <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box_element, tag, f"{where} ({name})") for tag in _CORNERS)
        box = (max(xmin - 1, 0.0), max(ymin - 1, 0.0), xmax, ymax)
        check_box(box, (xmin, ymin, xmax, ymax), size, f"{where} ({name})")
        boxes.append(box)
        labels.append(index[name])
    return ImageBoxes(np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), size, str(path))


def check_box(box: Sequence[float], stated: Sequence[float], size: tuple[int, int] | None, where: str) -> None:
    """DataError unless ``box`` (pixel edges) has positive area inside an image of ``size`` ``(H, W)``.

    ``stated`` is the box as the file gives it, for the message.
    """
    shown = "xmin={:g} ymin={:g} xmax={:g} ymax={:g}".format(*stated)
    if min(stated) < 0:
        raise DataError(f"{where}: box {shown} has a negative coordinate")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{where}: box {shown} is empty (xmax < xmin or ymax < ymin)")
    if size is not None and (box[2] > size[1] or box[3] > size[0]):
        raise DataError(f"{where}: box {shown} lies outside the {size[1]}x{size[0]} (WxH) image")


def find_voc_folders(data_dir: str | Path, images: str | None = None,
                     annotations: str | None = None) -> tuple[Path, Path]:
    """``(image_dir, annotation_dir)`` under ``data_dir``: the named folders, or the first known layout.

    Raises:
        DataError: the named folders are missing, or no known layout is there.
    """
    data_dir = Path(data_dir)
    if images is not None or annotations is not None:
        if images is None or annotations is None:
            raise DataError("name both the image and the annotation folder, or neither")
        pair = data_dir / images, data_dir / annotations
        for folder in pair:
            if not folder.is_dir():
                raise DataError(f"folder not found: {folder}")
        return pair
    for image_name, annotation_name in VOC_LAYOUTS:
        if (data_dir / image_name).is_dir() and (data_dir / annotation_name).is_dir():
            return data_dir / image_name, data_dir / annotation_name
    known = "; ".join(f"{a}/ + {b}/" for a, b in VOC_LAYOUTS)
    raise DataError(f"{data_dir}: no VOC layout found (expected one of: {known})")


def seed_validation_folders(data_dir: str | Path, images: str | None = None,
                            annotations: str | None = None) -> tuple[str, str] | None:
    """:data:`SEED_VALID` when the training folders are the seed's ``train_images/`` and its
    validation pair stands beside them, else None."""
    data_dir = Path(data_dir)
    if find_voc_folders(data_dir, images, annotations)[0].name != "train_images":
        return None
    return SEED_VALID if all((data_dir / name).is_dir() for name in SEED_VALID) else None


def read_voc_folder(image_dir: str | Path, annotation_dir: str | Path,
                    class_names: Sequence[str]) -> tuple[list[Path], list[ImageBoxes]]:
    """Every image of ``image_dir`` with the boxes of its XML file in ``annotation_dir``.

    Returns:
        ``(paths, boxes)``: image paths in file-name order and their :class:`ImageBoxes`.

    Raises:
        DataError: an XML file without an image, two images with one stem, no XML
            file at all, or any error of :func:`parse_voc`.
    """
    image_dir, annotation_dir = Path(image_dir), Path(annotation_dir)
    names = list_images(image_dir)
    by_stem = image_stems(names, image_dir, ".xml")
    xml_stems = sorted(p.stem for p in annotation_dir.glob("*.xml"))
    if not xml_stems:
        raise DataError(f"no VOC annotation files (*.xml) in {annotation_dir}")
    check_orphans(annotation_dir, by_stem, image_dir, ".xml")
    annotated = set(xml_stems)
    boxes = [
        parse_voc(annotation_dir / f"{Path(name).stem}.xml", class_names) if Path(name).stem in annotated
        else ImageBoxes.empty()
        for name in names
    ]
    if len(annotated) < len(names):
        logger.info("%d of %d images in %s have no annotation file: treated as defect-free",
                    len(names) - len(annotated), len(names), image_dir)
    logger.info("read %d boxes of %d images from %s", sum(len(b) for b in boxes), len(names), annotation_dir)
    return [image_dir / name for name in names], boxes
