"""A study's saved fold split: ``splits.json``, the validation fold of every labelled image.

Written once when the study starts (from the seed's stratified split of the data then,
:func:`sever.data_loader.data_loaders.fold_assignment`) and read by every fold, every
resume, the out-of-fold maps and their tuning, so an image added to the data folder later
never moves the others between folds. The file is meant to be read and edited by hand::

    {
      "folds": 5,
      "images": {"train_images/0002cc93b.jpg": 0, "train_images/00031f466.jpg": 3, ...}
    }

Images are named by their path relative to ``data_loader.args.data_dir``. A file that
does not name every image of the data once, a fold outside 0..K-1, an empty fold or an
image the data does not hold is refused, naming the file and the image. Images of the
data that the file lacks are refused too, unless they are assigned explicitly
(:func:`assign_new`, ``sever train -r STUDY --assign-new-images``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sever.exceptions import DataError

SHOWN = 5  # image names quoted in a message before "..."
ASSIGN_OPTION = "--assign-new-images"


def image_key(path: Path, data_dir: Path) -> str:
    """An image's name in the split: its path relative to the data folder (as is when outside it)."""
    try:
        return Path(path).relative_to(data_dir).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_splits(path: Path, assignment: dict[str, int], folds: int) -> Path:
    """Write ``assignment`` (image key -> fold) atomically, images sorted by name."""
    data = {"folds": folds, "images": dict(sorted(assignment.items()))}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_splits(path: Path) -> tuple[dict[str, int], int]:
    """The saved split ``(image key -> fold, folds)``, validated.

    Raises:
        DataError: no such file, not JSON, an image named twice, a fold that is not an
            integer in 0..K-1, or a fold without images; naming the file and the image.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicates(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the saved split: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise DataError(f'{path}: not a split file (needs "folds" and "images": {{IMAGE: FOLD}})')
    folds = data.get("folds")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise DataError(f"{path}: folds: an integer >= 2, got {folds!r}")
    for image, fold in data["images"].items():
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
            raise DataError(f"{path}: image {image}: fold must be one of 0..{folds - 1}, got {fold!r}")
    empty = sorted(set(range(folds)) - set(data["images"].values()))
    if empty:
        raise DataError(f"{path}: fold(s) {', '.join(map(str, empty))} of 0..{folds - 1} have no image")
    return data["images"], folds


def _refuse_duplicates(path: Path):
    """A JSON object hook that refuses a key given twice (JSON would keep the last silently)."""
    def pairs(items: list) -> dict:
        seen: dict = {}
        for key, value in items:
            if key in seen:
                raise DataError(f"{path}: image {key} is named twice; give each image one fold")
            seen[key] = value
        return seen
    return pairs


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return f"{shown}, ..." if len(keys) > SHOWN else shown


def new_images(assignment: dict[str, int], keys: Sequence[str]) -> list[str]:
    """The images of ``keys`` the split does not hold, sorted."""
    return sorted(set(keys) - set(assignment))


def fold_of_each(path: Path, keys: Sequence[str], folds: int | None = None) -> np.ndarray:
    """``(N,)`` the saved fold of each image of ``keys`` (the data's images, in its order).

    Raises:
        DataError: the file is invalid (:func:`read_splits`), was made for another number of
            folds, names images the data lacks, or lacks images of the data (naming how many,
            the first few, and the option that assigns them).
    """
    assignment, saved_folds = read_splits(path)
    if folds is not None and folds != saved_folds:
        raise DataError(f"{path}: a split into {saved_folds} folds, but the config has data_loader.args.folds: "
                        f"{folds}")
    unknown = sorted(set(assignment) - set(keys))
    if unknown:
        raise DataError(f"{path}: {len(unknown)} image(s) not in the data folder: {_names(unknown)}; remove them "
                        f"from the file")
    added = new_images(assignment, keys)
    if added:
        raise DataError(f"{path}: {len(added)} image(s) of the data folder have no fold (added since the split): "
                        f"{_names(added)}; sever train -r {path.parent} {ASSIGN_OPTION} gives each a fold, or "
                        f"remove them from the data folder")
    return np.array([assignment[key] for key in keys], dtype=np.int64)


def assign_new(assignment: dict[str, int], added: Sequence[str], folds: int) -> dict[str, int]:
    """``assignment`` with each image of ``added`` given a fold, deterministically.

    The new images, sorted by name, go one at a time to the fold with the fewest images
    (the lowest-numbered on a tie), so the folds stay even and the images already
    assigned never move.
    """
    result = dict(assignment)
    sizes = np.bincount(np.array(list(assignment.values()), dtype=np.int64), minlength=folds)
    for key in sorted(added):
        fold = int(np.argmin(sizes))
        result[key] = fold
        sizes[fold] += 1
    return result
