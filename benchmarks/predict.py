"""Speed of full-size inference with sever's predictor, with and without TTA, against a bare forward loop.

In one run, on the same images and model, measures images per second of:

- ``bare forward``: ``model(x)`` over batches of images already decoded, normalised and
  on the device (the ceiling for one forward pass per image);
- ``predictor, tta X``: ``Predictor.predict_files``: reading the JPEGs ahead in reader
  threads, normalising, one forward pass of the batch per TTA view, un-flipping, averaging
  and quantising the probabilities;
- ``sever predict, tta none``: the whole command path (``predict_directory``): the above
  plus post-processing, RLE encoding and writing the CSV, once with the writes in a writer
  thread overlapping the forward passes (as ``sever predict`` runs) and once in the loop
  between them (``depth 0``, the sequential path before the writer thread).

Each of these runs right after a bare loop of its own (bare, predictor none, bare, predictor
hflip, ...), ``--repeat`` rounds, and counts by the median of its ratios to those bare loops:
on a shared machine a busy spell then hits both sides of a ratio, and the load average is
printed beside the figures. TTA with ``h`` views costs about ``h`` forward passes, so
``hflip`` at 0.5x and ``both`` at 0.25x of the bare loop would mean no overhead beyond the
network; the ``vs passes`` column multiplies each ratio by its passes, and the last lines
hold each path against its target (0.9x of what its passes explain).

Then tiled against whole-image prediction of one large synthetic image at 1x, 2x and 4x the
area of ``--large`` (``Predictor.predict``), each in a fresh process: images/s and peak memory
above what was allocated before the call (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
process's peak resident memory, VmHWM, reset through ``/proc/self/clear_refs``, with glibc told
to map every allocation over 128 KB on its own so that freed memory leaves the resident set;
tracemalloc does not see torch's CPU allocations). ``working`` is the peak less the output map, which the tiled path holds as a
float32 sum (4 bytes per class and pixel) plus its uint8 result: it must stay flat as the area
grows for tiles and grows with it for whole images. Run from the repository root::

    PYTHONPATH=. python benchmarks/predict.py [-m RUN_OR_CHECKPOINT] [--images DIR] [--n 16]
        [--batch-size 4] [--device auto] [--num-workers 2] [--repeat 3] [--large 512x1536|none]
        [--tile 256x512]

Without ``-m`` the demo architecture (experiments/demo.yml) is built with random weights;
without ``--images`` the demo test images are used when present, else random 256x1600 JPEGs.

``--onnx`` adds onnxruntime against PyTorch on the CPU: the model is exported to ONNX
(``sever export``, any size) and ``Predictor.predict_files`` runs the same images with the
PyTorch model and with the export (``sever.inference.exported``; onnxruntime on torch's thread
count), alternating, ``--repeat`` rounds; the line printed is the median ratio of ONNX's
images/s to PyTorch's measured just before it. ``--large none --onnx --skip-paths`` runs only
that comparison.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from sever.data_loader.datasets import list_images, read_grey
from sever.inference.checkpoints import LoadedModel, as_loaded_model, build_eval_model, load_model
from sever.inference.outputs import PIPELINE_DEPTH, predict_directory
from sever.inference.predictor import TTA_VIEWS, Predictor, resolve_amp
from sever.inference.tiling import Tiling, parse_tile
from sever.experiment import prepare_config
from sever.model.postprocess import PostProcessing
from sever.utils.config import load_config
from sever.utils.device import autocast, resolve_device

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "data" / "demo" / "test_images"
TARGET = 0.9  # each path's rate against what its forward passes explain


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


def device_batches(loaded: LoadedModel, paths: list[Path], batch_size: int, device: torch.device) -> list[Tensor]:
    """The images decoded, normalised and on the device, in batches: the bare loop's input."""
    images = torch.from_numpy(np.stack([read_grey(p) for p in paths])).to(device)
    return list(loaded.normalization(images.unsqueeze(1)).split(batch_size))


def bare_forward(loaded: LoadedModel, batches: list[Tensor], device: torch.device, amp: str) -> float:
    """Images/s of ``model(x)`` over pre-decoded, normalised batches already on the device."""
    with torch.inference_mode(), autocast(amp, device):
        loaded.model(batches[0])  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            loaded.model(batch)
        synchronize(device)
    return sum(map(len, batches)) / (time.perf_counter() - started)


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


@dataclass
class Candidate:
    """One measured path: its name, forward passes per image, the target ratio (or None), how to run it."""

    name: str
    passes: int
    target: str | None
    run: Callable[[], float]


def candidates(loaded: LoadedModel, paths: list[Path], folder: Path, scratch: Path, args: argparse.Namespace,
               device: torch.device, amp: str) -> list[Candidate]:
    """The predictor with each TTA mode, and the whole command path with and without its writer thread."""
    found = []
    for tta in TTA_VIEWS:
        predictor = Predictor([loaded], tta=tta, device=device, amp=amp)
        passes = len(TTA_VIEWS[tta])
        target = "predictor only" if tta == "none" else f"tta {tta}"
        found.append(Candidate(f"predictor, tta {tta}", passes, target, functools.partial(
            predictor_rate, predictor, paths, args.batch_size, args.num_workers)))
    predictor = Predictor([loaded], device=device, amp=amp)
    for name, depth, target in (("sever predict to CSV, tta none", PIPELINE_DEPTH, "whole predict path"),
                                ("  the same, writes in the loop (depth 0)", 0, None)):
        found.append(Candidate(name, 1, target, functools.partial(
            command_rate, predictor, folder, scratch / "submission.csv", args.batch_size, args.num_workers, depth)))
    return found


def measure(loaded: LoadedModel, paths: list[Path], folder: Path, scratch: Path, args: argparse.Namespace,
            device: torch.device, amp: str) -> tuple[list[Candidate], dict[str, list[float]], list[float]]:
    """``args.repeat`` rounds; in each, every candidate right after its own bare loop (A B A B ...).

    Returns the candidates, each one's rate divided by the bare rate measured just before
    it (one ratio per round), and the bare rates. Pairing each measurement with a fresh
    baseline puts a busy spell of a shared machine on both sides of the ratio.
    """
    batches = device_batches(loaded, paths, args.batch_size, device)
    found = candidates(loaded, paths, folder, scratch, args, device, amp)
    ratios: dict[str, list[float]] = {candidate.name: [] for candidate in found}
    bare_rates = []
    for _ in range(args.repeat):
        for candidate in found:
            bare = bare_forward(loaded, batches, device, amp)
            ratios[candidate.name].append(candidate.run() / bare)
            bare_rates.append(bare)
    return found, ratios, bare_rates


def report(found: list[Candidate], ratios: dict[str, list[float]], bare_rates: list[float]) -> None:
    """The table (median bare rate times each median ratio) and one line per target."""
    bare = statistics.median(bare_rates)
    width = max(len(candidate.name) for candidate in found)
    print(f"{'':<{width}}  {'images/s':>9}  {'vs bare':>8}  {'vs passes':>9}  ratios of the rounds")
    print(f"{'bare forward (1 pass/image)':<{width}}  {bare:>9.2f}  {1:>7.2f}x  {1:>8.2f}x")
    for candidate in found:
        ratio = statistics.median(ratios[candidate.name])
        rounds = " ".join(f"{r:.2f}" for r in ratios[candidate.name])
        print(f"{candidate.name:<{width}}  {bare * ratio:>9.2f}  {ratio:>7.2f}x  {ratio * candidate.passes:>8.2f}x  "
              f"{rounds}")
    load = os.getloadavg()[0]
    print(f"\nmedian of {len(bare_rates) // len(found)} rounds, each ratio against a bare loop run just before; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    for candidate in found:
        if candidate.target is None:
            continue
        ratio = statistics.median(ratios[candidate.name])
        if candidate.passes == 1:
            print(f"{candidate.target} / bare loop: {ratio:.2f}x (target >= {TARGET}x)")
        else:
            print(f"{candidate.target} / (bare loop / {candidate.passes} passes): {ratio * candidate.passes:.2f}x "
                  f"(target >= {TARGET}x; {ratio:.2f}x of the bare loop)")


def onnx_comparison(args: argparse.Namespace, paths: list[Path], scratch: Path) -> None:
    """onnxruntime against PyTorch on the CPU: the same images, the same model, alternating rounds."""
    from sever.export import export_model
    from sever.inference.exported import open_exported
    from sever.utils.checkpoint import atomic_torch_save

    cpu = torch.device("cpu")
    loaded = load_model(args.model, cpu) if args.model else demo_model(cpu)
    checkpoint = Path(args.model) if args.model else scratch / "demo.pth"
    if not args.model:  # the random demo model as a checkpoint, so that sever export can read it
        atomic_torch_save({"state_dict": loaded.model.state_dict(), "config": loaded.config, "epoch": 0}, checkpoint)
    height, width = read_grey(paths[0]).shape
    exported = export_model(checkpoint, "onnx", scratch / "model.onnx", height=height, width=width, dynamic=True)
    predictors = {"pytorch": Predictor([loaded], device=cpu), "onnx": Predictor([open_exported(exported.path)])}
    rates: dict[str, list[float]] = {"pytorch": [], "onnx": []}
    for _ in range(args.repeat):
        for name, predictor in predictors.items():  # PyTorch first: each ONNX rate has its baseline just before
            rates[name].append(predictor_rate(predictor, paths, args.batch_size, args.num_workers))
    ratios = [onnx / pytorch for onnx, pytorch in zip(rates["onnx"], rates["pytorch"])]
    print(f"\nonnxruntime vs PyTorch on the CPU ({len(paths)} images {height}x{width}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, tta none; probabilities within {exported.max_prob_diff:.1e}):")
    print(f"pytorch   {statistics.median(rates['pytorch']):>8.2f} images/s  1.00x")
    print(f"onnx      {statistics.median(rates['onnx']):>8.2f} images/s  {statistics.median(ratios):.2f}x  "
          f"(rounds {' '.join(f'{r:.2f}' for r in ratios)}; load average {os.getloadavg()[0]:.1f})")


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
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median ratio of each path counts")
    parser.add_argument("--large", default="512x1536",
                        help="HxW of the 1x large image, or none to skip the large images (default: %(default)s)")
    parser.add_argument("--tile", default="256x512", help="tile HxW for the large images (default: %(default)s)")
    parser.add_argument("--onnx", action="store_true", help="also compare onnxruntime with PyTorch on the CPU")
    parser.add_argument("--skip-paths", action="store_true",
                        help="skip the bare loop / predictor / command table (e.g. to run only --onnx)")
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
        if not args.skip_paths:
            report(*measure(loaded, paths, folder, Path(scratch), args, device, amp))
        if args.onnx:
            onnx_comparison(args, paths, Path(scratch))
    if args.large != "none":
        print_tiled(tiled_rows(args), args.tile)


if __name__ == "__main__":
    main()
