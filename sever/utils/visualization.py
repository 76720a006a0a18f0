"""Colour overlays of defect masks and boxes on steel images (TensorBoard grids, ``--visualize``)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# One RGB colour per class; classes beyond the table reuse it cyclically.
CLASS_COLOURS = np.array(
    [
        (230, 25, 75),  # red
        (60, 180, 75),  # green
        (0, 130, 200),  # blue
        (255, 225, 25),  # yellow
        (145, 30, 180),  # purple
        (70, 240, 240),  # cyan
        (245, 130, 48),  # orange
        (240, 50, 230),  # magenta
    ],
    dtype=np.float32,
)


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of class channel ``index`` (0-based)."""
    return tuple(int(c) for c in CLASS_COLOURS[index % len(CLASS_COLOURS)])


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """Stretch a single-channel image of any range to uint8 ``(H, W)`` for display."""
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return ((image - low) * (255.0 / (high - low))).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over a grey image.

    Args:
        image: ``(H, W)`` uint8 grey image.
        masks: ``(C, H, W)`` bool/0-1 masks, one per class.
        alpha: opacity of the colour where a class is present.

    Returns:
        ``(H, W, 3)`` uint8 RGB image; pixels in several classes take their mean colour.
    """
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    masks = np.asarray(masks, dtype=bool)
    count = masks.sum(axis=0)
    if not count.any():
        return rgb.astype(np.uint8)
    colours = np.stack([CLASS_COLOURS[i % len(CLASS_COLOURS)] for i in range(masks.shape[0])])
    colour_sum = np.tensordot(masks.astype(np.float32), colours, axes=(0, 0))  # (H, W, 3)
    covered = count > 0
    mean_colour = colour_sum[covered] / count[covered, None]
    rgb[covered] = (1 - alpha) * rgb[covered] + alpha * mean_colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None,
               class_names: Sequence[str] | None = None) -> np.ndarray:
    """Draw labelled boxes on an image.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8.
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` pixels.
        labels: ``(N,)`` 0-based classes: colour (:func:`class_colour`) and caption.
        scores: ``(N,)`` shown after the class name, or None.
        class_names: captions of the classes (default: their numbers from 1).

    Returns:
        ``(H, W, 3)`` uint8 RGB copy with the boxes drawn.
    """
    canvas = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy())
    scale = max(canvas.shape[:2]) / 600
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        colour = class_colour(int(label))
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), colour, max(1, int(2 * scale)))
        caption = class_names[label] if class_names is not None else str(int(label) + 1)
        if scores is not None:
            caption += f" {float(scores[i]):.2f}"
        cv2.putText(canvas, caption, (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, max(0.35, 0.5 * scale),
                    colour, 1, cv2.LINE_AA)
    return canvas


def outline_masks(image: np.ndarray, masks: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Draw the outline of each class's mask in its colour over an image.

    Args:
        image: ``(H, W)`` uint8 grey or ``(H, W, 3)`` uint8 RGB image (not modified).
        masks: ``(C, H, W)`` bool/0-1 masks, one per class.
        thickness: outline width in pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB image; the image shows through inside the outlines, which have a dark rim.
    """
    rgb = np.ascontiguousarray(image.copy() if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    for index, mask in enumerate(np.asarray(masks, dtype=np.uint8)):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (0, 0, 0), thickness + 2, cv2.LINE_AA)  # a dark rim: visible on any fill
        cv2.drawContours(rgb, contours, -1, class_colour(index), thickness, cv2.LINE_AA)
    return rgb
