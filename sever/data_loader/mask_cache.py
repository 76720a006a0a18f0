"""Decoded masks kept between epochs: ``data_loader.args.mask_cache: off | memory | disk``.

An entry is the whole decoded mask of one image as :func:`~sever.data_loader.rle.column_planes`
gives it, uint8 ``(K, W, H)`` for the K classes the image has defects of (empty classes
are not stored, and a defect-free image has no entry): each class's columns as rows, so
a crop's columns ``[c0, c1)`` are one contiguous slab per class. It is keyed by a hash of
the image's size and its C RLE strings, not by its name, so an edited CSV row is a new
key (never a stale mask), entries of different CSVs or class counts cannot collide, and
identical masks share one entry.

- ``memory``: a dict in each process. DataLoader workers are forked with the parent's
  copy and each fills its own with the images it loads (the loaders keep their workers
  between epochs), so memory grows towards one copy of every distinct mask per worker
  (training and validation workers alike). Filling it in the parent before the workers fork would share one copy
  (copy-on-write), but would read every image's size and decode every mask before the
  first batch; filling it lazily costs nothing up front, and ``disk`` is the mode that
  shares one copy between processes.
- ``disk``: one ``.npy`` file per entry in ``cache_dir``, written atomically (a temporary
  file, then ``os.replace``); a crop reads only its columns' bytes, and every worker (and
  every later run) shares the files through the OS page cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib import format as npy_format

from sever.data_loader.rle import Runs, column_planes, decode_runs, stack_column_planes
from sever.exceptions import ConfigError, DataError

logger = logging.getLogger(__name__)

MASK_CACHE_MODES = ("off", "memory", "disk")
_KEY_VERSION = "sever-mask-cache-1"  # changes when the entry layout does


def mask_key(encodings: Sequence[str], shape: Sequence[int]) -> str:
    """The cache key of one image: a hex digest of its ``(H, W)``, C and C RLE strings."""
    text = f"{_KEY_VERSION}\n{shape[0]}x{shape[1]}x{len(encodings)}\n" + "\n".join(encodings)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class MaskCache:
    """Whole decoded masks by :func:`mask_key`, in a per-process dict or in ``.npy`` files.

    Args:
        directory: the folder of the ``.npy`` entries, created if absent; None keeps
            the entries in memory.

    Raises:
        ConfigError: ``directory`` cannot be created or written (``data_loader.args.cache_dir``).
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self.entries: dict[str, np.ndarray] = {}
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=self.directory):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"data_loader.args.cache_dir: cannot write the mask cache in {self.directory}: "
                    f"{exc.strerror or exc}"
                ) from None

    def masks(self, encodings: Sequence[str], runs: Sequence[Runs], shape: Sequence[int],
              columns: Sequence[int] | None = None) -> np.ndarray:
        """The image's masks, as ``decode_runs(runs, shape, columns)`` gives them.

        Args:
            encodings: the image's C RLE strings (the key).
            runs: their parsed runs, decoded on a miss.
            shape: ``(H, W)`` of the image in pixels.
            columns: optional ``(c0, c1)`` column window.

        Returns:
            C-contiguous uint8 0/1 ``(H, W', C)``, ``W' = c1 - c0`` with a window.
        """
        if not any(starts0.size for starts0, _ in runs):
            return decode_runs(runs, shape, columns)  # all zeros: nothing worth keeping
        first, stop = (0, shape[1]) if columns is None else columns
        slabs = iter(self._window(mask_key(encodings, shape), runs, shape, first, stop))
        planes = [next(slabs) if starts0.size else None for starts0, _ in runs]  # entries skip empty classes
        return stack_column_planes(planes, shape[0], stop - first)

    def _window(self, key: str, runs: Sequence[Runs], shape: Sequence[int], first: int, stop: int) -> np.ndarray:
        """Columns ``[first, stop)`` of the ``(K, W, H)`` entry of ``key``: ``(K, stop - first, H)``.

        On a miss the entry is decoded from ``runs`` and stored.
        """
        if self.directory is None:
            if key not in self.entries:
                self.entries[key] = column_planes(runs, shape)
            return self.entries[key][:, first:stop]
        path = self.directory / f"{key}.npy"
        expected = (sum(starts0.size > 0 for starts0, _ in runs), shape[1], shape[0])
        try:
            return _read_columns(path, expected, first, stop)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("mask cache: %s is unreadable (%s); rewriting it", path, exc)
        planes = column_planes(runs, shape)
        _write_atomically(path, planes)
        return planes[:, first:stop]


def _read_columns(path: Path, expected: tuple[int, int, int], first: int, stop: int) -> np.ndarray:
    """Read only the slabs ``[:, first:stop]`` of a uint8 ``(K, W, H)`` ``.npy`` file.

    Faster than ``np.load(path, mmap_mode="r")``, whose memory map costs more to
    set up than reading a crop's columns.

    Raises:
        ValueError: the file does not hold a C-ordered uint8 array of shape ``expected``.
    """
    planes, width, height = expected
    out = np.empty((planes, stop - first, height), np.uint8)
    with open(path, "rb") as stream:
        if npy_format.read_magic(stream) != (1, 0):
            raise ValueError("not a version 1.0 .npy file")
        header = npy_format.read_array_header_1_0(stream)
        if header != (expected, False, np.dtype(np.uint8)):
            raise ValueError(f"holds {header}, not a uint8 array {expected}")
        offset = stream.tell()
        for j in range(planes):
            stream.seek(offset + (j * width + first) * height)
            if stream.readinto(memoryview(out[j]).cast("B")) != out[j].nbytes:
                raise ValueError("truncated")
    return out


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """Save ``array`` to ``path`` (``.npy``) through a temporary file in the same folder.

    Raises:
        DataError: the file cannot be written (e.g. the disk is full), naming it.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the mask cache entry: {exc.strerror or exc} "
                        f"(data_loader.args.mask_cache: off turns the cache off)") from None


def open_mask_cache(mode: str | bool, directory: str | Path | None, default_directory: Path) -> MaskCache | None:
    """The cache that ``data_loader.args.mask_cache`` and ``cache_dir`` ask for; None for ``off``.

    Args:
        mode: ``off``, ``memory`` or ``disk`` (YAML reads a bare ``off`` as False).
        directory: ``cache_dir``, only for ``disk``; ``default_directory`` when None.

    Raises:
        ConfigError: an unknown mode, a ``cache_dir`` without ``disk``, or a folder
            that cannot be written.
    """
    if mode is False:
        mode = "off"
    if mode not in MASK_CACHE_MODES:
        raise ConfigError(f"data_loader.args.mask_cache: {mode!r} is not one of {', '.join(MASK_CACHE_MODES)}")
    if directory is not None and mode != "disk":
        raise ConfigError(f"data_loader.args.cache_dir is only used with mask_cache: disk, not {mode}")
    if mode == "off":
        return None
    if mode == "memory":
        return MaskCache()
    return MaskCache(directory or default_directory)
