"""The annotation table of a dataset and the Severstal CSV formats that hold it.

This module is the only place that reads or writes annotation CSVs; the RLE
strings in them are parsed and decoded by :mod:`sever.data_loader.rle`.

**CSV formats.**

- current (``"train"``): ``ImageId,ClassId,EncodedPixels``, one row per
  defect mask; images without rows are defect-free. The same columns in
  another order (``ImageId,EncodedPixels,ClassId``, the ``"submission"``
  format) list every image and class, with an empty string for no defect.
- original (``"original"``): ``ImageId_ClassId,EncodedPixels``, one row per
  image and class, e.g. ``0002cc93b.jpg_1``.

Rows are reported as ``row N`` with N counted from 1 at the first line after
the header (so row N is line N + 1 of the file).
"""

from __future__ import annotations

import csv
import logging
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PureWindowsPath
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from sever.data_loader.rle import Runs, class_runs, decode_runs, format_runs, rle_parse, union_runs
from sever.exceptions import DataError, RLEError
from sever.utils.config import OutputClasses

log = logging.getLogger(__name__)

CURRENT_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
ORIGINAL_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
FORMAT_COLUMNS = {
    "train": CURRENT_COLUMNS,
    "submission": ("ImageId", "EncodedPixels", "ClassId"),
    "original": ORIGINAL_COLUMNS,
}

def _where(source: str, row: int) -> str:
    """``"train.csv row 7 (line 8)"``: how messages point at a CSV data row."""
    return f"{source} row {row} (line {row + 1})"


@dataclass(frozen=True, eq=False, repr=False)
class Annotations:
    """The per-class RLE strings of N images and C classes, as read from a CSV.

    Attributes:
        image_ids: N image file names (plain names inside the data directory).
        encodings: read-only object array ``(N, C)`` of str; ``""`` = no defect.
        rows: read-only int64 array ``(N, C)``: the CSV row each entry came
            from (row 1 is the first line after the header), 0 where the CSV
            had no row for it.
        source: the CSV path, for messages (``"a.csv + b.csv"`` after :meth:`concat`).

    Two Annotations are equal when they list the same images in the same order
    with the same encodings; ``rows`` and ``source`` record provenance only.
    """

    image_ids: tuple[str, ...]
    encodings: np.ndarray
    rows: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        encodings = np.array(self.encodings, dtype=object)
        rows = np.array(self.rows, dtype=np.int64)
        ids = tuple(self.image_ids)
        if encodings.ndim != 2 or encodings.shape[0] != len(ids) or rows.shape != encodings.shape:
            raise ValueError(
                f"Annotations needs {len(ids)} image ids, encodings (N, C) and rows (N, C); "
                f"got encodings {encodings.shape} and rows {rows.shape}"
            )
        if not all(isinstance(rle, str) for rle in encodings.flat):
            raise ValueError("Annotations.encodings must hold only str ('' for no defect)")
        encodings.setflags(write=False)
        rows.setflags(write=False)
        object.__setattr__(self, "image_ids", ids)
        object.__setattr__(self, "encodings", encodings)
        object.__setattr__(self, "rows", rows)
        if len(self.index) != len(ids):
            twice = next(name for position, name in enumerate(ids) if self.index[name] != position)
            raise DataError(f"{self.source}: ImageId {twice!r} is listed twice")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Annotations):
            return NotImplemented
        same_shape = self.encodings.shape == other.encodings.shape
        return self.image_ids == other.image_ids and same_shape and bool((self.encodings == other.encodings).all())

    def __repr__(self) -> str:
        return (
            f"Annotations({len(self)} images, {self.n_classes} classes, "
            f"{int(self.has_defect().sum())} masks, source={self.source!r})"
        )

    @property
    def n_classes(self) -> int:
        """C, the number of defect classes."""
        return self.encodings.shape[1]

    @cached_property
    def index(self) -> dict[str, int]:
        """Position of each image id in :attr:`image_ids`."""
        return {name: position for position, name in enumerate(self.image_ids)}

    def has_defect(self) -> np.ndarray:
        """bool array ``(N, C)``: True where the image has a mask of that class."""
        return self.encodings != ""

    def n_defects(self) -> np.ndarray:
        """int array ``(N,)``: how many classes each image has a mask of."""
        return self.has_defect().sum(axis=1)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Annotations:
        """The images at ``indices`` (positions or an ``(N,)`` bool mask), in that order."""
        positions = np.asarray(indices)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64, copy=False)
        ids = tuple(self.image_ids[p] for p in positions.tolist())
        return Annotations(ids, self.encodings[positions], self.rows[positions], self.source)

    def for_outputs(self, outputs: OutputClasses) -> Annotations:
        """The classes a run's outputs are: ``(N, K)`` with the columns ``outputs.ids``, or ``(N, 1)``
        holding the union of every class's mask for an any-defect run.

        Raises:
            ValueError: ``outputs`` is for another class count.
        """
        if outputs.dataset != self.n_classes:
            raise ValueError(f"outputs of a {outputs.dataset}-class dataset for {self.n_classes}-class annotations")
        if outputs.ids is not None:
            columns = list(outputs.ids)
            return Annotations(self.image_ids, self.encodings[:, columns], self.rows[:, columns], self.source)
        union = np.array([[format_runs(*union_runs([rle_parse(rle) for rle in image]))] for image in self.encodings],
                         dtype=object).reshape(len(self), 1)
        # the union's row, for messages: the last CSV row among the classes it merges
        rows = np.where(self.has_defect(), self.rows, 0).max(axis=1, keepdims=True)
        return Annotations(self.image_ids, union, rows, self.source)

    def concat(self, other: Annotations) -> Annotations:
        """These images followed by ``other``'s; DataError if an image is in both."""
        if other.n_classes != self.n_classes:
            raise ValueError(f"cannot concatenate {self.n_classes}-class and {other.n_classes}-class annotations")
        shared = next((name for name in other.image_ids if name in self.index), None)
        if shared is not None:
            raise DataError(f"ImageId {shared!r} is in both {self.source} and {other.source}")
        sources = self.source if other.source == self.source else f"{self.source} + {other.source}"
        return Annotations(
            self.image_ids + other.image_ids,
            np.concatenate([self.encodings, other.encodings]),
            np.concatenate([self.rows, other.rows]),
            sources,
        )

    def ids_not_in(self, image_ids: Iterable[str]) -> tuple[str, ...]:
        """Ids listed here but absent from ``image_ids`` (e.g. CSV rows with no image on disk)."""
        present = set(image_ids)
        return tuple(name for name in self.image_ids if name not in present)

    def location(self, position: int, k: int) -> str:
        """Where entry ``(position, k)`` came from, for messages: file, row, image and class."""
        what = f"ImageId {self.image_ids[position]!r}, class {k + 1}"
        row = int(self.rows[position, k])
        return f"{_where(self.source, row)} ({what})" if row else f"{self.source} ({what})"

    def decode(self, position: int, shape: Sequence[int], columns: Sequence[int] | None = None) -> np.ndarray:
        """uint8 masks ``(H, W, C)`` of the image at ``position`` (see :func:`decode_masks`).

        A malformed or out-of-bounds string raises :class:`RLEError` naming its CSV row.
        """
        return decode_runs(self.runs(position, shape), shape, columns)

    def runs(self, position: int, shape: Sequence[int]) -> list[Runs]:
        """The C classes' runs ``(starts0, lengths)`` of the image at ``position``, without decoding.

        Args:
            shape: ``(H, W)`` of the image; every run must lie inside it.

        Raises:
            RLEError: a malformed or out-of-bounds string, naming its CSV row.
        """
        return class_runs(self.encodings[position], shape, lambda k: self.location(position, k))


# ------------------------------------------------------------------- CSV reading


def _read_columns(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The CSV's columns as object arrays of str and each data row's number; blank lines dropped."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise DataError(f"annotation CSV not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"annotation CSV {path} is empty: expected a header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read annotation CSV {path}: {exc}") from None
    columns = {str(name).strip(): frame[name].to_numpy(dtype=object) for name in frame.columns}
    filled = np.zeros(len(frame), bool)
    for values in columns.values():
        filled |= values != ""
    rows = np.arange(1, len(frame) + 1)
    return {name: values[filled] for name, values in columns.items()}, rows[filled]


def _split_image_class(values: np.ndarray, rows: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Split original-format ``ImageId_ClassId`` values on their last underscore."""
    parts = [value.rpartition("_") for value in values]
    for (_, underscore, _), value, row in zip(parts, values, rows):
        if not underscore:
            raise DataError(f"{_where(source, row)}: ImageId_ClassId {value!r} has no '_<ClassId>' suffix")
    ids = np.array([image_id for image_id, _, _ in parts], dtype=object)
    classes = np.array([class_id for _, _, class_id in parts], dtype=object)
    return ids, classes


def _identify_columns(
    columns: dict[str, np.ndarray], rows: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image ids, ClassId texts, encodings)`` from either CSV format, by its header."""
    if set(columns) == set(CURRENT_COLUMNS) and len(columns) == len(CURRENT_COLUMNS):
        return columns["ImageId"], columns["ClassId"], columns["EncodedPixels"]
    if set(columns) == set(ORIGINAL_COLUMNS) and len(columns) == len(ORIGINAL_COLUMNS):
        ids, classes = _split_image_class(columns["ImageId_ClassId"], rows, source)
        return ids, classes, columns["EncodedPixels"]
    raise DataError(
        f"{source}: found columns {','.join(columns) or '(none)'}, which match no annotation format; expected "
        f"{','.join(CURRENT_COLUMNS)} (current Kaggle format, any order) or {','.join(ORIGINAL_COLUMNS)} (original)"
    )


def _small_integer(text: str) -> int:
    """``text`` as an int if it is a plain ASCII integer below 10**9, else 0."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0


def _class_indices(texts: np.ndarray, rows: np.ndarray, source: str, n_classes: int) -> np.ndarray:
    """0-based class index of each row; DataError naming the row unless ClassId is in 1..n_classes."""
    numbers = np.array([_small_integer(text) for text in texts], dtype=np.int64)
    bad = np.flatnonzero((numbers < 1) | (numbers > n_classes))
    if bad.size:
        k = bad[0]
        raise DataError(
            f"{_where(source, rows[k])}: ClassId {texts[k]!r} is not an integer in 1..{n_classes} "
            f"(the config key `classes` sets {n_classes} classes)"
        )
    return numbers - 1


def _file_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name inside a directory, or None if it is."""
    if not name.strip():
        return "is empty"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "is an absolute path"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", ".."):
        return "names a directory"
    return None


def _check_image_ids(ids: np.ndarray, rows: np.ndarray, source: str) -> None:
    """DataError naming the first row whose ImageId is not a plain file name."""
    problems = {name: _file_name_problem(name) for name in set(ids)}
    for name, row in zip(ids, rows):
        if problems[name]:
            raise DataError(
                f"{_where(source, row)}: ImageId {name!r} {problems[name]}; "
                "ImageIds must be plain file names inside the data directory"
            )


def _check_rle_syntax(encodings: np.ndarray, rows: np.ndarray, source: str) -> None:
    """RLEError naming the row of the first malformed EncodedPixels value."""
    for rle, row in zip(encodings, rows):
        try:
            rle_parse(rle)
        except RLEError as exc:
            raise RLEError(f"{_where(source, row)}: EncodedPixels: {exc}") from None


def _check_unique_pairs(keys: np.ndarray, ids: np.ndarray, classes: np.ndarray, rows: np.ndarray, source: str) -> None:
    """DataError naming both rows of the first (image, class) pair listed twice."""
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeated.size:
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise DataError(
            f"{source}: ImageId {ids[second]!r} class {classes[second] + 1} is listed twice, "
            f"at row {rows[first]} and row {rows[second]}"
        )


def _image_order(ids: np.ndarray, image_ids: Sequence[str] | None) -> list[str]:
    """``image_ids`` (or none) followed by the CSV's other ids in order of first appearance."""
    listed = list(image_ids) if image_ids is not None else []
    if len(set(listed)) != len(listed):
        raise ValueError("image_ids lists an image twice")
    known = set(listed)
    return listed + [name for name in dict.fromkeys(ids) if name not in known]


def read_rle_csv(path: str | os.PathLike, n_classes: int, image_ids: Sequence[str] | None = None) -> Annotations:
    """Read an annotation CSV in either Kaggle format (detected from the header).

    Args:
        path: the CSV; current format ``ImageId,ClassId,EncodedPixels`` (any
            column order, only defect rows needed) or original format
            ``ImageId_ClassId,EncodedPixels``.
        n_classes: C, the number of defect classes (config key ``classes``).
        image_ids: the images that exist (e.g. the files of the image
            directory). They come first, in this order; those without rows
            are defect-free. None: the images are the ids the CSV lists.

    Returns:
        Annotations of shape ``(N, C)``. Ids the CSV lists but ``image_ids``
        lacks are not dropped: they follow the listed ones, and
        ``annotations.ids_not_in(image_ids)`` names them so the caller can
        report "ImageId in CSV but missing on disk".

    Raises:
        DataError: missing/empty/unreadable file, unknown columns, ClassId
            outside 1..C, an (image, class) pair listed twice, or an ImageId
            that is not a plain file name; the message names file and row.
        RLEError: malformed EncodedPixels syntax, naming file and row.
    """
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    source = str(path)
    columns, rows = _read_columns(Path(path))
    ids, class_texts, encodings = _identify_columns(columns, rows, source)
    classes = _class_indices(class_texts, rows, source, n_classes)
    _check_image_ids(ids, rows, source)
    encodings = np.array([rle.strip() for rle in encodings], dtype=object)
    _check_rle_syntax(encodings, rows, source)
    order = _image_order(ids, image_ids)
    index = {name: position for position, name in enumerate(order)}
    positions = np.array([index[name] for name in ids], dtype=np.int64)
    _check_unique_pairs(positions * n_classes + classes, ids, classes, rows, source)
    table = np.full((len(order), n_classes), "", dtype=object)
    row_table = np.zeros((len(order), n_classes), np.int64)
    table[positions, classes] = encodings
    row_table[positions, classes] = rows
    annotations = Annotations(tuple(order), table, row_table, source)
    log.debug("read %r", annotations)
    return annotations


# ------------------------------------------------------------------- CSV writing


def format_rows(annotations: Annotations, fmt: str) -> list[tuple]:
    """The data rows of ``annotations`` in ``fmt``, image by image, classes in order."""
    ids, encodings = annotations.image_ids, annotations.encodings
    if fmt == "train":
        return [(ids[i], k + 1, encodings[i, k]) for i, k in np.argwhere(annotations.has_defect()).tolist()]
    every = [(i, k) for i in range(len(ids)) for k in range(annotations.n_classes)]
    if fmt == "submission":
        return [(ids[i], encodings[i, k], k + 1) for i, k in every]
    return [(f"{ids[i]}_{k + 1}", encodings[i, k]) for i, k in every]


def write_rle_csv(path: str | os.PathLike, annotations: Annotations, fmt: str) -> Path:
    """Write ``annotations`` as a CSV, atomically (temporary file, then rename).

    Args:
        path: destination; missing parent directories are created.
        annotations: what to write.
        fmt: ``"train"`` (``ImageId,ClassId,EncodedPixels``, defect rows only),
            ``"submission"`` (``ImageId,EncodedPixels,ClassId``, every image and
            class, empty for none) or ``"original"`` (``ImageId_ClassId,EncodedPixels``,
            every image and class).

    Returns:
        ``path`` as a Path. Reading it back with :func:`read_rle_csv` gives equal
        annotations (pass ``image_ids`` for ``"train"``, which omits defect-free images).
    """
    if fmt not in FORMAT_COLUMNS:
        raise ValueError(f"unknown CSV format {fmt!r}; valid: {', '.join(FORMAT_COLUMNS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(FORMAT_COLUMNS[fmt])
            writer.writerows(format_rows(annotations, fmt))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    log.debug("wrote %s (%s format, %d images)", path, fmt, len(annotations))
    return path
