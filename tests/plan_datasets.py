"""Small datasets and a fake device for the plan and auto tests: known squares in a mask folder,
a NEU-Seg subset, a device whose step times are given (so no plan depends on the machine's speed), a made-up fingerprint."""

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np

from sever.planning.fingerprint import ClassStats, Fingerprint
from sever.planning.policy import DEFAULT_POLICY
from sever.planning.probe import Target
from sever.utils.device import Capabilities

CPU = Capabilities("cpu")
# planning for epochs only, as before issue 27: isolates a rule from the learning rules (tests/planning/test_learning.py)
EPOCHS_ONLY = dataclasses.replace(DEFAULT_POLICY, plan_to_learn=False)


def fake_target(step: float = 0.01, caps: Capabilities = CPU, fits=None, image_seconds: float | None = None,
                per_image: bool = False) -> Target:
    """A device whose steps take ``step`` seconds whatever they hold (``per_image``: ``step`` per 8 images,
    as a CPU's), ``fits(batch)`` on CUDA, fed by loader processes taking ``image_seconds`` per image
    (None: loading not measured)."""
    return Target(caps.kind, caps, lambda arch, crop, batch: step * batch / 8 if per_image else step,
                  None if fits is None else lambda arch, crop, batch: fits(batch),
                  None if image_seconds is None else lambda crop: image_seconds)


def squares_dataset(root: Path, images: int = 8, size=(48, 80)) -> Path:
    """A mask folder (label maps) with known defects: class 1 a 10x12 square in every other image,
    class 2 two 4x4 squares in image 1; grey level 60 + 10 * i in image i."""
    (root / "train_images").mkdir(parents=True)
    (root / "train_masks").mkdir()
    for i in range(images):
        cv2.imwrite(str(root / "train_images" / f"im{i}.png"), np.full(size, 60 + 10 * i, np.uint8))
        labels = np.zeros(size, np.uint8)
        if i % 2 == 0:
            labels[5:15, 20:32] = 1
        if i == 1:
            labels[30:34, 4:8] = 2
            labels[40:44, 60:64] = 2
        cv2.imwrite(str(root / "train_masks" / f"im{i}.png"), labels)
    return root


def neu_subset(shared_data: Path, root: Path, every: int = 90) -> Path:
    """Every ``every``-th NEU-Seg training image (its files are sorted by class, so all classes come) and its rows."""
    source = shared_data / "neu-seg"
    names = sorted(p.name for p in (source / "train_images").iterdir())[::every]
    (root / "train_images").mkdir(parents=True)
    for name in names:
        shutil.copy(source / "train_images" / name, root / "train_images" / name)
    header, *rows = (source / "train.csv").read_text().splitlines()
    keep = set(names)
    (root / "train.csv").write_text("\n".join([header] + [r for r in rows if r.split(",")[0] in keep]) + "\n")
    return root


def fake_fp(data_dir, images=100, side=(256, 256), counts=(40, 30, 20, 2), empty=0.3, extent=(10, 10),
            **changes) -> Fingerprint:
    """A fingerprint of ``images`` images of ``side`` pixels, class k in ``counts[k]`` of them."""
    classes = [ClassStats(f"class{k + 1}", n, n / images, [40.0, 80.0, 120.0], [20.0, 40.0, 60.0], list(extent))
               for k, n in enumerate(counts)]
    fields = dict(data_dir=str(data_dir), layout={"format": "kaggle", "images": "train_images", "csv": "train.csv",
                                                  "masks": "train_masks"},
                  images=images, heights=[side[0]] * 3, widths=[side[1]] * 3, channels=[1], grey_mean=0.4,
                  grey_std=0.2, empty_images=empty, empty_pairs=0.7, classes=classes)
    return Fingerprint(**{**fields, **changes})
