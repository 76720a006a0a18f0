"""Post-processing of predicted masks, shared by validation, prediction and tuning.

Validation (the ``Dice`` metric's ``min_pixels``) and ``sever predict`` /
``sever evaluate`` / ``sever tune`` wipe small masks with the same
:func:`wipe_small_masks`. Prediction turns per-class probability maps into
masks with :class:`PostProcessing`, one image batch at a time::

    probabilities (N, C, H, W) uint8, 0..255 standing for 0..1
      1. threshold            p > threshold[c]
      2. component_domination (optional) a connected component overlapping a larger one
                              of another class is removed (the write-up's early trick)
      3. one_class_per_pixel  a pixel keeps only the class of highest probability
      4. min_component        connected components under min_component[c] pixels removed
      5. min_pixels           a class with fewer than min_pixels[c] pixels left is wiped;
                              with a classifier the minimum becomes
                              t = t0 * c_factor - t0 * (c_factor - 1) * p_class
      6. veto                 (optional, with a classifier) a class whose classifier
                              probability is below veto[c] is wiped
    -> masks (N, C, H, W) bool

Steps 1 and 3 to 5 treat each class on its own (step 3 compares against every
class's probability, not only the thresholded ones), so the settings of one class
never change another class's mask; that is what lets ``sever tune`` search each
class separately. Step 2 couples classes.

The settings come from a YAML mapping (``sever predict --postprocess FILE``)::

    threshold: [0.5, 0.5, 0.5, 0.5]      # or one number for every class
    min_pixels: [600, 600, 1000, 2000]
    one_class_per_pixel: true
    min_component: 0
    component_domination: false
    classifier: {c_factor: 5, veto: null}   # only with a classifier
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import yaml
from torch import Tensor

from sever.exceptions import ConfigError
from sever.utils.config import Field, load_config, validate_section

PROB_SCALE = 255  # probabilities travel as uint8: q stands for q / 255
WRITEUP_MIN_PIXELS = (600, 600, 1000, 2000)  # the write-up's defect pixel thresholds (4 classes, 256x1600)
DEFAULT_C_FACTOR = 5.0  # the write-up's best private score


def check_min_pixels(min_pixels: int | Sequence[int] | None) -> None:
    """Raise ValueError unless ``min_pixels`` is None, a count, or a list of counts (all >= 0)."""
    if min_pixels is None:
        return
    values = [min_pixels] if isinstance(min_pixels, int) else min_pixels
    if not isinstance(values, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values
    ):
        raise ValueError(f"min_pixels: expected a non-negative integer or a list of them, got {min_pixels!r}")


def min_pixels_per_class(min_pixels: int | Sequence[int] | None, classes: int) -> Tensor | None:
    """``min_pixels`` as a ``(C,)`` int64 tensor (one value for every class, or one per class).

    Raises:
        ValueError: invalid values, or a per-class list of the wrong length.
    """
    check_min_pixels(min_pixels)
    if min_pixels is None:
        return None
    values = [min_pixels] * classes if isinstance(min_pixels, int) else list(min_pixels)
    if len(values) != classes:
        raise ValueError(f"min_pixels: {len(values)} values given for {classes} classes")
    return torch.tensor(values, dtype=torch.int64)


def keep_classes(counts: Tensor, min_pixels: Tensor) -> Tensor:
    """Which class masks survive the minimum pixel count.

    Args:
        counts: ``(N, C)`` positive pixels of each image and class.
        min_pixels: ``(C,)`` or ``(N, C)`` minimum counts (any real dtype).

    Returns:
        ``(N, C)`` bool: True where ``counts >= min_pixels``.
    """
    return counts >= min_pixels.to(counts.device)


def wipe_small_masks(pred: Tensor, min_pixels: Tensor | None) -> Tensor:
    """Clear every class mask with fewer positive pixels than its minimum.

    The write-up's defect pixel thresholds (600, 600, 1000, 2000 on 256x1600):
    a class predicted on fewer pixels than that is wiped from the image.

    Args:
        pred: ``(N, C, H, W)`` bool predicted masks.
        min_pixels: ``(C,)`` minimum pixel count per class, or ``(N, C)`` per image and
            class (classifier gating), or None (no change).

    Returns:
        ``(N, C, H, W)`` bool masks.
    """
    if min_pixels is None:
        return pred
    return wipe_classes(pred, keep_classes(pixel_counts(pred), min_pixels))


def gated_min_pixels(min_pixels: Tensor, c_factor: Tensor, class_probs: Tensor) -> Tensor:
    """The write-up's classifier gating of the defect pixel threshold.

    ``t = t0 * c_factor - t0 * (c_factor - 1) * p``: a confident classifier
    (``p = 1``) keeps the threshold ``t0``; ``p = 0`` multiplies it by ``c_factor``,
    so only a large segmentation can overrule a classifier that sees no defect.

    Args:
        min_pixels: ``(C,)`` pixel thresholds ``t0``.
        c_factor: ``(C,)`` factors (>= 1; 1 turns gating off).
        class_probs: ``(N, C)`` classifier probabilities in [0, 1].

    Returns:
        ``(N, C)`` float64 thresholds.
    """
    t0 = min_pixels.double().to(class_probs.device)
    factor = c_factor.double().to(class_probs.device)
    return t0 * factor - t0 * (factor - 1) * class_probs.double()


def _on_cpu(tensor: Tensor) -> bool:
    """True when a step runs through numpy: one thread, and it leaves torch's threads to the forward pass.

    ``sever predict`` post-processes in a writer thread while the next batch goes through the
    network; torch's CPU element-wise ops would start a second set of intra-op threads on the
    cores the network uses (measured tens of times slower than numpy on a busy machine).
    """
    return tensor.device.type == "cpu"


def threshold_probabilities(probs: Tensor, threshold: Sequence[float]) -> Tensor:
    """``p > threshold[c]`` for uint8 probabilities.

    Args:
        probs: ``(N, C, H, W)`` uint8, ``q`` standing for ``q / 255``.
        threshold: C probabilities in (0, 1).

    Returns:
        ``(N, C, H, W)`` bool. ``q / 255 > t`` is tested as ``q > floor(255 t)``,
        exact for integer ``q`` and free of float copies.
    """
    levels = np.array([int(np.floor(t * PROB_SCALE)) for t in threshold], dtype=np.uint8).reshape(1, -1, 1, 1)
    if _on_cpu(probs):
        return torch.from_numpy(probs.numpy() > levels)
    return probs > torch.from_numpy(levels).to(probs.device)


def keep_highest_class(masks: Tensor, probs: Tensor) -> Tensor:
    """Keep each pixel only in the class of highest probability (ties: the lowest class index).

    Args:
        masks: ``(N, C, H, W)`` bool.
        probs: ``(N, C, H, W)`` probabilities (any real dtype).

    Returns:
        ``(N, C, H, W)`` bool: ``masks`` where the class is the pixel's argmax over all
        classes, thresholded or not.
    """
    if _on_cpu(probs):
        return torch.from_numpy(np.stack(_highest_class(masks.numpy(), probs.numpy(), np.maximum), axis=1))
    return torch.stack(_highest_class(masks, probs, torch.maximum), dim=1)


def _highest_class(masks, probs, maximum: Callable) -> list:
    """:func:`keep_highest_class` of numpy arrays or tensors (``maximum``: their element-wise max), per class.

    Class ``c`` is a pixel's argmax when its probability is above every lower class's and
    at least every higher class's: running maxima from both ends, a few passes over the
    planes instead of an argmax across them (slow on the CPU for uint8).
    """
    planes = [probs[:, c] for c in range(probs.shape[1])]
    above = [None] * len(planes)  # above[c]: max over the classes after c
    for c in range(len(planes) - 2, -1, -1):
        above[c] = planes[c + 1] if above[c + 1] is None else maximum(above[c + 1], planes[c + 1])
    kept, below = [], None  # below: max over the classes before c
    for c, plane in enumerate(planes):
        mask = masks[:, c]
        if below is not None:
            mask = mask & (plane > below)
        if above[c] is not None:
            mask = mask & (plane >= above[c])
        kept.append(mask)
        below = plane if below is None else maximum(below, plane)
    return kept


def pixel_counts(masks: Tensor) -> Tensor:
    """``(N, C)`` int64 positive pixels of ``(N, C, H, W)`` bool masks."""
    if _on_cpu(masks):
        return torch.from_numpy(np.count_nonzero(masks.numpy().reshape(*masks.shape[:2], -1), axis=-1))
    return masks.flatten(2).sum(-1)


def wipe_classes(masks: Tensor, keep: Tensor) -> Tensor:
    """``(N, C, H, W)`` bool masks with the class planes where ``keep`` ``(N, C)`` is False cleared."""
    if _on_cpu(masks):
        return torch.from_numpy(masks.numpy() & keep.numpy()[:, :, None, None])
    return masks & keep[:, :, None, None]


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of an ``(H, W)`` bool mask: count (with background), labels, stats."""
    return cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[:3]


def remove_small_components(masks: np.ndarray, min_size: Sequence[int]) -> np.ndarray:
    """Remove connected components (8-connected) smaller than ``min_size[c]`` pixels.

    Args:
        masks: ``(N, C, H, W)`` bool.
        min_size: C minimum component sizes; 0 or 1 keeps everything.

    Returns:
        ``(N, C, H, W)`` bool, a new array.
    """
    out = masks.copy()
    for n, c in np.ndindex(*masks.shape[:2]):
        if min_size[c] <= 1 or not masks[n, c].any():
            continue
        _, labels, stats = _components(np.ascontiguousarray(masks[n, c]))
        keep = stats[:, cv2.CC_STAT_AREA] >= min_size[c]
        keep[0] = False  # background
        out[n, c] = keep[labels]
    return out


def dominate_components(masks: np.ndarray) -> np.ndarray:
    """The write-up's component domination: larger components remove smaller overlapping ones.

    Per image, the components of every class are visited from the largest to the
    smallest (ties: lower class first); a component is dropped when it overlaps a
    component of another class already kept. Afterwards no pixel is in two classes.

    Args:
        masks: ``(N, C, H, W)`` bool.

    Returns:
        ``(N, C, H, W)`` bool, a new array.
    """
    out = np.zeros_like(masks)
    for n in range(masks.shape[0]):
        _dominate_image(masks[n], out[n])
    return out


def _dominate_image(masks: np.ndarray, out: np.ndarray) -> None:
    """Component domination of one image ``(C, H, W)``, written into ``out``."""
    labels, found = [], []
    for c, mask in enumerate(masks):
        count, label_map, stats = _components(np.ascontiguousarray(mask))
        labels.append(label_map)
        found += [(int(stats[k, cv2.CC_STAT_AREA]), c, k, stats[k, :4]) for k in range(1, count)]
    owner = np.zeros(masks.shape[1:], bool)  # pixels of kept components
    for _, c, k, (x, y, w, h) in sorted(found, key=lambda item: (-item[0], item[1])):
        window = (slice(y, y + h), slice(x, x + w))
        component = labels[c][window] == k
        if (owner[window] & component).any():  # same-class components never overlap
            continue
        owner[window] |= component
        out[c][window] |= component


def _per_class(value: Any, classes: int, key: str, valid: Callable[[Any], bool], meaning: str) -> tuple:
    """``value`` (one value or a list of C) as a C-tuple, each checked by ``valid``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * classes
    if len(values) != classes:
        raise ConfigError(f"{key}: {len(values)} values given for {classes} classes")
    for index, item in enumerate(values):
        if isinstance(item, bool) or not valid(item):
            where = f"{key}[{index}]" if isinstance(value, (list, tuple)) else key
            raise ConfigError(f"{where}: expected {meaning}, got {item!r}")
    return tuple(values)


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 < value < 1


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and value >= 0


def _is_factor(value: Any) -> bool:
    return isinstance(value, (int, float)) and value >= 1


def _is_veto(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 <= value <= 1


SCHEMA: dict[str, Field] = {
    "threshold": Field((float, list), default=0.5),
    "min_pixels": Field((int, list), default=None, nullable=True),
    "one_class_per_pixel": Field((bool,), default=True),
    "min_component": Field((int, list), default=0),
    "component_domination": Field((bool,), default=False),
    "classifier": Field((dict,), default=None, nullable=True),
}
CLASSIFIER_SCHEMA: dict[str, Field] = {
    "c_factor": Field((float, list), default=DEFAULT_C_FACTOR),
    "veto": Field((float, list), default=None, nullable=True),
}


@dataclasses.dataclass(frozen=True)
class PostProcessing:
    """Settings of the post-processing pipeline (module docstring), one value per class.

    Attributes:
        threshold: C probabilities; a pixel is positive when ``p > threshold``.
        min_pixels: C minimum defect pixels; a smaller class mask is wiped (0: off).
        one_class_per_pixel: keep each pixel only in its most probable class.
        min_component: C minimum connected-component sizes (0: off).
        component_domination: the write-up's component domination.
        c_factor: C classifier gating factors, or None without a classifier.
        veto: C classifier probabilities below which a class is wiped, or None.
    """

    threshold: tuple[float, ...]
    min_pixels: tuple[int, ...]
    one_class_per_pixel: bool = True
    min_component: tuple[int, ...] = ()
    component_domination: bool = False
    c_factor: tuple[float, ...] | None = None
    veto: tuple[float, ...] | None = None

    @property
    def classes(self) -> int:
        return len(self.threshold)

    @property
    def gated(self) -> bool:
        """True when the settings expect classifier probabilities."""
        return self.c_factor is not None or self.veto is not None

    @classmethod
    def default(cls, classes: int) -> PostProcessing:
        """The defaults: threshold 0.5, one class per pixel, and the write-up's min_pixels
        (600, 600, 1000, 2000) with 4 classes, none otherwise."""
        return cls.from_mapping({}, classes)

    @classmethod
    def from_mapping(cls, mapping: Mapping, classes: int, source: str = "postprocess") -> PostProcessing:
        """Validate a settings mapping (keys as in the module docstring) for ``classes`` classes.

        Raises:
            ConfigError: unknown key (with a suggestion), wrong type, out-of-range value, or a
                per-class list whose length is not ``classes``; the message names ``source``
                and the key.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source}: expected a mapping of post-processing keys, got {type(mapping).__name__}")
        try:
            return cls._from_valid_mapping(validate_section(mapping, SCHEMA), classes)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def _from_valid_mapping(cls, settings: dict, classes: int) -> PostProcessing:
        min_pixels = settings["min_pixels"]
        if min_pixels is None:
            min_pixels = list(WRITEUP_MIN_PIXELS) if classes == len(WRITEUP_MIN_PIXELS) else 0
        gate = settings["classifier"]
        if gate is not None:
            gate = validate_section(gate, CLASSIFIER_SCHEMA, "classifier.")
        return cls(
            threshold=_per_class(settings["threshold"], classes, "threshold", _is_probability, "a probability in (0, 1)"),
            min_pixels=_per_class(min_pixels, classes, "min_pixels", _is_count, "a pixel count >= 0"),
            one_class_per_pixel=settings["one_class_per_pixel"],
            min_component=_per_class(settings["min_component"], classes, "min_component", _is_count, "a pixel count >= 0"),
            component_domination=settings["component_domination"],
            c_factor=None if gate is None else _per_class(
                gate["c_factor"], classes, "classifier.c_factor", _is_factor, "a factor >= 1"),
            veto=None if gate is None or gate["veto"] is None else _per_class(
                gate["veto"], classes, "classifier.veto", _is_veto, "a probability in [0, 1]"),
        )

    @classmethod
    def load(cls, path: str | Path, classes: int) -> PostProcessing:
        """Read settings from a YAML file (``sever predict --postprocess FILE``)."""
        return cls.from_mapping(load_config(path), classes, str(path))

    def to_mapping(self) -> dict:
        """The settings as plain YAML-ready types (what :meth:`from_mapping` reads)."""
        mapping = {
            "threshold": [float(t) for t in self.threshold],
            "min_pixels": [int(m) for m in self.min_pixels],
            "one_class_per_pixel": self.one_class_per_pixel,
            "min_component": [int(m) for m in self.min_component],
            "component_domination": self.component_domination,
            "classifier": None,
        }
        if self.gated:
            mapping["classifier"] = {
                "c_factor": [float(f) for f in self.c_factor or (1.0,) * self.classes],
                "veto": None if self.veto is None else [float(v) for v in self.veto],
            }
        return mapping

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mapping(), sort_keys=False, default_flow_style=None)

    def replace(self, **changes: Any) -> PostProcessing:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_classifier(self) -> PostProcessing:
        """These settings for use with a classifier: c_factor defaults to the write-up's 5."""
        return self if self.c_factor is not None else self.replace(c_factor=(DEFAULT_C_FACTOR,) * self.classes)

    # ------------------------------------------------------------------ applying

    def pixel_masks(self, probs: Tensor) -> Tensor:
        """Steps 1-4: probabilities ``(N, C, H, W)`` uint8 -> masks ``(N, C, H, W)`` bool.

        Runs on the probabilities' device; the connected-component steps go through
        the CPU (OpenCV) and come back.
        """
        self._check_classes(probs.shape[1])
        masks = threshold_probabilities(probs, self.threshold)
        if self.component_domination:
            masks = torch.from_numpy(dominate_components(masks.cpu().numpy())).to(probs.device)
        if self.one_class_per_pixel:
            masks = keep_highest_class(masks, probs)
        if any(size > 1 for size in self.min_component):
            masks = torch.from_numpy(remove_small_components(masks.cpu().numpy(), self.min_component)).to(probs.device)
        return masks

    def keep(self, counts: Tensor, class_probs: Tensor | None = None) -> Tensor:
        """Steps 5-6: which ``(N, C)`` class masks, of ``counts`` pixels each, survive.

        Args:
            counts: ``(N, C)`` pixels left after :meth:`pixel_masks`.
            class_probs: ``(N, C)`` classifier probabilities; required when the settings
                have classifier options, refused otherwise.
        """
        self._check_classes(counts.shape[1])
        if self.gated != (class_probs is not None):
            raise ConfigError(
                "classifier: the post-processing settings have classifier options but no classifier was given"
                if self.gated else
                "classifier: classifier probabilities given but the post-processing settings have no "
                "classifier block (use with_classifier())"
            )
        minimum = torch.tensor(self.min_pixels, dtype=torch.int64)
        if class_probs is None:
            return keep_classes(counts, minimum)
        if self.c_factor is not None:
            minimum = gated_min_pixels(minimum, torch.tensor(self.c_factor), class_probs)
        keep = keep_classes(counts, minimum)
        if self.veto is not None:
            keep &= class_probs >= torch.tensor(self.veto, device=class_probs.device)
        return keep

    def apply(self, probs: Tensor, class_probs: Tensor | None = None) -> Tensor:
        """The whole pipeline: uint8 probabilities ``(N, C, H, W)`` -> bool masks ``(N, C, H, W)``.

        ``class_probs`` ``(N, C)`` are the classifier's probabilities, as in :meth:`keep`.
        """
        masks = self.pixel_masks(probs)
        return wipe_classes(masks, self.keep(pixel_counts(masks), class_probs))

    def _check_classes(self, classes: int) -> None:
        if classes != self.classes:
            raise ConfigError(f"post-processing settings are for {self.classes} classes, the model predicts {classes}")
