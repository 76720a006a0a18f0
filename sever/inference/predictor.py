"""Batched full-size prediction: test-time augmentation, ensembles and classifier probabilities.

Each image is read once as uint8 grey and normalised per model with that model's
own training statistics. For every model each TTA view (a flipped copy) goes
through the network as its own forward pass, its sigmoid probabilities are
flipped back and averaged; the models' probabilities are then combined by
``mean`` (weighted), ``rms`` (weighted root mean square) or ``max`` per class
and pixel, and quantised to uint8 (``q`` stands for ``q / 255``), the form
post-processing, saved probability maps and tuning all share. Models trained on
different classes are composed class by class, and classifiers gate the classes
they predict (:mod:`sever.inference.compose`). With a
:class:`~sever.inference.tiling.Tiling`, images larger than the tile are predicted
tile by tile (every model and TTA view on each tile) and blended back; classifiers
always see the whole image at full resolution, so their gating is the same with and
without tiles.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from sever.data_loader.datasets import read_grey
from sever.exceptions import ConfigError
from sever.inference.checkpoints import LoadedModel, load_models
from sever.inference.compose import Composition, Gate, check_class_weights, compose, gate, require_every_class
from sever.inference.tiling import Tiling
from sever.model.postprocess import PROB_SCALE, PostProcessing
from sever.utils import interrupt
from sever.utils.config import OutputClasses
from sever.utils.device import autocast, check_amp, resolve_device
from sever.utils.progress import Progress

logger = logging.getLogger(__name__)

# Flip dimensions of each TTA view of an (B, C, H, W) batch: -1 flips W (horizontal), -2 flips H.
TTA_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "hflip": ((), (-1,)),
    "vflip": ((), (-2,)),
    "both": ((), (-1,), (-2,), (-2, -1)),
}
AVERAGES = ("mean", "rms", "max")


def class_labels(names: Sequence[str] | None, classes: int) -> list[str]:
    """Report labels: ``"1 pitted_spots"`` from class names, else ``"class 1"`` (1-based like ClassId)."""
    return OutputClasses(classes, tuple(range(classes)), tuple(names) if names else None).labels()


def average_probabilities(probs: Sequence[Tensor], mode: str = "mean", weights: Sequence[float] | None = None) -> Tensor:
    """Combine the probabilities of several models, element by element.

    Args:
        probs: M float tensors of one shape, e.g. ``(B, C, H, W)`` or ``(B, C)``, in [0, 1].
        mode: ``mean`` (``sum w p / sum w``), ``rms`` (``sqrt(sum w p^2 / sum w)``, which
            leans towards the larger values) or ``max``.
        weights: M non-negative weights (default all 1); ``max`` takes none.

    Returns:
        A tensor of the inputs' shape.
    """
    check_average(mode, weights, len(probs))
    stack = torch.stack(list(probs))
    if mode == "max":
        return stack.amax(dim=0)
    w = torch.tensor(weights if weights is not None else [1.0] * len(probs), dtype=stack.dtype, device=stack.device)
    w = w.view(-1, *([1] * (stack.ndim - 1)))
    if mode == "mean":
        return (stack * w).sum(dim=0) / w.sum()
    return ((stack * stack * w).sum(dim=0) / w.sum()).sqrt()


def check_average(mode: str, weights: Sequence[float] | None, count: int) -> None:
    """Raise ConfigError for an unknown mode, or weights that do not fit ``count`` models."""
    if mode not in AVERAGES:
        raise ConfigError(f"average: {mode!r} is not one of {', '.join(AVERAGES)}")
    if weights is None:
        return
    if mode == "max":
        raise ConfigError("weights: max averaging takes no weights")
    if len(weights) != count:
        raise ConfigError(f"weights: {len(weights)} weights given for {count} models")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"weights: expected non-negative weights with a positive sum, got {list(weights)}")


def compose_probabilities(probs: Sequence[Tensor], composition: Composition, mode: str,
                          weights: Sequence[float] | None = None) -> Tensor:
    """The prediction of M models whose classes may differ, class by class.

    Args:
        probs: per model, float ``(B, K_m, H, W)`` probabilities of its ``K_m`` outputs.
        composition: which models predict each channel of the prediction.
        mode, weights: as :func:`average_probabilities`, ``weights`` one per model; each
            channel averages only the models that predict it (their weights renormalised).

    Returns:
        float ``(B, K, H, W)``, K the composition's channels.
    """
    if composition.ensemble:
        return average_probabilities(probs, mode, weights)
    channels = []
    for sources in composition.providers:
        chosen = None if weights is None else [weights[m] for m, _ in sources]
        channels.append(average_probabilities([probs[m][:, k] for m, k in sources], mode, chosen))
    return torch.stack(channels, dim=1)


def gate_probabilities(class_probs: Sequence[Tensor], plan: Gate) -> Tensor:
    """Each channel's classifier probability: its classifiers' mean, times the any-defect classifiers' mean.

    Args:
        class_probs: per classifier, float ``(B, K_i)`` probabilities.
        plan: which classifiers gate each channel (:func:`~sever.inference.compose.gate`).

    Returns:
        float ``(B, K)``; 1 where no classifier gates a channel.
    """
    batch = class_probs[0].shape[0]
    channels = []
    for sources in plan.providers:
        chosen = [class_probs[i][:, k] for i, k in sources]
        channels.append(average_probabilities(chosen) if chosen else class_probs[0].new_ones(batch))
    gated = torch.stack(channels, dim=1)
    if plan.any_defect:
        gated = gated * average_probabilities([class_probs[i][:, :1] for i in plan.any_defect])
    return gated


def tta_probabilities(model: Callable[[Tensor], Tensor], x: Tensor, tta: str = "none") -> Tensor:
    """Mean sigmoid probability over the TTA views of ``x``, each flipped back.

    Each view is its own forward pass over the ``B`` images, so a view costs what a pass
    without TTA costs (one pass of ``B * views`` images runs slower per image on a CPU) and
    peak memory is that of one pass; the views' probabilities are summed in place.

    Args:
        model: maps ``(B, C_in, H, W)`` to logits ``(B, C, H, W)`` or ``(B, C)``.
        x: ``(B, C_in, H, W)`` normalised images.
        tta: a key of :data:`TTA_VIEWS`.

    Returns:
        float32 ``(B, C, H, W)`` aligned with ``x`` (or ``(B, C)`` for a classifier).
    """
    views = TTA_VIEWS[tta]
    total = None
    for dims in views:
        probs = torch.sigmoid(model(x.flip(dims) if dims else x).float())
        if dims and probs.ndim == 4:
            probs = probs.flip(dims)
        total = probs if total is None else total.add_(probs)
    return total.div_(len(views)) if len(views) > 1 else total


def quantize(probs: Tensor, inplace: bool = False) -> Tensor:
    """float probabilities in [0, 1] -> uint8 ``round(255 p)`` (``inplace``: scaling ``probs`` itself)."""
    scaled = probs.mul_(PROB_SCALE) if inplace else probs * PROB_SCALE
    return scaled.round_().clamp_(0, PROB_SCALE).to(torch.uint8)


@dataclass
class PredictionBatch:
    """One batch of predictions.

    Attributes:
        names: B image file names.
        images: ``(B, H, W)`` uint8 images, on the CPU (None for saved probabilities).
        probs: ``(B, C, H, W)`` uint8 ensemble probabilities, on the predictor's device.
        class_probs: ``(B, C)`` float32 classifier probabilities, or None without a classifier.
    """

    names: list[str]
    images: Tensor | None
    probs: Tensor
    class_probs: Tensor | None


class Predictor:
    """An ensemble (or composition) of segmentation models, optional classifiers, with TTA.

    Args:
        models: segmentation models of one dataset; models of different classes
            (``train_classes``) are composed class by class (:mod:`sever.inference.compose`).
        classifiers: classification models of the same dataset gating the classes they
            predict (an any-defect classifier: every class), averaged by mean.
        average: how the segmentation models are combined: ``mean``, ``rms`` or ``max``.
        weights: one weight per segmentation model (``mean``/``rms``), or None.
        tta: ``none``, ``hflip``, ``vflip`` or ``both`` (identity, h, v and h+v flips).
        device: where the models are.
        amp: ``off``, ``bf16`` or ``fp16``: autocast for the forward passes.
        tiling: predict images larger than its tile tile by tile, or None: every image whole.
    """

    def __init__(self, models: Sequence[LoadedModel], classifiers: Sequence[LoadedModel] = (), average: str = "mean",
                 weights: Sequence[float] | None = None, tta: str = "none", device: torch.device | str = "cpu",
                 amp: str = "off", tiling: Tiling | None = None):
        self.composition = compose(models)
        if tta not in TTA_VIEWS:
            raise ConfigError(f"tta: {tta!r} is not one of {', '.join(TTA_VIEWS)}")
        check_average(average, weights, len(models))
        check_class_weights(self.composition, weights)  # max averaging has none (check_average)
        self.gate = gate(classifiers, self.composition, models[0])
        self.models = list(models)
        self.classifiers = list(classifiers)
        self.average = average
        self.weights = list(weights) if weights is not None else None
        self.tta = tta
        self.device = torch.device(device)
        check_amp(amp, self.device)
        self.amp = amp
        self.tiling = tiling

    @property
    def outputs(self) -> OutputClasses:
        """Which dataset classes the prediction's channels are."""
        return self.composition.outputs

    @property
    def classes(self) -> int:
        """Channels of the prediction."""
        return self.outputs.outputs

    @property
    def class_names(self) -> list[str]:
        """Labels of the prediction's channels for reports (``"3 scratches"``, ``"class 3"``, ``"any defect"``)."""
        return self.outputs.labels()

    def _forward(self, loaded: LoadedModel, images: Tensor) -> Tensor:
        x = loaded.normalization(images.unsqueeze(1))
        with autocast(self.amp, self.device):
            return tta_probabilities(loaded.model, x, self.tta)

    def _segment(self, images: Tensor) -> Tensor:
        """float32 ``(B, C, H, W)`` ensemble probabilities of uint8 ``(B, H, W)`` images (or tiles)."""
        return compose_probabilities([self._forward(m, images) for m in self.models], self.composition, self.average,
                                     self.weights)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Probabilities of a batch of same-size images (tiled when larger than :attr:`tiling`'s tile).

        Args:
            images: ``(B, H, W)`` uint8 grey images, any device.

        Returns:
            ``(probs, class_probs)``: uint8 ``(B, C, H, W)`` and float32 ``(B, C)`` (None
            without classifiers), on :attr:`device`.
        """
        images = images.to(self.device, non_blocking=True)
        if self.tiling is None or self.tiling.fits(*images.shape[-2:]):
            probs = quantize(self._segment(images), inplace=True)
        else:
            probs = torch.empty((len(images), self.classes, *images.shape[-2:]), dtype=torch.uint8, device=self.device)
            for index, image in enumerate(images):
                probs[index] = quantize(self.tiling.predict(self._segment, image, self.classes), inplace=True)
        class_probs = None
        if self.classifiers:
            class_probs = gate_probabilities([self._forward(m, images) for m in self.classifiers], self.gate)
        return probs, class_probs

    def predict_files(self, paths: Sequence[Path], batch_size: int = 8, num_workers: int = 2,
                      description: str = "predict") -> Iterator[PredictionBatch]:
        """Predict image files in order, ``batch_size`` at a time, with a progress bar.

        Images are read ahead by ``num_workers`` threads (:func:`read_images`); a batch
        of mixed sizes is split into runs of one size.

        Raises:
            DataError: an image is missing or unreadable (the message names it).
            Interrupted: SIGINT/SIGTERM, between two batches (:mod:`sever.utils.interrupt`).
        """
        return self.predict_images(read_images(paths, batch_size, num_workers), len(paths), description)

    def predict_images(self, batches: Iterable[list[tuple[str, np.ndarray]]], total: int,
                       description: str = "predict") -> Iterator[PredictionBatch]:
        """Predict batches of named uint8 ``(H, W)`` images in order, with a progress bar over ``total`` images.

        The one path of every prediction: files (:meth:`predict_files`) and in-memory
        arrays (``sever.load(...).predict(array)``) meet here, so both give the same
        probabilities. A batch of mixed sizes is split into runs of one size.
        """
        with Progress(total, description, leave=True) as shown:
            for batch in interrupt.checked(batches, description):
                for names, images in _same_size_runs(batch):
                    probs, class_probs = self.predict(images)
                    yield PredictionBatch(names, images, probs, class_probs)
                    shown.update(len(names))


READ_AHEAD = 2  # batches read ahead of the one being predicted; bounds the images held in memory


def read_images(paths: Sequence[Path], batch_size: int, num_workers: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of ``(name, uint8 (H, W) image)``, in order, read ahead by ``num_workers`` threads.

    Threads rather than loader processes: decoding a JPEG (OpenCV) lets go of the GIL, a
    thread starts in microseconds where a loader process takes a large share of a second,
    and the images need no trip between processes. Up to :data:`READ_AHEAD` batches are
    read while the caller predicts; ``num_workers`` 0 reads each batch when it is asked for.

    Raises:
        ConfigError: a batch size below 1 or a negative worker count.
        DataError: an image is missing or unreadable (the message names it).
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {num_workers}")
    chunks = [list(paths[start:start + batch_size]) for start in range(0, len(paths), batch_size)]
    if num_workers == 0:
        for chunk in chunks:
            yield [(Path(path).name, read_grey(path)) for path in chunk]
        return
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="sever-reader")
    try:
        pending: deque[list[tuple[str, Future]]] = deque()
        for chunk in chunks:
            pending.append([(Path(path).name, pool.submit(read_grey, path)) for path in chunk])
            if len(pending) > READ_AHEAD:
                yield _collect(pending.popleft())
        while pending:
            yield _collect(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(reads: list[tuple[str, Future]]) -> list[tuple[str, np.ndarray]]:
    """The images of one batch's reads, waiting for each (a read's DataError is raised here)."""
    return [(name, future.result()) for name, future in reads]


def _same_size_runs(batch: list[tuple[str, np.ndarray]]) -> Iterator[tuple[list[str], Tensor]]:
    """Consecutive images of one size, stacked: ``(names, uint8 (B, H, W))``."""
    start = 0
    for end in range(1, len(batch) + 1):
        if end == len(batch) or batch[end][1].shape != batch[start][1].shape:
            run = batch[start:end]
            yield [name for name, _ in run], torch.from_numpy(np.stack([image for _, image in run]))
            start = end


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``off`` elsewhere; other values as given."""
    if amp == "auto":
        return "fp16" if device.type == "cuda" else "off"
    return amp


def build_predictor(models: Sequence[str | Path], classifiers: Sequence[str | Path] = (), average: str = "mean",
                    weights: Sequence[float] | None = None, tta: str = "none", device: str = "auto",
                    amp: str = "auto", tiling: Tiling | None = None, every_class: bool = False) -> Predictor:
    """Load run folders / checkpoints and make a :class:`Predictor` (the commands' entry point).

    ``every_class``: refuse models that do not predict every class of the dataset between
    them (a submission needs every class).
    """
    torch_device = resolve_device(device)
    loaded = load_models(models, "segmentation", torch_device, "-m")
    loaded_classifiers = load_models(classifiers, "classification", torch_device, "--classifier") if classifiers else []
    predictor = Predictor(loaded, loaded_classifiers, average, weights, tta, torch_device,
                          resolve_amp(amp, torch_device), tiling)
    if every_class:
        require_every_class(predictor.composition, loaded)
    return predictor


TUNED_FILE = "postprocess.yml"  # a run's own settings, tuned at the end of training
DEFAULT_SETTINGS = "default"  # --postprocess default: the built-in settings, whatever the run tuned


def run_settings(option: str | None, models: Sequence[LoadedModel], classifier: bool) -> tuple[PostProcessing, str]:
    """The post-processing ``sever predict/evaluate/tune -m`` use, and where it came from (for the output).

    ``option`` (``--postprocess``) wins: a file, or ``default`` for the built-in settings.
    Without it, one model uses the settings its run tuned at the end of training: the
    run folder's ``postprocess.yml`` (which a user may edit) when the checkpoint is the one
    tuned, else the copy in the checkpoint itself (e.g. an uploaded checkpoint alone).
    A checkpoint that was not tuned (another epoch's, an older run's) and an ensemble or
    composition of several models use the defaults: each run was tuned alone, not with the others.
    """
    classes = compose(models).outputs.outputs
    if option is not None:
        described = "default post-processing (--postprocess default)" if option == DEFAULT_SETTINGS else str(option)
        return load_settings(option, classes, classifier), described
    if len(models) == 1 and models[0].postprocess is not None:
        loaded = models[0]
        beside = loaded.source.parent.parent / TUNED_FILE
        if beside.is_file() and not loaded.exported:  # an export carries its own settings
            return load_settings(beside, loaded.classes, classifier), f"{beside} (tuned by the run)"
        settings = PostProcessing.from_mapping(loaded.postprocess, loaded.classes, f"{loaded.source}: postprocess")
        where = "carried by the export" if loaded.exported else "tuned in"
        return _for_classifier(settings, classifier, loaded.source), f"the settings {where} {loaded.source}"
    reason = "an ensemble's models were each tuned alone" if len(models) > 1 else "the checkpoint was not tuned"
    return load_settings(None, classes, classifier), f"default post-processing ({reason})"


def load_settings(path: str | Path | None, classes: int, classifier: bool) -> PostProcessing:
    """Post-processing settings from ``path`` (or the defaults) for a predictor.

    ``path`` None or ``default`` gives the defaults. With a classifier, ``c_factor``
    defaults to the write-up's 5; without one, settings with a ``classifier`` block are refused.
    """
    if path is not None and str(path) != DEFAULT_SETTINGS:
        settings = PostProcessing.load(path, classes)
    else:
        settings = PostProcessing.default(classes)
    return _for_classifier(settings, classifier, path)


def _for_classifier(settings: PostProcessing, classifier: bool, source) -> PostProcessing:
    """``settings`` with a classifier (c_factor 5 unless set), or checked to need none."""
    if classifier:
        settings = settings.with_classifier()
        if not any(settings.min_pixels) and settings.veto is None:
            logger.warning("classifier given but min_pixels are all 0 and no veto: the classifier changes nothing")
    elif settings.gated:
        raise ConfigError(f"{source}: classifier: settings for a classifier, but no --classifier was given")
    return settings
