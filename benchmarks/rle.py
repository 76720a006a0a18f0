"""Speed of sever's RLE decode/encode against per-run Python-loop baselines.

Measures masks per second on the real non-empty masks of ``pseudo.csv`` (or,
when that file is absent, on demo data generated into a temporary directory),
for sever and for the simple loops that most Kaggle kernels used, in the same
run, taking turns (sever, baseline, sever, ...) so that a busy spell of a shared machine
hits both, and prints the median ratio over the rounds with the load average beside it.
The floor is the rate of zeroing one uint8 mask of the same size (a memset): no decoder
of a full mask can beat it. Run from the repository root::

    PYTHONPATH=. python benchmarks/rle.py [--csv PATH] [--repeat 7] [--encode-baseline-masks 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import rle_decode, rle_encode

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "severstal" / "pseudo.csv"


def baseline_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Per-run loop: slice-assign each run into a flat array, reshape column-major."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    values = [int(value) for value in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape, order="F")


def baseline_encode(mask: np.ndarray) -> str:
    """Per-pixel loop over the column-major flattened mask."""
    runs: list[int] = []
    start = None
    pixels = mask.flatten(order="F").tolist()
    for position, pixel in enumerate(pixels):
        if pixel and start is None:
            start = position
        elif not pixel and start is not None:
            runs += [start + 1, position - start]
            start = None
    if start is not None:
        runs += [start + 1, len(pixels) - start]
    return " ".join(map(str, runs))


def seconds_per_pass(function: Callable, items: Sequence) -> float:
    """Seconds of one pass of ``function`` over ``items`` (results dropped as they come)."""
    started = time.perf_counter()
    for item in items:
        function(item)
    return time.perf_counter() - started


def interleaved(ours: Callable, baseline: Callable, items: Sequence, baseline_items: Sequence,
                repeat: int) -> tuple[float, float, float]:
    """``(ours/s, baseline/s, median ratio)``: ``repeat`` rounds, each timing ours then the baseline.

    Taking turns puts a busy spell of a shared machine on both; the ratio of each round is
    its own measurement and the median of them is reported (rates: the best of each).
    """
    pairs = [(seconds_per_pass(ours, items), seconds_per_pass(baseline, baseline_items)) for _ in range(repeat)]
    ratios = [len(items) / a / (len(baseline_items) / b) for a, b in pairs]
    return len(items) / min(a for a, _ in pairs), len(baseline_items) / min(b for _, b in pairs), float(np.median(ratios))


def floor_rate(shape: tuple[int, int], count: int, repeat: int) -> float:
    """Masks per second of making a zeroed ``shape`` uint8 mask (``np.empty(shape).fill(0)``, an
    allocation and a memset, as a decode needs): no decoder of a full mask goes faster."""
    return count / min(seconds_per_pass(lambda _: np.empty(shape, np.uint8).fill(0), range(count))
                       for _ in range(repeat))


def load_encodings(csv: Path, classes: int, scratch: Path) -> tuple[list[str], str]:
    """The non-empty RLE strings of ``csv``, or of fresh demo data if it is absent."""
    source = str(csv)
    if not csv.is_file():
        csv = make_demo_data(scratch) / "train.csv"
        source = f"demo train.csv ({source} not found)"
    annotations = read_rle_csv(csv, classes)
    return annotations.encodings[annotations.has_defect()].tolist(), source


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="annotation CSV (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--crop-width", type=int, default=400, help="column window of the crop decode")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds; the median ratio counts")
    parser.add_argument(
        "--encode-baseline-masks", type=int, default=30, help="masks for the slow per-pixel encode baseline"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    shape = (args.height, args.width)
    with tempfile.TemporaryDirectory() as scratch:
        encodings, source = load_encodings(args.csv, args.classes, Path(scratch))
    masks = [rle_decode(rle, shape) for rle in encodings]
    encode_sample = masks[: args.encode_baseline_masks]  # the per-pixel loop is too slow for all
    assert all(np.array_equal(baseline_decode(rle, shape), mask) for rle, mask in zip(encodings, masks))
    assert all(baseline_encode(mask) == rle for mask, rle in zip(encode_sample, encodings))
    offsets = np.random.default_rng(0).integers(0, args.width - args.crop_width + 1, len(encodings)).tolist()
    crops = list(zip(encodings, offsets))
    crop = args.crop_width
    runs = np.mean([len(rle.split()) / 2 for rle in encodings])

    rows = [
        (f"decode {shape[0]}x{shape[1]}", len(encodings), *interleaved(
            lambda rle: rle_decode(rle, shape), lambda rle: baseline_decode(rle, shape), encodings, encodings,
            args.repeat)),
        (f"decode crop {shape[0]}x{crop}", len(crops), *interleaved(
            lambda c: rle_decode(c[0], shape, (c[1], c[1] + crop)),
            lambda c: baseline_decode(c[0], shape)[:, c[1] : c[1] + crop], crops, crops, args.repeat)),
        (f"encode {shape[0]}x{shape[1]}", len(encodings), *interleaved(
            rle_encode, baseline_encode, masks, encode_sample, args.repeat)),
    ]
    floor = floor_rate(shape, len(encodings), args.repeat)
    print(f"{len(encodings)} non-empty masks from {source}, {runs:.0f} runs per mask on average; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'operation':<24}{'masks':>7}{'sever masks/s':>16}{'baseline masks/s':>19}{'ratio':>9}")
    for name, count, ours, baseline, ratio in rows:
        print(f"{name:<24}{count:>7}{ours:>16,.0f}{baseline:>19,.0f}{ratio:>8.1f}x")
    print(f"{'floor: memset ' + str(shape[0]) + 'x' + str(shape[1]):<24}{len(encodings):>7}{floor:>16,.0f}"
          f"{'':>19}{'':>9}   (a fresh zeroed uint8 mask; decode at {rows[0][2] / floor:.2f}x of it)")
    print(f"rle_decode / per-run slice loop: {rows[0][4]:.2f}x (target >= 2x), median of {args.repeat} "
          f"interleaved rounds, load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
