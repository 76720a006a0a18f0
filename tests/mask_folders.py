"""Mask-folder datasets drawn for the tests (tests/data_loader/: test_mask_folder.py, test_convert.py, test_sources.py)."""

import cv2
import numpy as np

SIZES = [(40, 64), (48, 48), (32, 80), (56, 40), (40, 64), (64, 64)]  # variable image sizes
NAMES = ["inclusion", "patches", "scratches"]


def make_label_maps(rng, overlap=False):
    """Per image: (H, W, 3) 0/1 masks of random rectangles; no overlaps unless asked."""
    masks = []
    for height, width in SIZES:
        mask = np.zeros((height, width, 3), np.uint8)
        for k in rng.choice(3, size=rng.integers(0, 3), replace=False):
            y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
            free = mask.sum(axis=2) == 0
            box = np.zeros((height, width), bool)
            box[y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = True
            mask[..., k] = box if overlap else box & free
        masks.append(mask)
    return masks


def write_dataset(root, masks, layout, image_ext=".jpg", names=None):
    """images/ + masks/ for ``masks`` in ``layout``; returns the root."""
    (root / "images").mkdir(parents=True)
    for i, mask in enumerate(masks):
        height, width = mask.shape[:2]
        cv2.imwrite(str(root / "images" / f"img{i}{image_ext}"), np.full((height, width), 90 + i, np.uint8))
        if layout == "labels":
            (root / "masks").mkdir(exist_ok=True)
            labels = (mask * np.arange(1, 4, dtype=np.uint8)).sum(axis=2).astype(np.uint8)
            cv2.imwrite(str(root / "masks" / f"img{i}.png"), labels)
        else:
            for k, folder in enumerate(names or ["1", "2", "3"]):
                (root / "masks" / folder).mkdir(parents=True, exist_ok=True)
                if mask[..., k].any():
                    cv2.imwrite(str(root / "masks" / folder / f"img{i}.png"), mask[..., k] * 255)
    return root
