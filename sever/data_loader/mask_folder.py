"""Masks stored as PNG files beside the images (the mask-folder format).

Two layouts, told apart by what ``masks/`` holds::

    images/NAME.jpg   (or .png, .bmp, ...)
    masks/NAME.png              "labels": one label map per image, 0 = background,
                                k = class k (1..C); one class per pixel
    masks/<class>/NAME.png      "per-class": one binary mask per class and image; a missing
                                file means no defect of that class in that image

``<class>`` is the class's name from the config's ``class_names``, or its number
``1``..``C`` when the config has no names. A mask must have its image's height and width.
Per-class masks whose values are only 0 and 1 are taken as they are; any other
values (0/255 masks, anti-aliased edges, JPEG damage) are thresholded at half
the type's scale: a pixel >= 128 of 255 (32768 of 65535) is defect. Label maps
are not thresholded: every value must be a class number, so they must be saved
losslessly (PNG).

Reading encodes every mask as Kaggle RLE through :mod:`sever.data_loader.rle`
and returns :class:`~sever.data_loader.annotations.Annotations`, so the datasets,
samplers, splits and the CSV writer treat both formats alike; converting to a CSV
is writing those annotations. :func:`write_mask_folder` is the reverse (labels are
written as uint8 PNG, or uint16 above 255 classes; per-class masks as 0/255 PNG).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sever.data_loader.annotations import Annotations
from sever.data_loader.datasets import image_size, list_images
from sever.data_loader.rle import rle_encode
from sever.exceptions import DataError
from sever.utils.progress import progress

logger = logging.getLogger(__name__)

LAYOUTS = ("labels", "per-class")
MASK_SUFFIX = ".png"


def class_folders(classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """The per-class folder names: ``class_names``, or ``"1"`` .. ``"C"``."""
    if class_names is None:
        return [str(k + 1) for k in range(classes)]
    if len(class_names) != classes:
        raise DataError(f"{len(class_names)} class names given for {classes} classes")
    return [str(name) for name in class_names]


def detect_layout(mask_dir: str | Path, folders: Sequence[str]) -> str:
    """``"per-class"`` when ``mask_dir`` has a sub-folder named like a class, else ``"labels"``.

    Raises:
        DataError: ``mask_dir`` is not a folder.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise DataError(f"mask folder not found: {mask_dir}")
    return "per-class" if any((mask_dir / folder).is_dir() for folder in folders) else "labels"


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file's values as ``(H, W)`` uint8 or uint16, unscaled.

    A 3- or 4-channel file is accepted when its colour channels are equal (a grey
    mask saved as RGB).

    Raises:
        DataError: unreadable, or a colour image whose channels differ.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read mask: {exc.strerror or exc}") from exc
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None or mask.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: not a readable 8- or 16-bit mask image")
    if mask.ndim == 3:
        colours = mask[..., :3]
        if (colours != colours[..., :1]).any():
            raise DataError(f"{path}: a colour image; masks must be grey (one value per pixel)")
        mask = colours[..., 0]
    return np.ascontiguousarray(mask)


def binarise(mask: np.ndarray) -> np.ndarray:
    """A per-class mask as uint8 0/1: as is when already 0/1, else thresholded at half scale."""
    if mask.max(initial=0) <= 1:
        return mask.astype(np.uint8, copy=False)
    half = (int(np.iinfo(mask.dtype).max) + 1) // 2
    return (mask >= half).view(np.uint8) if mask.dtype == np.uint8 else (mask >= half).astype(np.uint8)


def label_planes(labels: np.ndarray, classes: int, path: Path) -> list[np.ndarray]:
    """``C`` uint8 0/1 planes ``(H, W)`` of a label map; DataError for a value above ``classes``."""
    top = int(labels.max(initial=0))
    if top > classes:
        found = ", ".join(map(str, np.unique(labels)[:10].tolist()))
        hint = " (0/255 values: a binary mask; put it in masks/<class>/ instead)" if top == 255 else ""
        raise DataError(f"{path}: label value {top} is not a class number 0..{classes} (values: {found}){hint}")
    return [(labels == k + 1).view(np.uint8) for k in range(classes)]


def image_stems(names: Sequence[str], image_dir: Path, suffix: str = MASK_SUFFIX) -> dict[str, str]:
    """Image file name by stem; DataError when two images share a stem (their ``suffix`` files would clash)."""
    stems: dict[str, str] = {}
    for name in names:
        stem = Path(name).stem
        if stem in stems:
            raise DataError(f"{image_dir}: {stems[stem]} and {name} would share the file {stem}{suffix}")
        stems[stem] = name
    return stems


def check_orphans(folder: Path, stems: dict[str, str], image_dir: Path, suffix: str = MASK_SUFFIX) -> None:
    """DataError naming the ``suffix`` files in ``folder`` whose stem is no image's in ``image_dir``."""
    orphans = sorted(p.name for p in folder.glob(f"*{suffix}") if p.stem not in stems)
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        raise DataError(f"{folder}: {len(orphans)} file(s) have no image in {image_dir}: {shown}")


def _checked_size(mask: np.ndarray, path: Path, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """``mask`` if it has the image's ``(H, W)``, else a DataError naming both files."""
    if mask.shape != size:
        raise DataError(f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image {image_path} is "
                        f"{size[0]}x{size[1]}")
    return mask


def _image_planes(image_path: Path, mask_dir: Path, layout: str, folders: list[str], stem: str) -> list[np.ndarray]:
    """The ``C`` uint8 0/1 planes ``(H, W)`` of one image."""
    size = image_size(image_path)
    if layout == "labels":
        path = mask_dir / f"{stem}{MASK_SUFFIX}"
        if not path.is_file():
            raise DataError(f"{image_path.name} has no label map {path} (every image needs one; 0 = background)")
        return label_planes(_checked_size(read_mask(path), path, image_path, size), len(folders), path)
    paths = [mask_dir / folder / f"{stem}{MASK_SUFFIX}" for folder in folders]
    return [
        binarise(_checked_size(read_mask(path), path, image_path, size)) if path.is_file() else np.zeros(size, np.uint8)
        for path in paths
    ]


def read_mask_folder(image_dir: str | Path, mask_dir: str | Path, classes: int,
                     class_names: Sequence[str] | None = None) -> tuple[Annotations, list[Path]]:
    """Every image of ``image_dir`` with its masks from ``mask_dir``, as RLE annotations.

    Args:
        image_dir: the images (any of sever's image extensions).
        mask_dir: label maps or per-class folders (the layout is detected, see the module docstring).
        classes: C, the number of defect classes.
        class_names: the per-class folder names (default ``1`` .. ``C``).

    Returns:
        ``(annotations, paths)``: Annotations ``(N, C)`` keyed by image file name
        (source ``mask_dir``) and the N image paths, in file-name order.

    Raises:
        DataError: a missing folder or label map, a mask without an image, a mask
            whose size differs from its image's, or a value that is no class.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    names = list_images(image_dir)
    stems = image_stems(names, image_dir)
    folders = class_folders(classes, class_names)
    layout = detect_layout(mask_dir, folders)
    for folder in [mask_dir] if layout == "labels" else [mask_dir / f for f in folders if (mask_dir / f).is_dir()]:
        check_orphans(folder, stems, image_dir)
    encodings = np.empty((len(names), classes), dtype=object)
    for i, name in enumerate(progress(names, f"reading {mask_dir.name}")):
        planes = _image_planes(image_dir / name, mask_dir, layout, folders, Path(name).stem)
        encodings[i] = [rle_encode(plane) for plane in planes]
    annotations = Annotations(tuple(names), encodings, np.zeros(encodings.shape, np.int64), str(mask_dir))
    logger.info("read %d images with %s masks from %s (%d masks)", len(names), layout, mask_dir,
                int(annotations.has_defect().sum()))
    return annotations, [image_dir / name for name in names]


def _write_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(MASK_SUFFIX, mask)
    if not ok:
        raise DataError(f"{path}: could not encode the mask as PNG")
    data.tofile(path)


def label_map(masks: np.ndarray, image_id: str, class_names: Sequence[str]) -> np.ndarray:
    """One image's ``(H, W, C)`` 0/1 masks as a ``(H, W)`` label map (uint8, or uint16 above 255 classes).

    Raises:
        DataError: two classes share a pixel, which a label map cannot hold.
    """
    overlap = masks.sum(axis=2, dtype=np.int64) > 1
    if overlap.any():
        y, x = np.argwhere(overlap)[0]
        both = [class_names[k] for k in np.flatnonzero(masks[y, x])]
        raise DataError(
            f"{image_id}: classes {' and '.join(both)} overlap at {int(overlap.sum())} pixel(s) (first at row {y}, "
            f"column {x}); a label map holds one class per pixel: use the per-class layout"
        )
    dtype = np.uint8 if masks.shape[2] <= 255 else np.uint16
    return (masks.astype(dtype) * np.arange(1, masks.shape[2] + 1, dtype=dtype)).sum(axis=2, dtype=dtype)


def write_mask_folder(annotations: Annotations, image_dir: str | Path, mask_dir: str | Path,
                      layout: str = "labels", class_names: Sequence[str] | None = None) -> Path:
    """Write ``annotations`` as a mask folder for the images in ``image_dir``.

    Args:
        annotations: ``(N, C)`` RLE annotations keyed by image file name.
        image_dir: where the images are (their sizes give the mask sizes).
        mask_dir: the folder to write; existing files with the same names are replaced.
        layout: ``"labels"`` (one label map per image, every image) or ``"per-class"``
            (0/255 masks in ``mask_dir/<class>/``, only where the class is present).
        class_names: per-class folder names (default ``1`` .. ``C``).

    Returns:
        ``mask_dir`` as a Path. :func:`read_mask_folder` reads back the same annotations.

    Raises:
        DataError: an image is missing, or (labels) two classes overlap.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown mask layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    folders = class_folders(annotations.n_classes, class_names)
    image_stems(annotations.image_ids, image_dir)
    for i, name in enumerate(progress(annotations.image_ids, f"writing {mask_dir.name}")):
        masks = annotations.decode(i, image_size(image_dir / name))
        stem = Path(name).stem
        if layout == "labels":
            _write_png(mask_dir / f"{stem}{MASK_SUFFIX}", label_map(masks, name, folders))
            continue
        for k in np.flatnonzero(annotations.has_defect()[i]):
            _write_png(mask_dir / folders[k] / f"{stem}{MASK_SUFFIX}", masks[..., k] * np.uint8(255))
    logger.info("wrote %s masks of %d images to %s", layout, len(annotations), mask_dir)
    return mask_dir
