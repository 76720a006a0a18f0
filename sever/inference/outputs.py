"""What prediction writes: the submission CSV, probability maps and overlay images.

- Submissions go through :func:`sever.data_loader.annotations.write_rle_csv`:
  ``current`` is Kaggle's ``ImageId,EncodedPixels,ClassId`` (one row per image
  and class, empty EncodedPixels for none), ``original`` the first
  ``ImageId_ClassId,EncodedPixels``.
- ``--save-probs DIR`` writes ``DIR/<image name>.npz`` per image, compressed:
  ``probs`` uint8 ``(C, H, W)`` (``q`` stands for ``q / 255``) and, with a
  classifier, ``class_probs`` float32 ``(C,)``. ``sever tune --probs`` and
  ``sever predict --from-probs`` (:class:`SavedProbabilities`) read them.
- ``--visualize DIR`` (:class:`Overlays`) writes ``DIR/<image stem>.jpg``: the
  image with the predicted masks filled in class colours, the true masks
  outlined when labels are given, and a legend below it.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.rle import rle_encode
from sever.exceptions import DataError
from sever.inference.predictor import (
    PredictionBatch,
    Predictor,
    average_probabilities,
    check_average,
    quantize,
)
from sever.model.postprocess import PROB_SCALE, PostProcessing
from sever.utils.config import OutputClasses
from sever.utils.progress import progress
from sever.utils.visualization import class_colour, outline_masks, overlay_masks

logger = logging.getLogger(__name__)

SUBMISSION_FORMATS = {"current": "submission", "original": "original"}  # CLI name -> annotations.py CSV format
PROBS_SUFFIX = ".npz"
PIPELINE_DEPTH = 2  # predicted batches waiting for the writer thread; bounds the memory they hold


class Submission:
    """Collects the RLE strings of predicted masks, image by image, then writes the CSV.

    Args:
        classes: channels of the masks added.
        outputs: which dataset classes those channels are. A run of some classes
            (``train_classes: [3]``) writes every class of its dataset, empty where it predicts
            none, so its ClassIds are the dataset's; None (or every class, or one any-defect
            channel): channel k is ClassId k + 1.
    """

    def __init__(self, classes: int, outputs: OutputClasses | None = None):
        self.classes = classes
        self.columns = None if outputs is None or outputs.any_defect or outputs.complete else outputs
        self.image_ids: list[str] = []
        self.encodings: list[list[str]] = []

    def add(self, names: Sequence[str], masks: np.ndarray) -> None:
        """Add images ``names`` with their masks ``(B, C, H, W)`` bool."""
        for name, image_masks in zip(names, masks):
            self.image_ids.append(name)
            self.encodings.append([rle_encode(mask) for mask in image_masks])

    def annotations(self) -> Annotations:
        encodings = np.array(self.encodings, dtype=object).reshape(len(self.image_ids), self.classes)
        if self.columns is not None:
            every_class = np.full((len(self.image_ids), self.columns.dataset), "", dtype=object)
            every_class[:, list(self.columns.ids)] = encodings
            encodings = every_class
        return Annotations(tuple(self.image_ids), encodings, np.zeros(encodings.shape, np.int64), "prediction")

    def write(self, path: str | Path, fmt: str = "current") -> Path:
        """Write the CSV (``fmt``: ``current`` or ``original``), atomically."""
        return write_rle_csv(path, self.annotations(), SUBMISSION_FORMATS[fmt])


def save_probabilities(directory: Path, name: str, probs: np.ndarray, class_probs: np.ndarray | None = None) -> Path:
    """Write one image's uint8 probabilities ``(C, H, W)`` (and classifier ``(C,)``) as ``name.npz``."""
    path = Path(directory) / f"{name}{PROBS_SUFFIX}"
    arrays = {"probs": np.ascontiguousarray(probs, dtype=np.uint8)}
    if class_probs is not None:
        arrays["class_probs"] = np.asarray(class_probs, dtype=np.float32)
    np.savez_compressed(path, **arrays)
    return path


def probability_files(directory: str | Path) -> list[Path]:
    """The ``.npz`` files of a ``--save-probs`` folder, sorted by name.

    Raises:
        DataError: the folder is missing or has none.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"probability folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.name.endswith(PROBS_SUFFIX) and p.is_file())
    if not files:
        raise DataError(f"no {PROBS_SUFFIX} probability files in {directory} (write them with sever predict --save-probs)")
    return files


def image_name(path: Path) -> str:
    """The image file name a probability file belongs to (``abc.jpg.npz`` -> ``abc.jpg``)."""
    return path.name[: -len(PROBS_SUFFIX)]


def load_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probs uint8 (C, H, W), class_probs float32 (C,) or None)`` from one ``.npz`` file.

    Raises:
        DataError: unreadable file or unexpected contents, naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = data["probs"]
            class_probs = data["class_probs"] if "class_probs" in data.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a sever probability file: {exc}") from None
    if probs.dtype != np.uint8 or probs.ndim != 3:
        raise DataError(f"{path}: expected uint8 probabilities (C, H, W), got {probs.dtype} {probs.shape}")
    return probs, class_probs


LEGEND_ROW = 26  # pixels per legend row
OVERLAY_QUALITY = 90  # JPEG quality of the overlays: a few tens of kB where a PNG took about 0.6 MB
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def legend(names: Sequence[str], width: int, note: str = "") -> np.ndarray:
    """A dark ``(rows * 26, width, 3)`` uint8 RGB strip: a colour box and the name of each class, then ``note``."""
    entries, x, row = [], 6, 0
    for index, name in enumerate([*names, note] if note else names):
        text_width = cv2.getTextSize(name, _FONT, 0.5, 1)[0][0]
        needed = 22 + text_width + 14
        if x > 6 and x + needed > width:
            x, row = 6, row + 1
        entries.append((index, name, x, row))
        x += needed
    strip = np.full(((row + 1) * LEGEND_ROW, width, 3), 32, np.uint8)
    for index, name, x, row in entries:
        top = row * LEGEND_ROW + 6
        if index < len(names):
            cv2.rectangle(strip, (x, top), (x + 14, top + 14), class_colour(index), thickness=-1)
        cv2.putText(strip, name, (x + 20, top + 12), _FONT, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return strip


class Overlays:
    """``--visualize DIR``: one ``DIR/<image stem>.jpg`` per image, the predicted masks filled in class colours.

    With ``labels`` the true masks are outlined over them in the same colours. Saved
    probabilities hold no image, so predictions from them are drawn on the image of the
    same name in ``image_dir``.

    Args:
        directory: output folder (created).
        class_names: C labels for the legend.
        names: the images that will be drawn (checked against ``labels`` and ``image_dir``).
        labels: Kaggle CSV (either format) of the true masks; images it does not list are defect-free.
        image_dir: where to read the images when the predictions come without them.

    Raises:
        DataError: a folder that cannot be created, an unreadable CSV, or images missing from ``image_dir``.
    """

    def __init__(self, directory: str | Path, class_names: Sequence[str], names: Sequence[str],
                 labels: str | Path | None = None, image_dir: str | Path | None = None):
        self.directory = _make_dir(directory)
        self.class_names = list(class_names)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        if self.image_dir is not None:
            missing = sorted(set(names) - set(list_images(self.image_dir)))
            if missing:
                raise DataError(f"-i {self.image_dir}: no image for {len(missing)} predicted image(s), "
                                f"e.g. {missing[0]}")
        self.labels = None
        if labels is not None:
            self.labels = read_rle_csv(labels, len(self.class_names), image_ids=names)
            if not self.labels.has_defect()[: len(names)].any():
                logger.warning("--labels %s: no defect in any of the %d images drawn", labels, len(names))

    def write(self, name: str, image: np.ndarray | None, masks: np.ndarray) -> Path:
        """Draw image ``name``: ``image (H, W)`` uint8 (None: read from ``image_dir``), ``masks (C, H, W)`` bool."""
        if image is None:
            image = read_grey(self.image_dir / name)
        drawn = overlay_masks(image, masks)
        note = ""
        if self.labels is not None:
            truth = self.labels.decode(self.labels.index[name], image.shape).transpose(2, 0, 1)
            drawn = outline_masks(drawn, truth)
            note = "filled: prediction, outline: truth"
        rgb = np.concatenate([drawn, legend(self.class_names, image.shape[1], note)], axis=0)
        path = self.directory / f"{Path(name).stem}.jpg"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_QUALITY]):
            raise DataError(f"cannot write {path}")
        return path


@dataclass
class PredictionSummary:
    """What :func:`write_predictions` did: images, images with each class, time taken."""

    images: int
    class_images: np.ndarray
    seconds: float
    output: Path
    submission: Submission | None = None  # the rows, kept when the CSV is not written (write_csv=False)

    def describe(self, class_names: Sequence[str]) -> str:
        per_class = ", ".join(f"{name} {count}" for name, count in zip(class_names, self.class_images.tolist()))
        rate = self.images / max(self.seconds, 1e-9)
        return (f"wrote {self.output}: {self.images} images in {self.seconds:.1f} s ({rate:.2f} images/s); "
                f"images with defects per class: {per_class}")


def _make_dir(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return Path(path)


def write_predictions(batches: Iterable[PredictionBatch], settings: PostProcessing, output: str | Path,
                      fmt: str = "current", save_probs: str | Path | None = None,
                      overlays: Overlays | None = None, depth: int = PIPELINE_DEPTH,
                      write_csv: bool = True, outputs: OutputClasses | None = None) -> PredictionSummary:
    """Post-process ``batches`` and write the submission (and probabilities, overlays).

    While the calling thread computes the next batches (the forward passes), one writer
    thread post-processes, RLE-encodes and writes the finished ones, in order, so the
    rows come out in the order of ``batches`` whatever the timing.

    Args:
        batches: predictions in submission order.
        settings: post-processing settings, one value per class.
        output: submission CSV path; ``fmt`` ``current`` or ``original``.
        save_probs: folder for one ``.npz`` of uint8 probabilities per image, or None.
        overlays: draws one overlay per image, or None.
        depth: batches that may wait for the writer thread (the next one is computed
            meanwhile); 0 writes each batch in the calling thread before the next is computed.
        write_csv: False keeps the rows in the summary's ``submission`` instead of writing
            ``output`` (a shard of a multi-process prediction, :mod:`~sever.inference.sharding`).
        outputs: the dataset classes of the predicted channels (:class:`Submission`), or None.
    """
    started = time.perf_counter()
    _make_dir(Path(output).parent)
    probs_dir = _make_dir(save_probs)
    submission = Submission(settings.classes, outputs)
    class_images = np.zeros(settings.classes, np.int64)

    def write(batch: PredictionBatch) -> None:
        masks = settings.apply(batch.probs, batch.class_probs).cpu().numpy()
        submission.add(batch.names, masks)
        class_images[:] += masks.any(axis=(2, 3)).sum(axis=0)
        if probs_dir is not None:
            probs = batch.probs.cpu().numpy()
            class_probs = batch.class_probs.cpu().numpy() if batch.class_probs is not None else [None] * len(probs)
            for name, image_probs, image_class_probs in zip(batch.names, probs, class_probs):
                save_probabilities(probs_dir, name, image_probs, image_class_probs)
        if overlays is not None:
            images = batch.images.numpy() if batch.images is not None else [None] * len(masks)
            for name, image, image_masks in zip(batch.names, images, masks):
                overlays.write(name, image, image_masks)

    if depth == 0:
        for batch in batches:
            write(batch)
    else:
        _pipelined(batches, write, depth)
    if not write_csv:
        return PredictionSummary(len(submission.image_ids), class_images, time.perf_counter() - started, Path(output),
                                 submission)
    path = submission.write(output, fmt)
    return PredictionSummary(len(submission.image_ids), class_images, time.perf_counter() - started, path)


def _pipelined(batches: Iterable[PredictionBatch], write, depth: int) -> None:
    """``write(batch)`` for each batch in one worker thread, in order, at most ``depth`` batches behind.

    An error in ``write`` reaches the caller at the latest ``depth`` batches later; an
    error in ``batches`` lets the batches already handed over finish first.
    """
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sever-writer") as writer:
        for batch in batches:
            pending.append(writer.submit(write, batch))
            while len(pending) > depth or (pending and pending[0].done()):
                pending.popleft().result()
        while pending:
            pending.popleft().result()


def predict_directory(predictor: Predictor, settings: PostProcessing, image_dir: str | Path, output: str | Path,
                      fmt: str = "current", save_probs: str | Path | None = None, visualize: str | Path | None = None,
                      labels: str | Path | None = None, batch_size: int = 8, num_workers: int = 2,
                      depth: int = PIPELINE_DEPTH, names: Sequence[str] | None = None,
                      write_csv: bool = True) -> PredictionSummary:
    """Predict every image of ``image_dir`` (sorted by name) and write the outputs (:func:`write_predictions`).

    ``visualize``: overlay folder, with the true masks of ``labels`` (a Kaggle CSV) outlined when given.
    ``names``: only these images of ``image_dir``, in this order (a shard); ``write_csv``: see
    :func:`write_predictions`.
    """
    image_dir = Path(image_dir)
    names = list_images(image_dir) if names is None else list(names)
    overlays = Overlays(visualize, predictor.class_names, names, labels) if visualize is not None else None
    return write_predictions(predictor.predict_files([image_dir / name for name in names], batch_size, num_workers),
                             settings, output, fmt, save_probs, overlays, depth, write_csv, predictor.outputs)


class SavedProbabilities:
    """Probability maps saved by ``--save-probs``, one folder per ensemble member, combined like models.

    The images are those of the first folder; every other folder must have them too.

    Args:
        directories: ``--save-probs`` folders.
        average, weights: how the folders' probabilities are combined (see
            :func:`~sever.inference.predictor.average_probabilities`); classifier
            probabilities are averaged by mean.

    Raises:
        DataError: a folder without probability files, an image missing from a folder, or
            folders that disagree on class count, size or classifier probabilities.
    """

    def __init__(self, directories: Sequence[str | Path], average: str = "mean", weights: Sequence[float] | None = None):
        check_average(average, weights, len(directories))
        self.directories = [Path(d) for d in directories]
        self.average, self.weights = average, weights
        self.names = [image_name(path) for path in probability_files(self.directories[0])]
        for directory in self.directories[1:]:
            missing = [name for name in self.names if not (directory / f"{name}{PROBS_SUFFIX}").is_file()]
            if missing:
                raise DataError(f"{directory}: no probabilities for {len(missing)} image(s) of "
                                f"{self.directories[0]}, e.g. {missing[0]}")
        probs, class_probs = self.load(self.names[0])
        self.classes, self.gated = probs.shape[0], class_probs is not None

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """One image's combined ``(probs uint8 (C, H, W), class_probs float32 (C,) or None)``."""
        loaded = [(path, *load_probabilities(path)) for path in (d / f"{name}{PROBS_SUFFIX}" for d in self.directories)]
        first_path, first, first_class = loaded[0]
        for path, probs, class_probs in loaded[1:]:
            if probs.shape != first.shape or (class_probs is None) != (first_class is None):
                raise DataError(f"{path} does not match {first_path}: probabilities {probs.shape} against "
                                f"{first.shape}, classifier probabilities {class_probs is not None} against "
                                f"{first_class is not None}")
        if len(loaded) == 1:
            return first, first_class
        probs = average_probabilities([torch.from_numpy(p).float() / PROB_SCALE for _, p, _ in loaded],
                                      self.average, self.weights)
        class_probs = None
        if first_class is not None:
            class_probs = average_probabilities([torch.from_numpy(c) for _, _, c in loaded]).numpy()
        return quantize(probs).numpy(), class_probs

    def batches(self, batch_size: int = 8) -> Iterator[PredictionBatch]:
        """The images in order, ``batch_size`` of one size at a time (``images`` is None)."""
        batch: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        for name in progress(self.names, "probabilities"):
            probs, class_probs = self.load(name)
            if (class_probs is not None) != self.gated:
                raise DataError(f"{name}: classifier probabilities in some files and not in others")
            if batch and (len(batch) == batch_size or probs.shape != batch[0][1].shape):
                yield _saved_batch(batch)
                batch = []
            batch.append((name, probs, class_probs))
        if batch:
            yield _saved_batch(batch)


def _saved_batch(batch: list[tuple[str, np.ndarray, np.ndarray | None]]) -> PredictionBatch:
    class_probs = [c for _, _, c in batch]
    return PredictionBatch(
        names=[name for name, _, _ in batch],
        images=None,
        probs=torch.from_numpy(np.stack([p for _, p, _ in batch])),
        class_probs=None if class_probs[0] is None else torch.from_numpy(np.stack(class_probs)),
    )
