"""Speed of full-size inference with sever's predictor, with and without TTA, against a bare forward loop.

In one run, on the same images and model, measures images per second of:

- ``bare forward``: ``model(x)`` over batches of images already decoded, normalised and
  on the device (the ceiling for one forward pass per image);
- ``predictor, tta X``: ``Predictor.predict_files``: reading the JPEGs in loader processes,
  normalising, the forward pass of every TTA view in one batch, un-flipping, averaging
  and quantising the probabilities;
- ``sever predict, tta none``: the whole command path (``predict_directory``): the above
  plus post-processing, RLE encoding and writing the CSV.

TTA with ``h`` views costs about ``h`` forward passes, so ``hflip`` at 0.5x and ``both`` at
0.25x of the bare loop would mean no overhead beyond the network. Run from the repository root::

    PYTHONPATH=. python benchmarks/predict.py [-m RUN_OR_CHECKPOINT] [--images DIR] [--n 16]
        [--batch-size 4] [--device auto] [--num-workers 2] [--repeat 2]

Without ``-m`` the demo architecture (experiments/demo.yml) is built with random weights;
without ``--images`` the demo test images are used when present, else random 256x1600 JPEGs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sever.data_loader.datasets import list_images, read_grey
from sever.inference.checkpoints import LoadedModel, as_loaded_model, build_eval_model, load_model
from sever.inference.outputs import predict_directory
from sever.inference.predictor import Predictor, resolve_amp
from sever.main import prepare_config
from sever.model.postprocess import PostProcessing
from sever.utils.config import load_config
from sever.utils.device import autocast, resolve_device

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "data" / "demo" / "test_images"


def demo_model(device: torch.device) -> LoadedModel:
    """The demo experiment's model with random weights."""
    config = prepare_config(load_config(REPO / "experiments" / "demo.yml"))
    source = Path("experiments/demo.yml (random weights)")
    return as_loaded_model(build_eval_model(config, source), config, source, device)


def gather_images(source: Path | None, n: int, scratch: Path) -> tuple[Path, str]:
    """A folder of ``n`` images: copied from ``source`` (or the demo test images), else random JPEGs."""
    folder = scratch / "images"
    folder.mkdir()
    source = source or (DEMO_IMAGES if DEMO_IMAGES.is_dir() else None)
    if source is not None:
        names = list_images(source)[:n]
        for name in names:
            shutil.copy(source / name, folder / name)
        return folder, f"{len(names)} images from {source}"
    rng = np.random.default_rng(0)
    for index in range(n):
        image = rng.normal(88, 12, (256, 1600)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{index:05d}.jpg"), image)
    return folder, f"{n} random 256x1600 JPEGs"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(loaded: LoadedModel, paths: list[Path], batch_size: int, device: torch.device, amp: str) -> float:
    """Images/s of ``model(x)`` over pre-decoded, normalised batches already on the device."""
    images = torch.from_numpy(np.stack([read_grey(p) for p in paths])).to(device)
    x = loaded.normalization(images.unsqueeze(1))
    batches = list(x.split(batch_size))
    with torch.inference_mode(), autocast(amp, device):
        loaded.model(batches[0])  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            loaded.model(batch)
        synchronize(device)
    return len(paths) / (time.perf_counter() - started)


def predictor_rate(predictor: Predictor, paths: list[Path], batch_size: int, workers: int) -> float:
    """Images/s of ``Predictor.predict_files`` (after one warm-up batch)."""
    predictor.predict(torch.from_numpy(read_grey(paths[0]))[None])
    synchronize(predictor.device)
    started = time.perf_counter()
    for _ in predictor.predict_files(paths, batch_size, workers):
        pass
    synchronize(predictor.device)
    return len(paths) / (time.perf_counter() - started)


def command_rate(predictor: Predictor, folder: Path, out: Path, batch_size: int, workers: int) -> float:
    """Images/s of the whole ``sever predict`` path into a CSV."""
    settings = PostProcessing.default(predictor.classes)
    summary = predict_directory(predictor, settings, folder, out, batch_size=batch_size, num_workers=workers)
    return summary.images / summary.seconds


def measure(loaded: LoadedModel, paths: list[Path], folder: Path, scratch: Path, args: argparse.Namespace,
            device: torch.device, amp: str) -> list[tuple[str, float]]:
    """One round of every measurement: ``(name, images/s)``."""
    rates = [("bare forward (1 pass/image)", bare_forward(loaded, paths, args.batch_size, device, amp))]
    for tta, passes in (("none", 1), ("hflip", 2), ("both", 4)):
        predictor = Predictor([loaded], tta=tta, device=device, amp=amp)
        name = f"predictor, tta {tta} ({passes} pass{'es' if passes > 1 else ''}/image)"
        rates.append((name, predictor_rate(predictor, paths, args.batch_size, args.num_workers)))
    predictor = Predictor([loaded], device=device, amp=amp)
    rate = command_rate(predictor, folder, scratch / "submission.csv", args.batch_size, args.num_workers)
    return rates + [("sever predict to CSV, tta none", rate)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", help="run folder or checkpoint (default: demo architecture, random weights)")
    parser.add_argument("--images", type=Path, help="image folder (default: demo test images or random JPEGs)")
    parser.add_argument("--n", type=int, default=16, help="images to predict (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto: fp16 on CUDA, off on CPU")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best rate of each is kept")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    loaded = load_model(args.model, device) if args.model else demo_model(device)
    with tempfile.TemporaryDirectory() as scratch:
        folder, described = gather_images(args.images, args.n, Path(scratch))
        paths = [folder / name for name in list_images(folder)]
        shape = read_grey(paths[0]).shape
        print(f"{described}, {shape[0]}x{shape[1]}; model {loaded.source}; device {device}, amp {amp}, "
              f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, workers {args.num_workers}")
        rates: dict[str, float] = {}
        for _ in range(args.repeat):  # the modes take turns, so a busy spell on the machine hits them alike
            for name, rate in measure(loaded, paths, folder, Path(scratch), args, device, amp):
                rates[name] = max(rates.get(name, 0.0), rate)
    base = rates["bare forward (1 pass/image)"]
    width = max(map(len, rates))
    print(f"{'':<{width}}  {'images/s':>9}  {'vs bare':>8}")
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:>9.2f}  {rate / base:>7.2f}x")


if __name__ == "__main__":
    main()
