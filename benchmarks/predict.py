"""Speed of full-size inference with sever's predictor, with and without TTA, against a bare forward loop.

In one run, on the same images and model, measures images per second of:

- ``bare forward``: ``model(x)`` over batches of images already decoded, normalised and
  on the device (the ceiling for one forward pass per image);
- ``predictor, tta X``: ``Predictor.predict_files``: reading the JPEGs in loader processes,
  normalising, the forward pass of every TTA view in one batch, un-flipping, averaging
  and quantising the probabilities;
- ``sever predict, tta none``: the whole command path (``predict_directory``): the above
  plus post-processing, RLE encoding and writing the CSV, once with the writes in a writer
  thread overlapping the forward passes (as ``sever predict`` runs) and once in the loop
  between them (``depth 0``, the sequential path before the writer thread).

TTA with ``h`` views costs about ``h`` forward passes, so ``hflip`` at 0.5x and ``both`` at
0.25x of the bare loop would mean no overhead beyond the network; the last column divides
each rate by what its passes explain.

Then tiled against whole-image prediction of one large synthetic image at 1x, 2x and 4x the
area of ``--large`` (``Predictor.predict``), each in a fresh process: images/s and peak memory
above what was allocated before the call (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
process's peak resident memory, VmHWM, reset through ``/proc/self/clear_refs``, with glibc told
to map every allocation over 128 KB on its own so that freed memory leaves the resident set;
tracemalloc does not see torch's CPU allocations). ``working`` is the peak less the output map, which the tiled path holds as a
float32 sum (4 bytes per class and pixel) plus its uint8 result: it must stay flat as the area
grows for tiles and grows with it for whole images. Run from the repository root::

    PYTHONPATH=. python benchmarks/predict.py [-m RUN_OR_CHECKPOINT] [--images DIR] [--n 16]
        [--batch-size 4] [--device auto] [--num-workers 2] [--repeat 2] [--large 512x1536]
        [--tile 256x512]

Without ``-m`` the demo architecture (experiments/demo.yml) is built with random weights;
without ``--images`` the demo test images are used when present, else random 256x1600 JPEGs.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from sever.data_loader.datasets import list_images, read_grey
from sever.inference.checkpoints import LoadedModel, as_loaded_model, build_eval_model, load_model
from sever.inference.outputs import PIPELINE_DEPTH, predict_directory
from sever.inference.predictor import Predictor, resolve_amp
from sever.inference.tiling import Tiling, parse_tile
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


def command_rate(predictor: Predictor, folder: Path, out: Path, batch_size: int, workers: int, depth: int) -> float:
    """Images/s of the whole ``sever predict`` path into a CSV (after one warm-up batch)."""
    settings = PostProcessing.default(predictor.classes)
    predictor.predict(torch.from_numpy(read_grey(next(folder.iterdir())))[None])
    summary = predict_directory(predictor, settings, folder, out, batch_size=batch_size, num_workers=workers,
                                depth=depth)
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
    for name, depth in (("sever predict to CSV, tta none", PIPELINE_DEPTH),
                        ("  the same, writes in the loop (depth 0)", 0)):
        rates.append((name, command_rate(predictor, folder, scratch / "submission.csv", args.batch_size,
                                         args.num_workers, depth)))
    return rates


def resident_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_call(call, device: torch.device) -> tuple[float, float]:
    """``(seconds, peak MB above the memory in use before)`` of ``call()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
        before = resident_mb("VmRSS")
    started = time.perf_counter()
    call()
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return seconds, resident_mb("VmHWM") - before


def large_image_run(args: argparse.Namespace, mode: str, scale: int) -> tuple:
    """In a fresh process: ``(mode, scale, size, images/s, peak MB, working MB)`` of one large image."""
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    loaded = load_model(args.model, device) if args.model else demo_model(device)
    height, width = parse_tile(args.large, "--large")
    tile_h, tile_w = parse_tile(args.tile)
    tiling = Tiling(tile_h, tile_w, 0.25, "gaussian", args.batch_size) if mode == "tiled" else None
    predictor = Predictor([loaded], device=device, amp=amp, tiling=tiling)
    predictor.predict(torch.zeros(1, 64, 64, dtype=torch.uint8, device=device))  # warm-up, small
    size = (round(height * math.sqrt(scale)), round(width * math.sqrt(scale)))
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(88, 12, size).clip(0, 255).astype(np.uint8))[None].to(device)
    seconds, peak = peak_call(lambda: predictor.predict(image), device)
    output_mb = loaded.classes * size[0] * size[1] * 5 / 2**20  # float32 sum + uint8 map
    return mode, scale, size, 1 / seconds, peak, peak - output_mb


def tiled_rows(args: argparse.Namespace) -> list[tuple]:
    """:func:`large_image_run` for whole and tiled prediction at 1x, 2x and 4x the area."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # read by glibc when each fresh process starts
    context = multiprocessing.get_context("spawn")
    rows = []
    for scale in (1, 2, 4):
        for mode in ("whole", "tiled"):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                rows.append(pool.submit(large_image_run, args, mode, scale).result())
    return rows


def print_tiled(rows: list[tuple], tile: str) -> None:
    print(f"\nlarge images, tile {tile} (overlap 0.25, gaussian): peak MB above the memory in use before the call; "
          "working = peak - output map (float32 sum + uint8)")
    base = {mode: working for mode, scale, _, _, _, working in rows if scale == 1}
    print(f"{'mode':<6} {'area':>4} {'size':>10} {'images/s':>9} {'peak MB':>9} {'working MB':>11} {'vs 1x':>6}")
    for mode, scale, size, rate, peak, working in rows:
        print(f"{mode:<6} {scale:>3}x {size[0]:>4}x{size[1]:<5} {rate:>9.3f} {peak:>9.0f} {working:>11.0f} "
              f"{working / base[mode]:>5.2f}x")


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
    parser.add_argument("--large", default="512x1536", help="HxW of the 1x large image (default: %(default)s)")
    parser.add_argument("--tile", default="256x512", help="tile HxW for the large images (default: %(default)s)")
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
    print(f"{'':<{width}}  {'images/s':>9}  {'vs bare':>8}  {'vs passes':>9}")
    for name, rate in rates.items():
        passes = int(name.split("(")[1].split()[0]) if "pass" in name else 1
        print(f"{name:<{width}}  {rate:>9.2f}  {rate / base:>7.2f}x  {rate * passes / base:>8.2f}x")
    print_tiled(tiled_rows(args), args.tile)


if __name__ == "__main__":
    main()
