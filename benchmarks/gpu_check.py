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

``--profile`` and ``--sweep`` replace the check with measurements of where training time goes
(``--set KEY=VALUE`` changes the config of every phase, e.g. ``--set trainer.compile=true``)::

    PYTHONPATH=. python benchmarks/gpu_check.py --profile --sweep [--amp bf16] [--trace trace.json]

``--profile`` records a ``torch.profiler`` trace of ``--profile-steps`` training steps after the
warm-up and prints where a step's time goes: the host time inside each of the trainer's phases
(``sever.trainer.trainer.PHASES``: data wait, host-to-device copy, forward, backward, optimiser,
metrics, the log steps' reads), every wait of the host for the device, the host time outside the
phases, and the GPU's busy and idle time over the window; then the operators that took longest
(device time on CUDA).
``--sweep`` trains ``--sweep-steps`` steps at each batch of ``--sweep-batches`` and the plan's
probe batch (``sever plan``'s largest batch that fits; the CPU rule without CUDA) in fp32, bf16 and
fp16, and prints images/s with the ratio to fp32 at the same batch.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from sever.planning.probe import device_target
from sever.planning.sizing import plan_batch
from sever.trainer.trainer import PHASES
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
    sweep_images: int = 640  # images timed at each point of --sweep


def scale_for(args: argparse.Namespace, dry: bool) -> Scale:
    if dry:
        tiny_arch = ["arch.args.encoder_name=resnet18",
                     "arch.args.decoder_args={decoder_pyramid_channels: 32, decoder_segmentation_channels: 32}"]
        return Scale(steps=2, batch_size=2, image=(64, 128), crop=(64, 64), tile=(64, 64), large=(64, 192),
                     images=8, workers=0, overrides=tiny_arch, sweep_images=4)
    # enough images for ``steps`` full batches after the 25% validation split
    images = max(64, math.ceil(args.steps * args.batch_size / 0.75) + args.batch_size)
    return Scale(steps=args.steps, batch_size=args.batch_size, image=(256, 1600), crop=(256, 384),
                 tile=(256, 384), large=(1024, 3200), images=images, workers=args.workers,
                 sweep_images=args.sweep_images)


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
    counter["images_per_s"] = counter["images"] / seconds
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


def warmed_up_trainer(config: dict, save_dir: Path) -> tuple:
    """``(experiment, trainer)`` after an untimed warm-up: the loader's workers start and cuDNN autotunes
    each shape on the first steps."""
    experiment = sever_main.build_experiment(config)
    run = RunPaths.create(save_dir, f"gpu-check-{config['amp']}-{config['data_loader']['args']['batch_size']}")
    trainer = sever_main.make_trainer(experiment, run)
    trainer.max_steps = WARM_UP_STEPS
    trainer._train_epoch(1, 0)
    return experiment, trainer


def train_phase(config: dict, scale: Scale, save_dir: Path, label: str | None = None) -> tuple:
    """Train ``scale.steps`` steps with sever's builder and trainer; returns ``(experiment, trainer, images/s)``."""
    experiment, trainer = warmed_up_trainer(config, save_dir)
    trainer.max_steps = scale.steps
    steps = min(scale.steps, len(experiment.data.train_loader))
    with measured(experiment.device, label or f"train {config['amp']:>4}, channels_last",
                  steps * scale.batch_size) as counter:
        log = trainer._train_epoch(2, 0)
    if not all(torch.isfinite(torch.tensor(value)) for value in log.values()):
        raise SystemExit(f"FAILED: non-finite training figures under amp {config['amp']}: {log}")
    return experiment, trainer, counter["images_per_s"]


# ----------------------------------------------------------------------------- --profile

PHASE_LABELS = {"data_wait": "data wait", "to_device": "host-to-device copy", "forward": "forward",  # (+ normalising)
                "backward": "backward (its launches)", "optimizer": "optimiser", "metrics": "metrics",
                "sync": "log-step reads"}
# the host waiting for the device: an .item()/bool() of a device tensor, or an explicit synchronisation
WAIT_EVENTS = {"aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Microseconds covered by the ``(start, end)`` intervals, overlaps counted once."""
    covered, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def step_breakdown(events, wall_us: float, steps: int, on_gpu: bool) -> list[tuple[str, float | None]]:
    """``(category, microseconds per step or None)`` of a profiled window of ``steps`` training steps.

    ``events``: the profiler's ``FunctionEvent`` list. The phases are host time inside the trainer's
    ``sever.<phase>`` ranges (they do not nest); "waits for the device" is the host time blocked on
    the device wherever it happens (inside the phases too); "other host" is the window less the
    phases; the GPU rows are the union of device activity (kernels, copies) and the window less it.
    """
    host = [event for event in events if event.device_type == torch.autograd.DeviceType.CPU]
    device = [event for event in events if event.device_type != torch.autograd.DeviceType.CPU
              and not getattr(event, "is_user_annotation", False)]  # kernels and copies, not the ranges' spans
    rows = []
    for name in PHASES:
        spans = [(e.time_range.start, e.time_range.end) for e in host if e.name == f"sever.{name}"]
        rows.append((PHASE_LABELS[name], union_us(spans) / steps))
    in_phases = sum(value for _, value in rows) * steps
    waits = [(e.time_range.start, e.time_range.end) for e in host if e.name in WAIT_EVENTS]
    rows.append(("waits for the device (all)", union_us(waits) / steps))
    rows.append(("other host (outside the phases)", max(wall_us - in_phases, 0.0) / steps))
    busy = union_us([(e.time_range.start, e.time_range.end) for e in device]) if on_gpu and device else None
    rows.append(("GPU busy", None if busy is None else busy / steps))
    rows.append(("idle GPU", None if busy is None else max(wall_us - busy, 0.0) / steps))
    return rows


def print_breakdown(rows: list[tuple[str, float | None]], wall_us: float, steps: int) -> None:
    step_us = wall_us / steps
    print(f"{'where a step goes':<34} {'ms/step':>9} {'% of step':>10}")
    for label, value in rows:
        figures = "n/a (no device events)" if value is None else f"{value / 1000:>9.2f} {100 * value / step_us:>9.1f}%"
        print(f"  {label:<32} {figures}")
    print(f"  {'step (wall, under the profiler)':<32} {step_us / 1000:>9.2f} {100.0:>9.1f}%", flush=True)


def profile_phase(config: dict, steps: int, save_dir: Path, trace: Path | None) -> list[tuple[str, float | None]]:
    """Profile ``steps`` training steps after the warm-up; print and return :func:`step_breakdown`."""
    experiment, trainer = warmed_up_trainer(config, save_dir)
    device = experiment.device
    on_gpu = device.type == "cuda"
    trainer.max_steps = steps
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    if on_gpu:
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        started = time.perf_counter()
        trainer._train_epoch(2, 0)
        if on_gpu:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - started) * 1e6
    steps_run = trainer.steps_done
    batch = config["data_loader"]["args"]["batch_size"]
    print(f"profile: {steps_run} steps of batch {batch}, amp {config['amp']}, "
          f"{steps_run * batch / wall_us * 1e6:.1f} images/s under the profiler", flush=True)
    rows = step_breakdown(profiler.events(), wall_us, steps_run, on_gpu)
    print_breakdown(rows, wall_us, steps_run)
    order = "device_time_total" if on_gpu else "self_cpu_time_total"
    print(f"longest operators (by {order}):")
    print(profiler.key_averages().table(sort_by=order, row_limit=12), flush=True)
    if trace is not None:
        profiler.export_chrome_trace(str(trace))
        print(f"trace written to {trace} (open it in chrome://tracing or https://ui.perfetto.dev)")
    return rows


# ----------------------------------------------------------------------------- --sweep

def probe_batch(config: dict, device: torch.device, scale: Scale) -> int:
    """The plan's probe batch: ``sever plan``'s largest batch whose trial step fits (the CPU rule off CUDA)."""
    target = device_target(device.type, config["classes"])
    batch, why = plan_batch(target, config["arch"], scale.crop, images=10**6)
    print(f"plan's probe batch: {batch} ({why})", flush=True)
    return batch


def sweep(config_for, scale: Scale, batches: list[int], amps: tuple[str, ...], save_dir: Path) -> dict:
    """images/s at each batch and precision (None where it ran out of memory), printed as it goes and
    then as a table with the ratio to fp32 at the same batch."""
    rates: dict[tuple[int, str], float | None] = {}
    for batch in batches:
        for amp in amps:
            sized = dataclasses.replace(scale, batch_size=batch)
            try:
                experiment, _, rates[batch, amp] = train_phase(config_for(sized, amp), sized, save_dir,
                                                               f"sweep batch {batch:>3} {PRECISION[amp]}")
                del experiment
            except torch.OutOfMemoryError:
                rates[batch, amp] = None
                print(f"sweep batch {batch:>3} {PRECISION[amp]}: out of GPU memory", flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print("sweep: images/s (ratio to fp32 at the same batch)")
    print(f"{'batch':>6} " + " ".join(f"{PRECISION[amp]:>16}" for amp in amps))
    for batch in batches:
        fp32 = rates[batch, "off"]
        cells = []
        for amp in amps:
            rate = rates[batch, amp]
            ratio = f" ({rate / fp32:.2f}x)" if rate is not None and fp32 else ""
            cells.append(f"{'OOM' if rate is None else f'{rate:.1f}'}{ratio:>8}")
        print(f"{batch:>6} " + " ".join(f"{cell:>16}" for cell in cells), flush=True)
    return rates


PRECISION = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}


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
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the check and the profile")
    parser.add_argument("--workers", type=int, default=8, help="loader processes")
    parser.add_argument("--dry", action="store_true", help="the tiny CPU version, even on a CUDA machine")
    parser.add_argument("--profile", action="store_true", help="where a training step's time goes (no check)")
    parser.add_argument("--profile-steps", type=int, default=20, help="profiled steps after the warm-up")
    parser.add_argument("--profile-amp", default="off,bf16", help="precisions profiled, comma-separated")
    parser.add_argument("--trace", type=Path, help="write the (last) profile's Chrome trace here")
    parser.add_argument("--sweep", action="store_true", help="images/s per batch and precision (no check)")
    parser.add_argument("--sweep-batches", default="16,32,64", help="batches swept, besides the plan's probe batch")
    parser.add_argument("--sweep-images", type=int, default=640, help="images timed at each sweep point")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every phase (repeatable), e.g. trainer.compile=true")
    return parser.parse_args(argv)


def check(scale: Scale, device: torch.device, scratch: Path) -> None:
    """The GPU check: training, the Dice under AMP and prediction in each precision, then NCCL."""
    cuda = device.type == "cuda"
    data_dir = make_demo_data(scratch / "data", n_train=scale.images, n_test=2 * scale.batch_size,
                              height=scale.image[0], width=scale.image[1])
    save_dir = scratch / "saved"
    config = None
    for amp in precisions(device):
        config = make_config(data_dir, save_dir, scale, device, amp)
        experiment, _, _ = train_phase(config, scale, save_dir)
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


def precisions(device: torch.device) -> tuple[str, ...]:
    return ("off", "bf16", "fp16") if device.type == "cuda" else ("off", "bf16")  # fp16 autocast needs CUDA


def measure(args: argparse.Namespace, scale: Scale, device: torch.device, scratch: Path) -> None:
    """``--profile`` and ``--sweep`` on synthetic data large enough for the largest batch swept."""
    save_dir, data_dir = scratch / "saved", scratch / "data"
    config_for = lambda sized, amp: make_config(data_dir, save_dir, sized, device, amp)  # noqa: E731
    batches = [int(b) for b in args.sweep_batches.split(",")] if args.sweep else []
    if args.sweep:
        batches = sorted({*batches, probe_batch(config_for(scale, "off"), device, scale)})
    min_steps = 2 if args.dry or device.type != "cuda" else 5
    steps_at = {batch: max(min_steps, math.ceil(scale.sweep_images / batch)) for batch in batches}
    needed = max([scale.batch_size * args.profile_steps] + [batch * steps for batch, steps in steps_at.items()])
    images = math.ceil((needed + max([scale.batch_size, *batches])) / 0.75)  # the 25% validation split
    make_demo_data(data_dir, n_train=images, n_test=2, height=scale.image[0], width=scale.image[1])
    if args.profile:
        for amp in args.profile_amp.split(","):
            profile_phase(config_for(scale, amp), args.profile_steps, save_dir, args.trace)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.sweep:
        sweep(lambda sized, amp: config_for(dataclasses.replace(sized, steps=steps_at[sized.batch_size]), amp),
              scale, batches, precisions(device), save_dir)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda" if cuda else "cpu")
    scale = scale_for(args, dry=not cuda)
    scale = dataclasses.replace(scale, overrides=[*scale.overrides, *args.set])
    started = time.perf_counter()
    print(f"{'CUDA: ' + torch.cuda.get_device_name(device) if cuda else 'CPU dry run'}; torch {torch.__version__}; "
          f"{scale.steps} steps of batch {scale.batch_size}, crops {scale.crop[0]}x{scale.crop[1]}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.profile or args.sweep:
            measure(args, scale, device, Path(scratch))
        else:
            check(scale, device, Path(scratch))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
