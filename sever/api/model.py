"""``sever.load(PATH)``: a trained model that predicts paths, folders and numpy images.

>>> model = sever.load("saved/demo/1207_101500")         # doctest: +SKIP
>>> result = model.predict(image)[0]                      # doctest: +SKIP
>>> result.masks.shape                                    # doctest: +SKIP
(4, 256, 1600)

Every prediction goes through :class:`~sever.inference.predictor.Predictor`'s batched path
(:meth:`~sever.inference.predictor.Predictor.predict_images`) and the same
post-processing as ``sever predict``, so an array and the file it came from give the same
masks and rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import cv2
import numpy as np

from sever.api.results import Result, Results
from sever.data_loader.datasets import IMAGE_EXTENSIONS, list_images, read_grey
from sever.exceptions import DataError
from sever.inference import sharding
from sever.inference.outputs import PredictionSummary
from sever.inference.predictor import PredictionBatch, Predictor
from sever.inference.sources import ModelSource, open_models
from sever.inference.tiling import Tiling, parse_tile, valid_tiling
from sever.model.postprocess import PROB_SCALE, PostProcessing
from sever.utils.config import OutputClasses

PathLike = Union[str, Path]
ImageInput = Union[PathLike, np.ndarray, Sequence[Union[PathLike, np.ndarray]]]


def channel_names(outputs: OutputClasses) -> list[str]:
    """Plain names of the predicted channels: ``config.class_names``, else ``class 1`` ...; ``any defect``."""
    if outputs.any_defect:
        return ["any defect"]
    return [outputs.names[k] if outputs.names else f"class {k + 1}" for k in outputs.ids]


def as_grey(image: np.ndarray, name: str) -> np.ndarray:
    """A numpy image as the ``(H, W)`` uint8 grey image sever's models read.

    ``(H, W)`` is taken as it is; ``(H, W, 1)`` squeezed; ``(H, W, 3)`` RGB (as PIL,
    matplotlib and imageio read images) and ``(H, W, 4)`` RGBA converted with OpenCV's
    luma weights, the conversion ``cv2.imread(..., IMREAD_GRAYSCALE)`` uses.

    Raises:
        DataError: not uint8, or another shape (the message names the image).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"{name}: expected a uint8 image, got {image.dtype} (scale it to 0..255 first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if image.ndim != 2:
        raise DataError(f"{name}: expected an image (H, W) or (H, W, C) with C 1, 3 or 4, got shape {image.shape}")
    return np.ascontiguousarray(image)


def named_inputs(x: ImageInput) -> list[tuple[str, Path | np.ndarray]]:
    """``(name, path or array)`` of each image ``x`` names, in order.

    ``x`` is an image file, a folder (its images sorted by name), a numpy image, or a list of
    files and numpy images; an array at position i is named ``image{i}``.

    Raises:
        DataError: a missing file or folder, an empty folder or list.
    """
    if isinstance(x, np.ndarray):
        return [("image0", x)]
    if isinstance(x, (str, Path)):
        path = Path(x)
        if path.is_dir():
            return [(name, path / name) for name in list_images(path)]
        items: Sequence = [path]
    else:
        items = list(x)
    if not items:
        raise DataError("nothing to predict: an empty list of images")
    named = []
    for index, item in enumerate(items):
        if isinstance(item, np.ndarray):
            named.append((f"image{index}", item))
            continue
        path = Path(item)
        if not path.is_file():
            raise DataError(f"{path}: no such image file (images: {', '.join(IMAGE_EXTENSIONS)}; or give a folder)")
        named.append((path.name, path))
    return named


def _grey_batches(named: Sequence[tuple[str, Path | np.ndarray]], batch_size: int
                  ) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of ``(name, (H, W) uint8)`` of files and arrays, read as they are needed."""
    for start in range(0, len(named), batch_size):
        yield [(name, as_grey(item, name) if isinstance(item, np.ndarray) else read_grey(item))
               for name, item in named[start:start + batch_size]]


@dataclass
class Prepared:
    """A predictor with its post-processing, and where the settings came from (``post-processing: ...``)."""

    predictor: Predictor
    settings: PostProcessing
    postprocessing: str


@dataclass
class FolderPrediction:
    """What :meth:`Model.predict_folder` wrote.

    Attributes:
        summary: images, images with each class and the CSV written; None on a distributed
            job's ranks other than 0 (rank 0 writes the merged CSV).
        postprocessing: where the post-processing settings came from.
        labels: the report label of each channel (``"1 pitted_spots"``).
    """

    summary: PredictionSummary | None
    postprocessing: str
    labels: list[str]

    def describe(self) -> str:
        """``wrote submission.csv: N images in S s ...``: the line ``sever predict`` prints."""
        return self.summary.describe(self.labels) if self.summary is not None else ""


class Model:
    """A trained sever model: one run, an ensemble of runs, or a study's folds (see :func:`load`).

    Attributes:
        source: the checkpoints and their tuned settings (:class:`~sever.inference.sources.ModelSource`).
        average: how an ensemble's probabilities are combined: ``mean``, ``rms`` or ``max``.
    """

    def __init__(self, source: ModelSource, average: str = "mean"):
        self.source = source
        self.average = average
        self._predictors: dict[tuple, Predictor] = {}
        self._outputs: OutputClasses | None = None

    def __repr__(self) -> str:
        return f"Model({', '.join(str(model) for model in self.source.models)})"

    def open_checkpoints(self) -> list:
        """The checkpoints, each read once (their configs now, their weights at the first prediction)."""
        return self.source.open()

    @property
    def outputs(self) -> OutputClasses:
        """Which dataset classes the predicted channels are (read from the checkpoints' configs)."""
        if self._outputs is None:
            self._outputs = self.source.outputs
        return self._outputs

    @property
    def class_names(self) -> list[str]:
        """The C names of the predicted channels, in the order of ``Result.masks``."""
        return channel_names(self.outputs)

    @property
    def config(self) -> dict:
        """The first run's config (as its checkpoint holds it)."""
        return self.source.config

    def prepare(self, tta: str = "none", tile: str | tuple[int, int] | None = None, overlap: float = 0.25,
                blend: str = "gaussian", batch_size: int = 8, device: str = "auto", amp: str = "auto",
                postprocess: str | Path | None = None, classifier: PathLike | Sequence[PathLike] | None = None,
                every_class: bool = False, validation: bool = False) -> Prepared:
        """The predictor and post-processing :meth:`predict` uses with these options (loaded once per
        device, TTA, tiling and classifiers, then reused).

        ``validation``: without ``tile``, tile as the first run validated (its ``trainer.valid_tile``),
        for scoring its validation split. ``every_class``: refuse models that do not predict every
        class of their dataset between them (a submission).
        """
        tiling = tiling_of(tile, overlap, blend, batch_size)  # checked before any model loads
        if validation:
            self.source.check_has_split()
        if tiling is None and validation:
            tiling = valid_tiling(self.config)
        classifiers = tuple(str(c) for c in _as_list(classifier))
        key = (tta, tiling, device, amp, classifiers, every_class)
        if key not in self._predictors:
            self.source.open()
            self._predictors[key] = self.source.predictor(classifiers, self.average, tta, device, amp, tiling,
                                                          every_class)
        predictor = self._predictors[key]
        settings, described = self.source.settings(predictor, postprocess)
        return Prepared(predictor, settings, described)

    def predict(self, x: ImageInput, tta: str = "none", tile: str | tuple[int, int] | None = None,
                overlap: float = 0.25, batch_size: int = 8, device: str = "auto", amp: str = "auto",
                postprocess: str | Path | None = None, probabilities: bool = False,
                classifier: PathLike | Sequence[PathLike] | None = None, blend: str = "gaussian",
                num_workers: int = 2) -> Results:
        """Predict images and post-process them as ``sever predict`` does.

        Args:
            x: an image file, a folder (its images, sorted by name), a numpy image ``(H, W)`` or
                ``(H, W, C)`` uint8 (C 1, 3 for RGB, or 4 for RGBA; read as grey), or a list of
                files and numpy images.
            tta: test-time flips averaged in probability space: ``none``, ``hflip``, ``vflip``, ``both``.
            tile: predict images larger than this ``"HxW"`` (or ``(H, W)``) in pixels, multiples of
                32, in overlapping tiles; None: whole images.
            overlap: with ``tile``, the share of a tile overlapping its neighbour, in [0, 1).
            batch_size: images (with ``tile``: tiles) per forward pass.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            amp: mixed precision, ``auto`` (fp16 on CUDA, off on CPU), ``off``, ``bf16`` or ``fp16``.
            postprocess: a post-processing YAML (e.g. from :func:`sever.tune`), ``"default"`` for the
                built-in settings, or None: the run's (or the study's) tuned settings.
            probabilities: also return each image's probabilities (:attr:`Result.probabilities`).
            classifier: classification run(s) gating the classes they predict.
            blend: with ``tile``, ``gaussian`` or ``linear`` weights blending overlapping tiles.
            num_workers: threads reading image files ahead.

        Returns:
            One :class:`~sever.api.results.Result` per image, in input order.

        Raises:
            SeverError: a missing or unreadable image, a bad option (named), models that cannot load.
        """
        named = named_inputs(x)
        prepared = self.prepare(tta, tile, overlap, blend, batch_size, device, amp, postprocess, classifier)
        predictor = prepared.predictor
        if all(isinstance(item, Path) for _, item in named):
            batches = predictor.predict_files([item for _, item in named], batch_size, num_workers)
        else:
            batches = predictor.predict_images(_grey_batches(named, batch_size), len(named))
        results = Results()
        for batch in batches:
            results.extend(self._results(batch, prepared.settings, probabilities, predictor.outputs))
        return results

    def _results(self, batch: PredictionBatch, settings: PostProcessing, probabilities: bool,
                 outputs: OutputClasses) -> list[Result]:
        masks = settings.apply(batch.probs, batch.class_probs).cpu().numpy().astype(bool)
        probs = batch.probs.cpu().numpy() if probabilities else None
        names = channel_names(outputs)
        return [Result(name, image, image_masks,
                       None if probs is None else probs[index].astype(np.float32) / PROB_SCALE, names, outputs)
                for index, (name, image, image_masks) in enumerate(zip(batch.names, batch.images.numpy(), masks))]

    def predict_folder(self, image_dir: PathLike, output: PathLike = "submission.csv", fmt: str = "current",
                       save_probs: PathLike | None = None, visualize: PathLike | None = None,
                       labels: PathLike | None = None, tta: str = "none", tile: str | tuple[int, int] | None = None,
                       overlap: float = 0.25, blend: str = "gaussian", batch_size: int = 8, device: str = "auto",
                       amp: str = "auto", postprocess: str | Path | None = None,
                       classifier: PathLike | Sequence[PathLike] | None = None,
                       num_workers: int = 2) -> FolderPrediction:
        """Predict a folder of images into a submission CSV, streaming (``sever predict -m ... -i DIR``).

        Nothing is held in memory per image: each batch is post-processed and written while the
        next is predicted. Under ``torchrun`` the processes share the images and rank 0 writes one
        CSV identical to a single process's (:mod:`~sever.inference.sharding`).

        Args:
            image_dir: the folder; its images are predicted sorted by name.
            output: the submission CSV; ``fmt`` ``current`` (``ImageId,EncodedPixels,ClassId``) or
                ``original`` (``ImageId_ClassId,EncodedPixels``).
            save_probs: folder for each image's uint8 probabilities (``.npz``), or None.
            visualize: folder for JPEG overlays, or None; ``labels``: a Kaggle CSV whose true
                masks are outlined on them.
            the others: as :meth:`predict`.
        """
        list_images(image_dir)  # an empty or missing folder fails before the models load
        with sharding.process_group(device) as (context, rank_device):
            prepared = self.prepare(tta, tile, overlap, blend, batch_size, rank_device, amp, postprocess, classifier,
                                    every_class=True)
            summary = sharding.predict_sharded(context, prepared.predictor, prepared.settings, image_dir, output, fmt,
                                               save_probs, visualize, labels, batch_size, num_workers)
        return FolderPrediction(summary, prepared.postprocessing, prepared.predictor.class_names)


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)


def tiling_of(tile: str | tuple[int, int] | None, overlap: float, blend: str, batch_size: int) -> Tiling | None:
    """The :class:`~sever.inference.tiling.Tiling` of ``tile`` (``"HxW"`` or ``(H, W)``), or None without one.

    Raises:
        ConfigError: a bad value, naming its option (``--tile``, ``--overlap``, ...).
    """
    if tile is None:
        return None
    height, width = parse_tile(tile) if isinstance(tile, str) else tile
    return Tiling(height, width, overlap, blend, batch_size)


def load(path: PathLike | Sequence[PathLike], weights: Sequence[float] | None = None, average: str = "mean",
         allow_missing_folds: bool = False) -> Model:
    """Load a trained model for prediction.

    Args:
        path: a run folder (its best checkpoint), a checkpoint ``.pth``, a study folder (its final
            model when it trained one, else its finished folds' ensemble; with the study's tuned
            post-processing), or a list of them (an ensemble), or an exported model (``sever
            export``: ONNX, TorchScript, an smp folder) with the post-processing it carries.
        weights: one ensemble weight per path (``mean``/``rms``); a study's is shared by its folds.
        average: how an ensemble's probabilities combine: ``mean``, ``rms`` or ``max``.
        allow_missing_folds: a study predicts with its finished folds when some are not.

    Returns:
        A :class:`Model`; the weights load on its first prediction, on the device asked for.

    Raises:
        CheckpointError: nothing at ``path``, an unfinished study fold, a file that is no model.
    """
    return Model(open_models(_as_list(path), weights, allow_missing_folds), average)
