"""One-call GPU check: training in fp32, bf16 and fp16 with channels_last, the Dice under AMP, tiled and
whole-image prediction, and a two-process NCCL run when two GPUs exist.

On a CUDA machine (about 8 minutes at most with the defaults) it trains ``--steps`` steps of
``experiments/config.yml``'s model (FPN over efficientnet-b5, no pretrained weights, its 256x384
crops) on synthetic 256x1600 images in each precision, with sever's own experiment builder and
trainer; checks that the Dice of logits produced under autocast is finite and equal to the Dice
of the same logits cast to float32 (the metric works in float32 whatever the logits' type); then
predicts the test images whole and a large image tiled and whole; then, with two GPUs, runs
``sever train --nproc 2`` (DistributedDataParallel over NCCL) for a few steps. Each phase prints
images/s, peak GPU memory and the mean GPU utilisation sampled while it ran
(``torch.cuda.utilization``, which needs pynvml; else ``n/a``).

On CPU, or with ``--dry``, the same code runs a tiny version in seconds: an FPN over resnet18 on
64x128 images, 64x64 crops, two steps, fp32 and bf16 (fp16 autocast needs CUDA)::

    PYTHONPATH=. python benchmarks/gpu_check.py [--steps 200] [--batch-size 16] [--dry]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sever import experiment as sever_main
from sever.data_loader.demo import make_demo_data
from sever.data_loader.datasets import list_images, read_grey
from sever.inference.checkpoints import as_loaded_model
from sever.inference.predictor import Predictor
from sever.inference.tiling import Tiling
from sever.model.metric import METRICS
from sever.utils.config import load_config
from sever.utils.device import autocast
from sever.utils.run import RunPaths

REPO = Path(__file__).resolve().parents[1]
WARM_UP_STEPS = 3  # untimed steps before each timed epoch
DICE_TOLERANCE = 1e-6  # the metric thresholds float32 probabilities either way: only summation order may differ


@dataclass
class Scale:
    """What one run of the check trains and predicts."""

    steps: int
    batch_size: int
    image: tuple[int, int]  # synthetic images, H x W
    crop: tuple[int, int]
    tile: tuple[int, int]
    large: tuple[int, int]  # the large image predicted tiled and whole
    images: int  # synthetic training images
    workers: int
    overrides: list[str] = field(default_factory=list)


def scale_for(args: argparse.Namespace, dry: bool) -> Scale:
    if dry:
        tiny_arch = ["arch.args.encoder_name=resnet18",
                     "arch.args.decoder_args={decoder_pyramid_channels: 32, decoder_segmentation_channels: 32}"]
        return Scale(steps=2, batch_size=2, image=(64, 128), crop=(64, 64), tile=(64, 64), large=(64, 192),
                     images=8, workers=0, overrides=tiny_arch)
    # enough images for ``steps`` full batches after the 25% validation split
    images = max(64, math.ceil(args.steps * args.batch_size / 0.75) + args.batch_size)
    return Scale(steps=args.steps, batch_size=args.batch_size, image=(256, 1600), crop=(256, 384),
                 tile=(256, 384), large=(1024, 3200), images=images, workers=args.workers)


class UtilisationSampler:
    """Mean ``torch.cuda.utilization()`` sampled every half second while in use (``n/a`` without pynvml)."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.available = device, [], device.type == "cuda"
        if self.available:
            try:
                torch.cuda.utilization(device)
            except (ModuleNotFoundError, RuntimeError):  # pynvml absent or NVML unusable
                self.available = False
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(torch.cuda.utilization(self.device))

    @contextmanager
    def sampling(self):
        thread = threading.Thread(target=self._run, daemon=True) if self.available else None
        if thread is not None:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if thread is not None:
                thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "n/a"
        return f"{sum(self.samples) / len(self.samples):.0f}%"


@contextmanager
def measured(device: torch.device, label: str, images: int):
    """Print ``label``: images/s, peak GPU memory and utilisation of the block, which adds to ``images``."""
    sampler = UtilisationSampler(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    counter = {"images": images}
    with sampler.sampling():
        yield counter
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"
    print(f"{label:<38} {counter['images'] / seconds:>9.2f} images/s  peak GPU memory {memory:>10}  "
          f"utilisation {sampler.describe()}", flush=True)


def make_config(data_dir: Path, save_dir: Path, scale: Scale, device: torch.device, amp: str) -> dict:
    """experiments/config.yml on the synthetic data, without pretrained weights, channels_last, one short epoch."""
    overrides = [
        f"device={device.type}", f"amp={amp}", "arch.args.encoder_weights=null",
        f"data_loader.args.data_dir={data_dir}", f"data_loader.args.batch_size={scale.batch_size}",
        f"data_loader.args.num_workers={scale.workers}", "data_loader.args.validation_split=0.25",
        f"augmentation.args.height={scale.crop[0]}", f"augmentation.args.width={scale.crop[1]}",
        "trainer.channels_last=true", "trainer.epochs=1", f"trainer.max_steps_per_epoch={scale.steps}",
        "trainer.tensorboard=false", "trainer.val_period=1", "trainer.start_val_epoch=1", "trainer.save_period=1",
        f"save_dir={save_dir}", "lr_scheduler=null", *scale.overrides,
    ]
    return sever_main.prepare_config(load_config(REPO / "experiments" / "config.yml"), overrides)


def train_phase(config: dict, scale: Scale, save_dir: Path) -> tuple:
    """Train ``scale.steps`` steps with sever's builder and trainer; returns ``(experiment, trainer)``."""
    experiment = sever_main.build_experiment(config)
    run = RunPaths.create(save_dir, f"gpu-check-{config['amp']}")
    trainer = sever_main.make_trainer(experiment, run)
    # untimed warm-up: the loader's workers start and cuDNN autotunes each shape on the first steps
    trainer.max_steps = WARM_UP_STEPS
    trainer._train_epoch(1, 0)
    trainer.max_steps = scale.steps
    steps = min(scale.steps, len(experiment.data.train_loader))
    with measured(experiment.device, f"train {config['amp']:>4}, channels_last", steps * scale.batch_size):
        log = trainer._train_epoch(2, 0)
    if not all(torch.isfinite(torch.tensor(value)) for value in log.values()):
        raise SystemExit(f"FAILED: non-finite training figures under amp {config['amp']}: {log}")
    return experiment, trainer


def check_dice(experiment, amp: str) -> None:
    """The Dice of logits made under autocast equals the Dice of the same logits in float32."""
    images, targets = next(iter(experiment.data.train_loader))
    device = experiment.device
    model = experiment.model.eval()
    with torch.no_grad(), autocast(amp, device):
        logits = model(experiment.normalization(images.to(device)).contiguous(memory_format=torch.channels_last))
    scores = []
    for values in (logits, logits.float()):
        dice = METRICS.build("Dice", "metrics.0")
        dice.update(values, targets.to(device))
        scores.append(dice.compute()["dice_mean"])
    difference = abs(scores[0] - scores[1])
    verdict = "ok" if all(map(torch.isfinite, torch.tensor(scores))) and difference <= DICE_TOLERANCE else "FAILED"
    print(f"dice under amp {amp:>4} (logits {str(logits.dtype).replace('torch.', '')}): {scores[0]:.6f}, "
          f"float32 recomputation {scores[1]:.6f}, difference {difference:.1e}: {verdict}", flush=True)
    if verdict != "ok":
        raise SystemExit("FAILED: the Dice under AMP is not the float32 Dice")


def predict_phase(experiment, config: dict, scale: Scale, data_dir: Path) -> None:
    """Whole-image prediction of the test images, then a large image whole and tiled."""
    device = experiment.device
    loaded = as_loaded_model(experiment.model, config, Path("gpu_check (trained above)"), device)
    amp = config["amp"]
    whole = Predictor([loaded], device=device, amp=amp)
    tiled = Predictor([loaded], device=device, amp=amp, tiling=Tiling(*scale.tile, batch=scale.batch_size))
    folder = data_dir / "test_images"
    paths = [folder / name for name in list_images(folder)]
    for _ in whole.predict_files(paths[:scale.batch_size], scale.batch_size, scale.workers, "warm-up"):
        pass
    with measured(device, f"predict {amp:>4}, test images whole", len(paths)):
        for _ in whole.predict_files(paths, scale.batch_size, scale.workers):
            pass
    large = torch.from_numpy(read_grey(paths[0])).repeat(scale.large[0] // scale.image[0] + 1,
                                                          scale.large[1] // scale.image[1] + 1)
    large = large[None, :scale.large[0], :scale.large[1]].to(device)
    size = f"{scale.large[0]}x{scale.large[1]}"
    for name, predictor in (("whole", whole), (f"tiled {scale.tile[0]}x{scale.tile[1]}", tiled)):
        try:
            predictor.predict(large)  # untimed: cuDNN autotunes the new shapes (its workspace is not kept)
            with measured(device, f"predict {amp:>4}, {size} {name}", 1):
                predictor.predict(large)
        except torch.OutOfMemoryError:
            print(f"predict {amp:>4}, {size} {name}: out of GPU memory", flush=True)
            torch.cuda.empty_cache()


def nccl_phase(config: dict, save_dir: Path) -> None:
    """``sever train --nproc 2`` for the config's few steps (NCCL on two GPUs)."""
    path = save_dir / "nccl.yml"
    path.write_text(yaml.safe_dump({**config, "amp": "bf16", "name": "gpu-check-nccl"}), encoding="utf-8")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sever", "train", "--nproc", "2", "-c", str(path)],
                            capture_output=True, text=True, check=False)
    verdict = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"sever train --nproc 2 (NCCL), {config['trainer']['max_steps_per_epoch']} steps: {verdict} in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if result.returncode != 0:
        print(result.stderr[-3000:])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per precision (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8, help="loader processes")
    parser.add_argument("--dry", action="store_true", help="the tiny CPU version, even on a CUDA machine")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda" if cuda else "cpu")
    scale = scale_for(args, dry=not cuda)
    started = time.perf_counter()
    print(f"{'CUDA: ' + torch.cuda.get_device_name(device) if cuda else 'CPU dry run'}; torch {torch.__version__}; "
          f"{scale.steps} steps of batch {scale.batch_size}, crops {scale.crop[0]}x{scale.crop[1]}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = make_demo_data(Path(scratch) / "data", n_train=scale.images, n_test=2 * scale.batch_size,
                                  height=scale.image[0], width=scale.image[1])
        save_dir = Path(scratch) / "saved"
        config = None
        for amp in ("off", "bf16", "fp16") if cuda else ("off", "bf16"):
            config = make_config(data_dir, save_dir, scale, device, amp)
            experiment, _ = train_phase(config, scale, save_dir)
            if amp != "off":
                check_dice(experiment, amp)
            predict_phase(experiment, config, scale, data_dir)
            del experiment
            if cuda:
                torch.cuda.empty_cache()
        if cuda and torch.cuda.device_count() >= 2:
            nccl_phase({**config, "trainer": {**config["trainer"], "max_steps_per_epoch": 20}}, save_dir)
        else:
            print(f"NCCL: skipped ({torch.cuda.device_count() if cuda else 0} GPU(s); it needs two)")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
