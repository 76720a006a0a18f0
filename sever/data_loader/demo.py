"""A synthetic steel-surface dataset in the Kaggle Severstal layout.

``make_demo_data(out_dir)`` writes, in a few seconds::

    out_dir/
      train_images/<9 hex>.jpg   grayscale JPEGs, H x W (default 256 x 1600; with
                                 mixed_sizes each image its own size, see make_demo_data)
      test_images/<9 hex>.jpg
      train.csv                  ImageId,ClassId,EncodedPixels (defect rows only)
      sample_submission.csv      ImageId,EncodedPixels,ClassId (test images, all empty)
      pseudo.csv                 ImageId_ClassId,EncodedPixels: test pseudo-labels, the
                                 true masks mildly perturbed like ensemble predictions
      test_labels.csv            the true test masks (train format), to score a submission
      .sever-demo.json           what was written, so a complete dataset is not rebuilt
                                 and only files written here are ever replaced

The texture imitates rolled steel: streaks along the width (the rolling
direction), low-frequency illumination and fine grain, with a mean grey near
the Severstal normalisation mean 0.3439 * 255. Four defect kinds, one per
class: 1 pitted spots, 2 dark inclusions, 3 thin scratches (the most common,
as in Severstal), 4 broad patches of changed texture. Masks are the painted
pixels dilated by 2 pixels, computed before JPEG compression.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from sever.data_loader.annotations import Annotations, write_rle_csv
from sever.data_loader.rle import rle_encode
from sever.exceptions import ConfigError, DataError
from sever.utils.logger import info_once

log = logging.getLogger(__name__)

MIXED_MIN_SIDE = 16  # smallest side of a mixed-size demo image, in pixels

MANIFEST = ".sever-demo.json"
CSV_FORMATS = {"train.csv": "train", "sample_submission.csv": "submission", "pseudo.csv": "original",
               "test_labels.csv": "train"}
DEFECT_KINDS = ("pitted spots", "dark inclusions", "scratches", "patches")
CLASS_WEIGHTS = np.array([0.2, 0.15, 0.45, 0.2])  # how often each kind is drawn
CLASSES_PER_IMAGE = np.array([0.3, 0.55, 0.15])  # P(0, 1, 2 defect classes in an image)
PSEUDO_ACTIONS = np.array([0.5, 0.2, 0.2, 0.1])  # P(keep, erode, dilate, drop) per test mask
MEAN_GREY = 0.3439 * 255
JPEG_QUALITY = 90
_SPREAD = 2  # pixels by which a painted shape's soft edge and its mask reach beyond it
_KERNEL = np.ones((2 * _SPREAD + 1, 2 * _SPREAD + 1), np.uint8)


# ------------------------------------------------------------------ drawing


def _smooth_noise(rng: np.random.Generator, grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """float32 ``(height, width)`` noise of unit scale, smooth at the ``grid`` resolution."""
    coarse = rng.standard_normal(grid, dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def _grain(rng: np.random.Generator, height: int, width: int, spread: float) -> np.ndarray:
    """float32 ``(height, width)`` uniform pixel noise of zero mean and standard deviation ``spread``.

    Uniform rather than normal: several times faster to draw, and it looks the same.
    """
    grain = rng.random((height, width), dtype=np.float32)
    grain -= 0.5
    grain *= spread * 12**0.5
    return grain


def _steel_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 grey levels ``(height, width)``: rolling streaks, illumination and grain."""
    texture = _grain(rng, height, width, 4.0)
    texture += rng.standard_normal((height, 1), dtype=np.float32) * 3  # each row's tone
    texture += _smooth_noise(rng, (height, max(2, width // 80)), height, width) * 5  # streaks along the width
    texture += _smooth_noise(rng, (3, 8), height, width) * 12  # illumination
    texture += MEAN_GREY
    return texture


def _centre(rng: np.random.Generator, height: int, width: int) -> tuple[float, float]:
    """A random ``(y, x)`` away from the borders of a ``height x width`` region."""
    return rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width


def _apply(image: np.ndarray, mask: np.ndarray, canvas: np.ndarray, change: np.ndarray | float) -> None:
    """Add ``change`` (grey levels) to ``image`` through the softened ``canvas``; mark ``mask``.

    The soft edge spreads ``_SPREAD`` pixels; the mask is the canvas dilated
    by the same amount, so it covers every changed pixel.
    """
    soft = cv2.GaussianBlur(canvas.astype(np.float32), _KERNEL.shape, 0)
    image += soft * change
    mask |= cv2.dilate(canvas, _KERNEL)


# Each _draw_* function draws one defect kind as 1s into a zero uint8 canvas
# (H, w) and returns the grey-level change to make there (a number or an
# (H, w) array). ``scale`` is H / 256: sizes below are for 256-pixel-high images.


def _draw_pits(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> float:
    """Class 1: one or two clusters of small dark pits."""
    for _ in range(rng.integers(1, 3)):
        y, x = _centre(rng, *canvas.shape)
        count = rng.integers(15, 45)
        ys = rng.normal(y, 14 * scale, count).astype(int)
        xs = rng.normal(x, 35 * scale, count).astype(int)
        radii = np.maximum(1, (rng.uniform(1, 3.5, count) * scale).astype(int))
        for pit in zip(xs.tolist(), ys.tolist(), radii.tolist()):
            cv2.circle(canvas, pit[:2], pit[2], 1, -1)
    return -50.0


def _draw_inclusions(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> float:
    """Class 2: dark blobs elongated along the rolling direction (the width)."""
    y, x = _centre(rng, *canvas.shape)
    for _ in range(rng.integers(1, 4)):
        centre = (int(x + rng.normal(0, 60 * scale)), int(y + rng.normal(0, 20 * scale)))
        axes = (max(2, int(rng.uniform(25, 90) * scale)), max(1, int(rng.uniform(2.5, 6) * scale)))
        cv2.ellipse(canvas, centre, axes, rng.uniform(-4, 4), 0, 360, 1, -1)
    return -55.0


def _draw_scratches(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> float:
    """Class 3: one to three long thin lines at a random angle, all bright or all dark."""
    y, x = _centre(rng, *canvas.shape)
    angle = rng.uniform(0, np.pi)
    for _ in range(rng.integers(1, 4)):
        direction = angle + rng.normal(0, 0.05)
        half = rng.uniform(60, 220) * scale * np.array([np.cos(direction), np.sin(direction)])
        middle = np.array([x, y]) + rng.normal(0, 12 * scale, 2)
        ends = [tuple(int(v) for v in middle - half), tuple(int(v) for v in middle + half)]
        cv2.line(canvas, ends[0], ends[1], 1, max(2, int(rng.uniform(2, 4) * scale)))
    return 60.0 if rng.random() < 0.5 else -55.0


def _draw_patch(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> np.ndarray:
    """Class 4: a large irregular region, darker and with a blotchy, grainier texture."""
    height, width = canvas.shape
    y, x = _centre(rng, height, width)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 16))
    radii = rng.uniform(0.6, 1.0, 16)
    reach_x, reach_y = rng.uniform(50, 180) * scale, rng.uniform(30, 80) * scale
    corners = np.stack([x + reach_x * radii * np.cos(angles), y + reach_y * radii * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [corners.astype(np.int32)], 1)
    blotches = _smooth_noise(rng, (max(2, height // 16), max(2, width // 16)), height, width) * 12
    return blotches + _grain(rng, height, width, 6.0) - 30.0


DRAWERS = (_draw_pits, _draw_inclusions, _draw_scratches, _draw_patch)


def _pick_classes(rng: np.random.Generator, classes: int) -> np.ndarray:
    """0, 1 or 2 distinct 0-based class indices, in random order."""
    count = min(int(rng.choice(len(CLASSES_PER_IMAGE), p=CLASSES_PER_IMAGE)), classes)
    weights = CLASS_WEIGHTS[:classes] / CLASS_WEIGHTS[:classes].sum()
    return rng.choice(classes, size=count, replace=False, p=weights)


def _render_image(rng: np.random.Generator, height: int, width: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its masks.

    Each defect class present gets its own band of columns, so classes never overlap.

    Returns:
        ``(image, masks)``: uint8 grey levels ``(H, W)`` and uint8 0/1 masks ``(C, H, W)``.
    """
    image = _steel_texture(rng, height, width)
    masks = np.zeros((classes, height, width), np.uint8)
    present = _pick_classes(rng, classes)
    bands = np.linspace(0, width, len(present) + 1).astype(int)
    for k, first, stop in zip(present.tolist(), bands[:-1].tolist(), bands[1:].tolist()):
        canvas = np.zeros((height, stop - first), np.uint8)
        change = DRAWERS[k](rng, canvas, height / 256)
        _apply(image[:, first:stop], masks[k, :, first:stop], canvas, change)
    image += 0.5  # round, not truncate, when converting
    return np.clip(image, 0, 255, out=image).astype(np.uint8), masks


def _perturb_masks(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Pseudo-labels from true masks ``(C, H, W)``: each non-empty mask kept, eroded, dilated or dropped."""
    perturbed = masks.copy()
    for k in np.flatnonzero(masks.any(axis=(1, 2))).tolist():
        action = rng.choice(len(PSEUDO_ACTIONS), p=PSEUDO_ACTIONS)
        if action == 1:
            perturbed[k] = cv2.erode(masks[k], np.ones((3, 3), np.uint8))
        elif action == 2:
            perturbed[k] = cv2.dilate(masks[k], np.ones((3, 3), np.uint8))
        elif action == 3:
            perturbed[k] = 0
    return perturbed


# ------------------------------------------------------------------ writing


def _image_ids(seed: int, count: int) -> list[str]:
    """``count`` distinct Kaggle-like ids (9 hex digits + ``.jpg``), a function of ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return [f"{value:09x}.jpg" for value in rng.choice(16**9, size=count, replace=False).tolist()]


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    """Write a single-channel uint8 ``(H, W)`` image as a JPEG."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DataError(f"cannot encode {path} as JPEG")
    path.write_bytes(encoded.tobytes())


def _write_split(
    folder: Path, ids: list[str], first_index: int, params: dict, pseudo: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render and write the images of one split.

    Image ``i`` of the split is drawn from ``SeedSequence(seed, spawn_key=(1 + first_index + i,))``.

    Returns:
        RLE strings ``(N, C)`` of the true masks and, if ``pseudo``, of the perturbed ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    classes = params["classes"]
    truth = np.full((len(ids), classes), "", dtype=object)
    perturbed = truth.copy() if pseudo else None
    for row, name in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(1 + first_index + row,)))
        image, masks = _render_image(rng, *_image_shape(rng, params), classes)
        _write_jpeg(folder / name, image)
        truth[row] = [rle_encode(mask) for mask in masks]
        if pseudo:
            perturbed[row] = [rle_encode(mask) for mask in _perturb_masks(rng, masks)]
    return truth, perturbed


def _image_shape(rng: np.random.Generator, params: dict) -> tuple[int, int]:
    """``(H, W)`` of the next image: the set size, or with ``mixed_sizes`` a size drawn between a
    third of it (at least :data:`MIXED_MIN_SIDE`) and all of it, on each axis."""
    height, width = params["height"], params["width"]
    if not params.get("mixed_sizes"):
        return height, width
    return tuple(int(rng.integers(max(MIXED_MIN_SIDE, side // 3), side + 1)) for side in (height, width))


def _write_csvs(out: Path, train_ids: list[str], test_ids: list[str], train, test, pseudo) -> None:
    """The four CSV files (:data:`CSV_FORMATS`), all through :func:`write_rle_csv`.

    ``train``, ``test``, ``pseudo``: RLE strings ``(N, C)`` of the train masks,
    the true test masks and the test pseudo-labels.
    """
    contents = {
        "train.csv": (train_ids, train),
        "sample_submission.csv": (test_ids, np.full(test.shape, "", dtype=object)),
        "pseudo.csv": (test_ids, pseudo),
        "test_labels.csv": (test_ids, test),
    }
    for name, fmt in CSV_FORMATS.items():
        ids, encodings = contents[name]
        annotations = Annotations(tuple(ids), encodings, np.zeros(encodings.shape, np.int64), str(out / name))
        write_rle_csv(out / name, annotations, fmt)


# ------------------------------------------------------------------ manifest


def _planned_files(train_ids: list[str], test_ids: list[str]) -> list[str]:
    """Every file the dataset consists of, relative to the output directory."""
    images = [f"train_images/{name}" for name in train_ids] + [f"test_images/{name}" for name in test_ids]
    return images + list(CSV_FORMATS)


def _read_manifest(out: Path) -> dict | None:
    """The manifest of an earlier run, or None if there is none (or it is unreadable)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not {"params", "files", "complete"} <= set(manifest):
        return None
    return manifest


def _write_manifest(out: Path, params: dict, files: list[str], complete: bool) -> None:
    """Record what this run writes; ``complete`` only once everything is on disk."""
    text = json.dumps({"params": params, "complete": complete, "files": files}, indent=1, sort_keys=True)
    temporary = out / f"{MANIFEST}.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, out / MANIFEST)


def _foreign_files(out: Path, planned: list[str], ours: set[str]) -> list[str]:
    """Files in the dataset's places that an earlier run did not write."""
    present = [name for name in planned if (out / name).exists()]
    for folder in ("train_images", "test_images"):
        if (out / folder).is_dir():
            present += [f"{folder}/{path.name}" for path in (out / folder).iterdir()]
    return sorted(set(present) - ours)


def _is_complete(out: Path, manifest: dict | None) -> bool:
    return bool(manifest and manifest["complete"] and all((out / name).is_file() for name in manifest["files"]))


def _prepare(out: Path, params: dict, planned: list[str], overwrite: bool) -> bool:
    """Make ``out`` ready for writing; False if the requested dataset is already there.

    Raises:
        DataError: ``out`` holds files not written by :func:`make_demo_data`, or
            (without ``overwrite``) a complete demo dataset made with other settings.
    """
    manifest = _read_manifest(out)
    if _is_complete(out, manifest) and not overwrite:
        if manifest["params"] == params:
            return False
        raise DataError(
            f"{out} already holds a demo dataset made with {manifest['params']}; "
            f"pass overwrite=True (--overwrite) to replace it with {params}"
        )
    ours = set(manifest["files"]) if manifest else set()
    foreign = _foreign_files(out, planned, ours)
    if foreign:
        raise DataError(
            f"{out} already holds {len(foreign)} file(s) that make_demo_data did not write "
            f"(e.g. {foreign[0]}); choose an empty or new directory"
        )
    for stale in sorted(ours - set(planned)):
        (out / stale).unlink(missing_ok=True)
    _write_manifest(out, params, planned, complete=False)
    return True


# ------------------------------------------------------------------ entry point


def _check_params(n_train, n_test, seed, height, width, classes, mixed_sizes) -> dict:
    """The settings as a dict of ints (and ``mixed_sizes: True`` when set); ConfigError naming the first bad one."""
    least = {"n_train": 1, "n_test": 1, "seed": 0, "height": 32, "width": 32, "classes": 1}
    given = {"n_train": n_train, "n_test": n_test, "seed": seed, "height": height, "width": width, "classes": classes}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least[name]:
            raise ConfigError(f"{name}: must be an integer >= {least[name]}, got {value!r}")
    if classes > len(DEFECT_KINDS):
        raise ConfigError(f"classes: the demo data has {len(DEFECT_KINDS)} defect kinds, got {classes}")
    if not isinstance(mixed_sizes, bool):
        raise ConfigError(f"mixed_sizes: must be true or false, got {mixed_sizes!r}")
    checked = {name: int(value) for name, value in given.items()}
    return {**checked, "mixed_sizes": True} if mixed_sizes else checked  # older manifests lack the key


def make_demo_data(
    out_dir: str | os.PathLike,
    n_train: int = 256,
    n_test: int = 48,
    seed: int = 0,
    height: int = 256,
    width: int = 1600,
    classes: int = 4,
    overwrite: bool = False,
    mixed_sizes: bool = False,
) -> Path:
    """Write a synthetic dataset in the Kaggle Severstal layout (see the module docstring).

    Args:
        out_dir: directory to write into (created if missing).
        n_train, n_test: number of training and test images.
        seed: everything (ids, images, masks, pseudo-labels) is a function of it
            and the other settings; the CSVs are byte-identical between runs.
        height, width: image size in pixels (at least 32 each); with ``mixed_sizes``
            the largest size.
        classes: number of defect classes C, 1..4 (the first C kinds).
        overwrite: regenerate even if ``out_dir`` already holds a complete
            demo dataset. Files not written by this function are never touched.
        mixed_sizes: give every image its own size, each side drawn uniformly
            between a third of ``height``/``width`` (at least 16) and all of it,
            as datasets cropped at different sizes or from several cameras are.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: a setting out of range.
        DataError: ``out_dir`` holds other files in the dataset's places, or a
            complete demo dataset with other settings and ``overwrite`` is False.
    """
    params = _check_params(n_train, n_test, seed, height, width, classes, mixed_sizes)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the demo data directory {out}: {exc}") from None
    ids = _image_ids(seed, n_train + n_test)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    planned = _planned_files(train_ids, test_ids)
    if not _prepare(out, params, planned, overwrite):
        info_once(log, "%s already holds the demo dataset %s; not regenerating", out, params)
        return out
    started = time.perf_counter()
    train, _ = _write_split(out / "train_images", train_ids, 0, params, pseudo=False)
    test, pseudo = _write_split(out / "test_images", test_ids, n_train, params, pseudo=True)
    _write_csvs(out, train_ids, test_ids, train, test, pseudo)
    _write_manifest(out, params, planned, complete=True)
    log.info(
        "wrote %d train and %d test images (%s%dx%d, %d classes), %s to %s in %.1f s",
        n_train, n_test, "mixed sizes up to " if mixed_sizes else "", height, width, classes, ", ".join(CSV_FORMATS), out, time.perf_counter() - started,
    )
    return out
