"""Samples per second of the training data pipeline against the original design, on the demo data.

Every pipeline runs in the same run through a torch DataLoader (batch 16, one
worker unless stated) over the same images:

- (a) JPEG decode only (sever's ``read_grey``): the floor;
- (b) the original design: the masks looked up as a pandas row per sample,
  the image read with 3 channels and 2 dropped, the 4 masks decoded at full
  size into a float32 ``(H, W, 4)`` array by a per-run Python loop, then the
  HeavyCrop pipeline with albumentations' own crop (``OneOf``
  [``CropNonEmptyMaskIfExists``, ``RandomCrop``]) on the full-size arrays,
  normalised to a float32 image in the worker;
- (c) sever's training dataset (``SteelDataLoader(...).train_dataset``) with
  ``HeavyCropTransforms(256, 384)``, the write-up's crop, fed its seeded keys;
  its uint8 images are normalised later, on the training device (not timed here);
  then (c) with 2 workers.

It prints samples/s (best and median of ``--repeat`` passes, taken in turns; the
first batch of each pass is excluded as warm-up) and the ratios (c)/(b) and (a)/(c), of the
best passes and as the median of each round's ratio; then the
CPU time per sample of (a), (b), (c) and of (c)'s stages in
one process, which other processes' load on a shared machine distorts less. Run from the
repository root::

    PYTHONPATH=. python benchmarks/data_pipeline.py [--data-dir data/demo] [--samples 256] [--repeat 9]

Without ``DATA_DIR/train.csv`` the demo data (256 images of 256x1600) is
generated into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset

from sever.data_loader.augmentation import HeavyCropTransforms
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import decode_runs

CLASSES = 4
BATCH = 16


class DecodeOnly(Dataset):
    """(a): the grey image as a ``(H, W)`` uint8 tensor, nothing else."""

    def __init__(self, image_dir: Path):
        self.paths = [image_dir / name for name in list_images(image_dir)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_grey(self.paths[index]))


class OriginalDesign(Dataset):
    """(b): the design sever replaces, written the way it was described.

    Items: ``(image (1, h, w) float32, mask (4, h, w) float32)``.
    """

    def __init__(self, image_dir: Path, csv: Path, height: int, width: int):
        frame = pd.read_csv(csv)
        by_image = frame.pivot(index="ImageId", columns="ClassId", values="EncodedPixels")
        self.frame = by_image.reindex(index=list_images(image_dir), columns=range(1, CLASSES + 1))
        self.image_dir = image_dir
        heavy = HeavyCropTransforms(height, width)
        crop = A.OneOf([A.CropNonEmptyMaskIfExists(height, width), A.RandomCrop(height, width)], p=1)
        normalize = A.Normalize(mean=heavy.normalization.mean, std=heavy.normalization.std)  # in the worker
        after_crop = heavy.build(train=True).transforms
        self.pipeline = A.Compose([crop, *after_crop, normalize, ToTensorV2(transpose_mask=True)])

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.frame.iloc[index]
        image = cv2.imread(str(self.image_dir / row.name), cv2.IMREAD_COLOR)[:, :, :1]
        shape = image.shape[:2]
        mask = np.zeros((*shape, CLASSES), np.float32)
        for k, rle in enumerate(row.to_numpy()):
            if isinstance(rle, str):
                mask[:, :, k] = loop_decode(rle, shape)
        out = self.pipeline(image=image, mask=mask)
        return out["image"], out["mask"]


def loop_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """A float32 ``(H, W)`` mask filled run by run in a Python loop."""
    flat = np.zeros(shape[0] * shape[1], np.float32)
    values = rle.split()
    for start, length in zip(values[0::2], values[1::2]):
        flat[int(start) - 1 : int(start) - 1 + int(length)] = 1
    return flat.reshape(shape, order="F")


def shuffled_batches(n_items: int, samples: int, seed: int = 0) -> list[list[int]]:
    """``samples // BATCH`` batches of indices, a fresh permutation every epoch."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_items) for _ in range(-(-samples // n_items))])
    return [order[i : i + BATCH].tolist() for i in range(0, samples - BATCH + 1, BATCH)]


def seeded_batches(data: SteelDataLoader, samples: int) -> list[list[tuple[int, int]]]:
    """The ``(index, seed)`` batches sever's own sampler gives, epoch after epoch."""
    keys = data.train_loader.batch_sampler
    batches: list = []
    epoch = 0
    while len(batches) * BATCH < samples:
        keys.set_epoch(epoch)
        batches += list(keys)
        epoch += 1
    return batches[: samples // BATCH]


def one_pass(loader: DataLoader) -> float:
    """Samples/s of one pass over ``loader``'s batches, the first batch (warm-up) not timed."""
    iterator = iter(loader)
    next(iterator)
    started = time.perf_counter()
    count = BATCH * sum(1 for _ in iterator)
    return count / (time.perf_counter() - started)


def cpu_ms(function: Callable[[int], object], n: int) -> float:
    """CPU milliseconds of this process per call of ``function(i)`` for ``i < n``, best of 3.

    CPU time rather than wall time, so that other processes' load on a shared
    machine changes it less.
    """
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for index in range(n):
            function(index)
        best = min(best, time.process_time() - started)
    return best / n * 1e3


def breakdown(data: SteelDataLoader, original: OriginalDesign) -> Iterator[tuple[str, float]]:
    """CPU milliseconds per sample of (a), (b), (c) and of (c)'s stages, in this process.

    Each stage is timed alone; within a whole item they cost more.
    """
    dataset = data.train_dataset
    pipeline, n = dataset.transforms, len(dataset)
    shapes = [read_grey(path).shape for path in dataset.paths]
    runs = [dataset.annotations.runs(i, shapes[i]) for i in range(n)]
    lefts = [pipeline.crop_window(shapes[i], runs[i])[1] for i in range(n)]
    columns = [(left, left + pipeline.crop.width) for left in lefts]
    crops = [dataset.load_crop(i) for i in range(n)]
    yield "(a) JPEG decode (read_grey)", cpu_ms(lambda i: read_grey(dataset.paths[i]), n)
    yield "(b) original design, one item", cpu_ms(lambda i: original[i], n)
    yield "(c) sever, one item", cpu_ms(lambda i: dataset[(i, i)], n)
    yield "  (c) parse RLE runs", cpu_ms(lambda i: dataset.annotations.runs(i, shapes[i]), n)
    yield "  (c) choose crop window", cpu_ms(lambda i: pipeline.crop_window(shapes[i], runs[i]), n)
    yield "  (c) decode window columns", cpu_ms(lambda i: decode_runs(runs[i], shapes[i], columns[i]), n)
    yield "  (c) rest of the pipeline", cpu_ms(lambda i: pipeline.after_crop(image=crops[i][0], mask=crops[i][1]), n)
    yield "  full-size decode (validation)", cpu_ms(lambda i: decode_runs(runs[i], shapes[i]), n)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"), help="Kaggle-layout data (%(default)s)")
    parser.add_argument("--height", type=int, default=256, help="crop height")
    parser.add_argument("--width", type=int, default=384, help="crop width")
    parser.add_argument("--samples", type=int, default=256, help="samples per pass (repeats the images)")
    parser.add_argument("--repeat", type=int, default=9, help="passes per pipeline")
    return parser.parse_args()


def loader_rates(args: argparse.Namespace, data: SteelDataLoader, original: OriginalDesign,
                 image_dir: Path) -> dict[str, list[float]]:
    """Samples/s of each pass of (a), (b), (c) and (c) with 2 workers.

    The passes take turns (a, b, c, c2, a, b, ...) so that a burst of load from
    other processes does not fall on one pipeline only.
    """
    n = len(data.train_dataset)
    plain, seeded = shuffled_batches(n, args.samples), seeded_batches(data, args.samples)
    setups = {
        "(a) JPEG decode only": (DecodeOnly(image_dir), plain, 1),
        "(b) original design": (original, plain, 1),
        "(c) sever, 1 worker": (data.train_dataset, seeded, 1),
        "(c) sever, 2 workers": (data.train_dataset, seeded, 2),
    }
    loaders = {
        name: DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=True)
        for name, (dataset, batches, workers) in setups.items()
    }
    measured: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeat):
        for name, loader in loaders.items():
            measured[name].append(one_pass(loader))
    return measured


def paired_ratios(a: list[float], b: list[float], c: list[float]) -> tuple[float, float]:
    """``(c/b, a/c)`` as the medians of the ratios within each round of passes.

    The passes of one round run back to back, so a slower or faster spell of the
    machine moves all of them together and cancels in their ratios.
    """
    return statistics.median(cr / br for br, cr in zip(b, c)), statistics.median(ar / cr for ar, cr in zip(a, c))


def print_ratios(label: str, c_over_b: float, a_over_c: float) -> None:
    """The issue's targets: (c) at least 3x (b), (a) at most 2x (c)."""
    print(f"{label}: (c)/(b) = {c_over_b:.2f}x (target >= 3)   (a)/(c) = {a_over_c:.2f}x (target <= 2)")


def speed_ratios(a: float, b: float, c: float) -> tuple[float, float]:
    """``(c/b, a/c)`` from speeds (samples/s) of (a), (b) and (c)."""
    return c / b, a / c


def sever_loader(data_dir: Path, height: int, width: int) -> SteelDataLoader:
    """(c)'s loader: every image for training, crop ``height x width``, seed 0."""
    return SteelDataLoader(str(data_dir), batch_size=BATCH, validation_split=0, num_workers=0, classes=CLASSES,
                           transforms=HeavyCropTransforms(height, width), seed=0)


def measure(args: argparse.Namespace, data_dir: Path) -> None:
    image_dir, csv = data_dir / "train_images", data_dir / "train.csv"
    data = sever_loader(data_dir, args.height, args.width)
    original = OriginalDesign(image_dir, csv, args.height, args.width)
    runs = loader_rates(args, data, original, image_dir)
    cpu = dict(breakdown(data, original))
    print(f"{len(data.train_dataset)} images from {data_dir}, crop {args.height}x{args.width}, batch {BATCH}, "
          f"{args.samples // BATCH * BATCH} samples per pass, {args.repeat} passes")
    print(f"{'DataLoader':<34}{'best samples/s':>16}{'median':>10}")
    for name, measured in runs.items():
        print(f"{name:<34}{max(measured):>16.1f}{statistics.median(measured):>10.1f}")
    print_ratios("DataLoader, best", *speed_ratios(*(max(measured) for measured in list(runs.values())[:3])))
    print_ratios("DataLoader, median of each round's ratio", *paired_ratios(*list(runs.values())[:3]))
    print("CPU time per sample in one process, ms:")
    for name, ms in cpu.items():
        print(f"  {name:<34}{ms:>7.2f}")
    print_ratios("CPU time", *speed_ratios(*(1 / ms for ms in list(cpu.values())[:3])))


def main() -> None:
    args = parse_args()
    cv2.setNumThreads(0)  # as SteelDataLoader does for its workers: parallelism comes from workers
    if (args.data_dir / "train.csv").is_file():
        measure(args, args.data_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:
        measure(args, make_demo_data(Path(scratch) / "demo"))


if __name__ == "__main__":
    main()
