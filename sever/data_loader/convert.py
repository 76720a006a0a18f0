"""Conversion between the Kaggle CSV format and the mask-folder format.

Both directions go through :class:`~sever.data_loader.annotations.Annotations`
(one RLE implementation): the mask folder is read into RLE strings and written
with :func:`~sever.data_loader.annotations.write_rle_csv`, or a CSV is read and each
image's masks decoded into PNGs. A round trip gives identical masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sever.data_loader.annotations import Annotations, write_rle_csv
from sever.data_loader.mask_folder import read_mask_folder, write_mask_folder
from sever.data_loader.sources import read_csv_folder


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
