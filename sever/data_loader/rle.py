"""Run-length encoded masks: the Kaggle RLE codec.

This module is the only place that parses, decodes or encodes RLE strings; the
annotation table and its CSVs are in :mod:`sever.data_loader.annotations`.

**RLE convention (Kaggle).** A mask of shape ``(H, W)`` is numbered
column-major: pixel 1 is the top-left corner, pixel ``H`` the bottom of the
first column, pixel ``H + 1`` the top of the second column, up to ``H * W``.
A string ``"1 3 10 5"`` lists ``start length`` pairs of defect pixels with
1-indexed starts, sorted and not overlapping. Because numbering is
column-major, the columns ``[c0, c1)`` are the one contiguous pixel range
``[c0 * H, c1 * H)``, which lets a random crop decode only its window.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from sever.exceptions import RLEError

_DIGITS_AND_SPACES = re.compile(r"[0-9 ]*")
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_VALUE = 2**61  # far above any pixel count; keeps start + length inside int64


def _zero_one(size: int) -> np.ndarray:
    """uint8 ``0, 1, 0, 1, ...`` of length ``size``."""
    return (np.arange(size) & 1).astype(np.uint8)


_ZERO_ONE = _zero_one(4096)  # the values of _alternating for up to 2047 runs, made once


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


def _alternating(counts: np.ndarray) -> np.ndarray:
    """uint8 0/1 values ``0, 1, 0, 1, ...`` repeated ``counts`` times each (gap, run, gap, ..., gap).

    One ``np.repeat`` writes the whole mask (measured faster than scattering pixel
    indices, a +1/-1 cumsum, or zeroing and slice-assigning each run).
    """
    values = _ZERO_ONE[: counts.size] if counts.size <= _ZERO_ONE.size else _zero_one(counts.size)
    return np.repeat(values, counts)


def _well_formed_counts(rle: str, size: int) -> np.ndarray | None:
    """The gap and run lengths of a valid non-empty RLE of a ``size``-pixel mask, or None for anything else.

    The fast path of :func:`rle_decode`: ``(2R + 1,)`` int64 ``gap, run, gap, ..., run, gap``
    in pixels. Whatever it returns None for (malformed, empty, out of bounds, signed or
    tab-separated values) goes through :func:`rle_parse`, which accepts or explains it.
    """
    if not _DIGITS_AND_SPACES.fullmatch(rle):
        return None
    values = np.fromstring(rle, dtype=np.int64, sep=" ")
    if not values.size or values.size % 2 or values.max() > size:  # bounded: no int64 overflow below
        return None
    counts = np.empty(values.size + 1, np.int64)
    counts[0] = values[0] - 1  # starts are 1-indexed
    counts[1::2] = values[1::2]
    np.subtract(values[2::2], values[:-2:2] + values[1:-1:2], out=counts[2:-1:2])
    counts[-1] = size + 1 - values[-2] - values[-1]
    if counts.min() < 0 or values[1::2].min() < 1:  # unsorted, overlapping, past the end, or empty runs
        return None
    return counts


def _runs_to_flat(starts0: np.ndarray, lengths: np.ndarray, low: int, high: int) -> np.ndarray:
    """The pixels ``[low, high)`` of a column-major flat mask as a uint8 0/1 array.

    Only the runs overlapping the range are touched (see :func:`_alternating`).
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
    return _alternating(counts)


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
    if columns is None and isinstance(rle, str):
        height, width = _mask_size(shape)
        counts = _well_formed_counts(rle, height * width)
        if counts is not None:
            return _alternating(counts).reshape(width, height).T
    return _decode_transposed(rle, shape, columns).T


Runs = tuple[np.ndarray, np.ndarray]
"""One mask's runs ``(starts0, lengths)``: int64 ``(R,)`` arrays as :func:`rle_parse` returns them."""


def class_runs(encodings: Sequence, shape: Sequence[int], describe: Callable[[int], str]) -> list[Runs]:
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
    """Stack the masks of C classes given as runs (e.g. from :meth:`~sever.data_loader.annotations.Annotations.runs`).

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
    return decode_runs(class_runs(encodings, shape, lambda k: f"class {k + 1}"), shape, columns)


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
    return format_runs(*mask_runs(mask))


def format_runs(starts0: np.ndarray, lengths: np.ndarray) -> str:
    """Runs ``(starts0, lengths)`` (0-indexed, sorted, disjoint) as a Kaggle RLE string (1-indexed starts)."""
    pairs = np.empty(2 * starts0.size, np.int64)
    pairs[0::2] = starts0 + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))
