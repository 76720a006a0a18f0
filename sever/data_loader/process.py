"""Run-length encoded masks and the Severstal CSV formats.

This module is the only place that reads or writes RLE strings and annotation
CSVs.

**RLE convention (Kaggle).** A mask of shape ``(H, W)`` is numbered
column-major: pixel 1 is the top-left corner, pixel ``H`` the bottom of the
first column, pixel ``H + 1`` the top of the second column, up to ``H * W``.
A string ``"1 3 10 5"`` lists ``start length`` pairs of defect pixels with
1-indexed starts, sorted and not overlapping. Because numbering is
column-major, the columns ``[c0, c1)`` are the one contiguous pixel range
``[c0 * H, c1 * H)``, which lets a random crop decode only its window.

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
import math
import os
import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PureWindowsPath
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from sever.exceptions import DataError, RLEError

log = logging.getLogger(__name__)

CURRENT_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
ORIGINAL_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
FORMAT_COLUMNS = {
    "train": CURRENT_COLUMNS,
    "submission": ("ImageId", "EncodedPixels", "ClassId"),
    "original": ORIGINAL_COLUMNS,
}

_DIGITS_AND_SPACES = re.compile(r"[0-9 ]*")
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_VALUE = 2**61  # far above any pixel count; keeps start + length inside int64


# --------------------------------------------------------------------------- RLE


def _is_missing(rle: object) -> bool:
    """True for None, NaN, pandas NA and blank strings: all mean "no defect"."""
    if isinstance(rle, str):
        return not rle or rle.isspace()
    return rle is None or rle is pd.NA or (isinstance(rle, float) and math.isnan(rle))


def _checked_values(rle: str) -> np.ndarray:
    """Parse ``rle`` token by token, raising :class:`RLEError` at the first bad one."""
    values = []
    for position, token in enumerate(rle.split(), start=1):
        if not _SIGNED_INTEGER.fullmatch(token):
            raise RLEError(f"RLE value {position} ({token!r}) is not an integer")
        value = int(token)
        if abs(value) > _MAX_VALUE:
            raise RLEError(f"RLE value {position} ({token}) is too large to be a pixel number")
        values.append(value)
    return np.array(values, dtype=np.int64)


def _rle_values(rle: str) -> np.ndarray:
    """All integers of ``rle`` as int64; the fast path covers plain digits and spaces."""
    if _DIGITS_AND_SPACES.fullmatch(rle):
        values = np.fromstring(rle, dtype=np.int64, sep=" ")
        if values.size and values.max() <= _MAX_VALUE:
            return values
    return _checked_values(rle)


def _check_runs(starts: np.ndarray, lengths: np.ndarray) -> None:
    """Raise :class:`RLEError` unless starts >= 1, lengths >= 1, runs sorted and disjoint."""
    ends = starts + lengths  # one past the last pixel, 1-indexed
    if starts[0] >= 1 and lengths.min() >= 1 and (starts[1:] >= ends[:-1]).all():
        return  # sorted runs of positive length starting at >= 1 all start at >= 1
    _raise_run_error(starts, lengths, ends)


def _raise_run_error(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray) -> None:
    """Raise :class:`RLEError` describing the first bad start, length or run order."""
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        k = bad[0]
        raise RLEError(f"RLE run {k + 1} starts at {starts[k]}; starts are 1-indexed and must be >= 1")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        k = bad[0]
        raise RLEError(f"RLE run {k + 1} (start {starts[k]}) has length {lengths[k]}; lengths must be >= 1")
    k = np.flatnonzero(starts[1:] < ends[:-1])[0] + 1
    if starts[k] <= starts[k - 1]:
        problem = f"starts at {starts[k]}, not after run {k}'s start {starts[k - 1]}: runs are not sorted"
    else:
        problem = f"starts at {starts[k]}, inside run {k} (pixels {starts[k - 1]}..{ends[k - 1] - 1}): runs overlap"
    raise RLEError(f"RLE run {k + 1} {problem}")


def rle_parse(rle: str | float | None) -> tuple[np.ndarray, np.ndarray]:
    """Check the syntax of an RLE string and split it into runs, without a mask shape.

    Args:
        rle: ``"start length start length ..."`` with 1-indexed starts; ``""``,
            whitespace, None or NaN mean an empty mask.

    Returns:
        ``(starts0, lengths)``: int64 arrays of shape ``(R,)``, the 0-indexed
        first pixel and the pixel count of each of the R runs (R = 0 if empty).

    Raises:
        RLEError: not a string, a value that is not an integer, an odd number
            of values, a start < 1, a length < 1, or runs unsorted or overlapping.
    """
    if _is_missing(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    values = _rle_values(rle)
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}); expected 'start length' pairs")
    starts, lengths = values[0::2], values[1::2]
    _check_runs(starts, lengths)
    return starts - 1, lengths


def _mask_size(shape: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from ``shape``; ValueError unless two positive integers."""
    height, width = (int(n) for n in shape)
    if height < 1 or width < 1:
        raise ValueError(f"mask shape must be positive, got {tuple(shape)}")
    return height, width


def _column_window(columns: Sequence[int] | None, width: int) -> tuple[int, int]:
    """``(c0, c1)`` with ``0 <= c0 < c1 <= width``; all columns when ``columns`` is None."""
    if columns is None:
        return 0, width
    first, stop = (int(c) for c in columns)
    if not 0 <= first < stop <= width:
        raise ValueError(f"column window {tuple(columns)} is not inside 0..{width} with c0 < c1")
    return first, stop


def _check_bounds(starts0: np.ndarray, lengths: np.ndarray, height: int, width: int) -> None:
    """Raise :class:`RLEError` if the last run ends past pixel ``H * W``."""
    if starts0.size and starts0[-1] + lengths[-1] > height * width:
        k = starts0.size - 1
        raise RLEError(
            f"RLE run {k + 1} (start {starts0[k] + 1}, length {lengths[k]}) ends at pixel "
            f"{starts0[k] + lengths[k]}, past the {height * width} pixels of a {height}x{width} mask"
        )


def _runs_to_flat(starts0: np.ndarray, lengths: np.ndarray, low: int, high: int) -> np.ndarray:
    """The pixels ``[low, high)`` of a column-major flat mask as a uint8 0/1 array.

    Only the runs overlapping the range are touched. The array is built with
    one ``np.repeat`` of alternating 0/1 values by gap and run lengths
    (measured faster than scattering pixel indices or a +1/-1 cumsum).
    """
    ends = starts0 + lengths
    first = np.searchsorted(ends, low, side="right")
    stop = np.searchsorted(starts0, high, side="left")
    if first >= stop:
        return np.zeros(high - low, np.uint8)
    run_starts = starts0[first:stop] - low
    run_ends = ends[first:stop] - low
    run_starts[0] = max(run_starts[0], 0)  # runs are sorted and disjoint: only the first
    run_ends[-1] = min(run_ends[-1], high - low)  # and the last can stick out of the window
    counts = np.empty(2 * run_starts.size + 1, np.int64)
    counts[0] = run_starts[0]
    counts[2:-1:2] = run_starts[1:] - run_ends[:-1]
    counts[1::2] = run_ends - run_starts
    counts[-1] = (high - low) - run_ends[-1]
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts)


def _runs_transposed(starts0: np.ndarray, lengths: np.ndarray, height: int, columns: tuple[int, int]) -> np.ndarray:
    """The columns ``[c0, c1)`` of one mask's runs as rows: C-contiguous uint8 ``(c1 - c0, H)``."""
    first, stop = columns
    return _runs_to_flat(starts0, lengths, first * height, stop * height).reshape(stop - first, height)


def _decode_transposed(rle: str | float | None, shape: Sequence[int], columns: Sequence[int] | None) -> np.ndarray:
    """The mask's columns as rows: C-contiguous uint8 ``(W', H)``, ``W' = c1 - c0``."""
    height, width = _mask_size(shape)
    starts0, lengths = rle_parse(rle)
    _check_bounds(starts0, lengths, height, width)
    return _runs_transposed(starts0, lengths, height, _column_window(columns, width))


def rle_decode(rle: str | float | None, shape: Sequence[int], columns: Sequence[int] | None = None) -> np.ndarray:
    """Decode one RLE string into a mask.

    Args:
        rle: Kaggle RLE string; ``""``, None or NaN give an all-zero mask.
        shape: ``(H, W)`` of the full image in pixels.
        columns: optional ``(c0, c1)`` column window; only runs overlapping
            pixels ``[c0 * H, c1 * H)`` are decoded.

    Returns:
        uint8 0/1 array of shape ``(H, W)``, or ``(H, c1 - c0)`` with a column
        window (equal to ``rle_decode(rle, shape)[:, c0:c1]``). It is
        Fortran-ordered, the layout of the RLE itself, because making it
        C-contiguous costs more than decoding: numpy, ``torch.from_numpy`` and
        cv2 inputs take it as is; use :func:`decode_masks` (C order) or
        ``np.ascontiguousarray`` to draw into it in place with cv2.

    Raises:
        RLEError: malformed string (see :func:`rle_parse`) or a run past ``H * W``.
    """
    return _decode_transposed(rle, shape, columns).T


Runs = tuple[np.ndarray, np.ndarray]
"""One mask's runs ``(starts0, lengths)``: int64 ``(R,)`` arrays as :func:`rle_parse` returns them."""


def _class_runs(encodings: Sequence, shape: Sequence[int], describe: Callable[[int], str]) -> list[Runs]:
    """The parsed runs of each class encoding, checked to lie inside an ``(H, W)`` mask.

    Errors are prefixed by ``describe(k)`` for the class index ``k``.
    """
    height, width = _mask_size(shape)
    runs = []
    for k, rle in enumerate(encodings):
        try:
            starts0, lengths = rle_parse(rle)
            _check_bounds(starts0, lengths, height, width)
        except RLEError as exc:
            raise RLEError(f"{describe(k)}: {exc}") from None
        runs.append((starts0, lengths))
    return runs


def decode_runs(runs: Sequence[Runs], shape: Sequence[int], columns: Sequence[int] | None = None) -> np.ndarray:
    """Stack the masks of C classes given as runs (e.g. from :meth:`Annotations.runs`).

    Args:
        runs: C ``(starts0, lengths)`` pairs, already checked to lie inside ``shape``.
        shape: ``(H, W)`` of the full image in pixels.
        columns: optional ``(c0, c1)`` column window, as in :func:`rle_decode`.

    Returns:
        C-contiguous uint8 0/1 array of shape ``(H, W, C)`` (``W = c1 - c0`` with a window).
    """
    if not runs:
        raise ValueError("decode_runs needs the runs of at least one class")
    height, width = _mask_size(shape)
    first, stop = _column_window(columns, width)
    planes = [_runs_transposed(starts0, lengths, height, (first, stop)) if starts0.size else None
              for starts0, lengths in runs]
    return stack_column_planes(planes, height, stop - first)


def column_planes(runs: Sequence[Runs], shape: Sequence[int]) -> np.ndarray:
    """The masks of the classes that have runs, each with its columns as rows: the RLE's own order.

    Args:
        runs: C ``(starts0, lengths)`` pairs, already checked to lie inside ``shape``.
        shape: ``(H, W)`` of the full image in pixels.

    Returns:
        C-contiguous uint8 0/1 array ``(K, W, H)`` for the K classes with runs, in
        class order: the columns ``[c0, c1)`` of each are one contiguous slab
        ``[j, c0:c1]``. :func:`stack_column_planes` makes them an ``(H, W', C)`` mask.
    """
    height, width = _mask_size(shape)
    marked = [(starts0, lengths) for starts0, lengths in runs if starts0.size]
    planes = np.empty((len(marked), width, height), np.uint8)
    for j, (starts0, lengths) in enumerate(marked):
        planes[j] = _runs_transposed(starts0, lengths, height, (0, width))
    return planes


def stack_column_planes(planes: Sequence[np.ndarray | None], height: int, width: int) -> np.ndarray:
    """The C-contiguous uint8 ``(H, W, C)`` mask of C classes given by their columns.

    Args:
        planes: per class, its ``W`` columns as the rows of a uint8 ``(W, H)``
            array (e.g. a slice of :func:`column_planes`), or None for a class
            without defect pixels.
        height, width: ``H`` and ``W`` in pixels.
    """
    stacked = cv2.merge([
        np.zeros((height, width), np.uint8) if plane is None else cv2.transpose(np.asarray(plane))
        for plane in planes
    ])
    return stacked.reshape(height, width, len(planes))


def union_runs(runs: Sequence[Runs]) -> Runs:
    """The pixels marked in any of several masks, as sorted disjoint runs.

    Args:
        runs: ``(starts0, lengths)`` pairs of masks of one shape (each sorted and disjoint).

    Returns:
        ``(starts0, lengths)`` int64 ``(R,)``: the union; runs of different masks
        that overlap or touch are merged (a single mask's runs are returned as they are).
    """
    marked = [(starts0, lengths) for starts0, lengths in runs if starts0.size]
    if len(marked) <= 1:  # the usual case: one class or none, nothing to merge
        return marked[0] if marked else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    starts = np.concatenate([starts0 for starts0, _ in marked])
    ends = np.concatenate([starts0 + lengths for starts0, lengths in marked])
    order = np.argsort(starts, kind="stable")
    starts, reach = starts[order], np.maximum.accumulate(ends[order])
    firsts = np.flatnonzero(np.concatenate([[True], starts[1:] > reach[:-1]]))
    lasts = np.append(firsts[1:] - 1, starts.size - 1)
    return starts[firsts], reach[lasts] - starts[firsts]


def decode_masks(encodings: Sequence, shape: Sequence[int], columns: Sequence[int] | None = None) -> np.ndarray:
    """Decode one image's per-class RLE strings into a stacked mask.

    Args:
        encodings: C strings, one per class (``""``/None/NaN = no defect).
        shape: ``(H, W)`` of the full image in pixels.
        columns: optional ``(c0, c1)`` column window, as in :func:`rle_decode`.

    Returns:
        C-contiguous uint8 0/1 array of shape ``(H, W, C)`` (``W = c1 - c0`` with a window).

    Raises:
        RLEError: a malformed string; the message names its class (1-based).
    """
    return decode_runs(_class_runs(encodings, shape, lambda k: f"class {k + 1}"), shape, columns)


def mask_runs(mask: np.ndarray) -> Runs:
    """The runs of a mask, as :func:`rle_parse` returns them for ``rle_encode(mask)``.

    Args:
        mask: array of shape ``(H, W)``, any dtype; nonzero pixels are defect.

    Returns:
        ``(starts0, lengths)`` int64 ``(R,)``: 0-indexed column-major first
        pixels and pixel counts, touching runs merged.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    defect = (mask != 0).view(np.uint8)  # C- or F-ordered like ``mask``
    if defect.flags.f_contiguous:  # e.g. from rle_decode: already column-major
        column_major = defect.ravel(order="F")
    else:
        column_major = cv2.transpose(defect).reshape(-1)
    padded = np.zeros(column_major.size + 2, np.uint8)
    padded[1:-1] = column_major
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2] - edges[0::2]


def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask as a Kaggle RLE string.

    Args:
        mask: array of shape ``(H, W)``, any dtype; nonzero pixels are defect.

    Returns:
        ``"start length ..."`` with 1-indexed column-major starts, touching runs
        merged; ``""`` for an all-zero mask.
    """
    starts0, lengths = mask_runs(mask)
    pairs = np.empty(2 * starts0.size, np.int64)
    pairs[0::2] = starts0 + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


# ------------------------------------------------------------------- annotations


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
        return _class_runs(self.encodings[position], shape, lambda k: self.location(position, k))


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


def _format_rows(annotations: Annotations, fmt: str) -> list[tuple]:
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
            writer.writerows(_format_rows(annotations, fmt))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    log.debug("wrote %s (%s format, %d images)", path, fmt, len(annotations))
    return path
