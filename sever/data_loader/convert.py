"""Conversion between label formats: from any registered source of masks to a Kaggle CSV or a mask folder.

Every direction goes through :class:`~sever.data_loader.annotations.Annotations`
(one RLE implementation): the labels are read by their data source
(:func:`~sever.data_loader.sources.mask_source`) and written with
:func:`~sever.data_loader.annotations.write_rle_csv`, or each image's masks decoded
into PNGs. A round trip between the two writable formats (:data:`WRITABLE`) gives
identical masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sever.data_loader.annotations import Annotations, write_rle_csv
from sever.data_loader.mask_folder import read_mask_folder, write_mask_folder
from sever.data_loader.sources import DataFolder, mask_source, read_csv_folder

WRITABLE = ("kaggle", "mask_folder")  # the formats convert writes; it reads every registered mask source


def mask_folder_to_csv(image_dir: str | Path, mask_dir: str | Path, csv_path: str | Path, classes: int,
                       class_names: Sequence[str] | None = None, fmt: str = "train") -> Annotations:
    """Write the masks of ``mask_dir`` as a Kaggle CSV (``fmt``: ``train``, ``submission`` or ``original``).

    ImageIds are the image file names in ``image_dir``. Returns what was written.
    """
    annotations, _ = read_mask_folder(image_dir, mask_dir, classes, class_names)
    write_rle_csv(csv_path, annotations, fmt)
    return annotations


def csv_to_mask_folder(image_dir: str | Path, csv_path: str | Path, mask_dir: str | Path, classes: int,
                       class_names: Sequence[str] | None = None, layout: str = "labels") -> Annotations:
    """Write the masks of a Kaggle CSV (either format) as a mask folder for every image in ``image_dir``.

    Images without rows get empty masks (a zero label map). Returns what was written.

    Raises:
        DataError: the CSV names an image that is not in ``image_dir``, or (labels
            layout) two classes overlap in an image.
    """
    annotations, _ = read_csv_folder(Path(image_dir), Path(csv_path), classes)
    write_mask_folder(annotations, image_dir, mask_dir, layout, class_names)
    return annotations


def convert_labels(source: str, target: str, image_dir: str | Path, mask_dir: str | Path, csv_path: str | Path,
                   classes: int, class_names: Sequence[str] | None = None, layout: str = "labels",
                   csv_format: str = "train") -> Annotations:
    """Read the labels of the images in ``image_dir`` through the data source ``source`` and write them as
    ``target`` (one of :data:`WRITABLE`): the CSV ``csv_path`` (``csv_format``) or the mask folder
    ``mask_dir`` (``layout``). A source reads the paths it needs (``kaggle`` the CSV, ``mask_folder`` the
    mask folder). Returns what was written.

    Raises:
        ConfigError: ``source`` is no mask source or ``target`` is not writable; DataError: bad labels.
    """
    from sever.exceptions import ConfigError

    if target not in WRITABLE:
        raise ConfigError(f"--to: {target!r} cannot be written; writable: {', '.join(WRITABLE)}")
    folder = DataFolder(Path("."), classes, class_names, images=str(image_dir), csv=str(csv_path),
                        masks=str(mask_dir))
    annotations, _ = mask_source(source, "--from").read(folder)
    if target == "kaggle":
        write_rle_csv(csv_path, annotations, csv_format)
    else:
        write_mask_folder(annotations, image_dir, mask_dir, layout, class_names)
    return annotations
