"""Training throughput of sever's trainer against a bare smp + torch loop.

Both loops train the same model (built by sever, i.e. an smp network) with the
same loss on the same in-memory batches, so the difference is the trainer's
own overhead: AMP/accumulation bookkeeping, per-batch metrics, the progress
bar and TensorBoard logging. Runs alternate (bare, sever, bare, sever, ...) so
drifting machine load hits both; the median of each is reported.

    python benchmarks/train_step.py                 # demo-sized FPN, CPU
    python benchmarks/train_step.py --device cuda --batch 16 --height 256 --width 384
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sever.data_loader.augmentation import GRAY_MEAN, GRAY_STD, Normalization
from sever.experiment import prepare_config
from sever.model.loss import LOSSES
from sever.model.metric import METRICS
from sever.model.model import build_model
from sever.model.optimizer import build_optimizer
from sever.trainer.trainer import SegmentationTrainer
from sever.utils.config import load_config
from sever.utils.run import RunPaths

REPO = Path(__file__).resolve().parents[1]


class InMemoryBatches:
    """A stand-in train loader: the same prepared batches every epoch."""

    class _Sampler:
        def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
            pass

    def __init__(self, batches):
        self.batches = batches
        self.batch_sampler = self._Sampler()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def make_batches(n: int, batch: int, classes: int, height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (batch, 1, height, width), generator=generator, dtype=torch.uint8)
        masks = (torch.rand(batch, classes, height, width, generator=generator) > 0.95).to(torch.uint8)
        out.append((images, masks))
    return out


def bare_loop(model, loss, optimizer, batches, device) -> float:
    """images/s of the plainest possible training loop (uint8 images normalised on the device)."""
    model.train()
    start = time.perf_counter()
    for images, masks in batches:
        images, masks = (images.to(device).float() / 255 - GRAY_MEAN) / GRAY_STD, masks.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = loss(model(images), masks)
        out["loss"].backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(b[0]) for b in batches) / (time.perf_counter() - start)


def sever_epoch(trainer, batches, device) -> float:
    """images/s of one sever training epoch over the same batches."""
    start = time.perf_counter()
    trainer._train_epoch(1, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(b[0]) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "demo.yml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = prepare_config(load_config(args.config), [f"device={args.device}", "trainer.tensorboard=true"])
    classes = config["classes"]
    batches = make_batches(args.steps, args.batch, classes, args.height, args.width)
    loss = LOSSES.build(config["loss"], "loss")

    def fresh():
        torch.manual_seed(0)
        model = build_model(config["arch"], classes).to(device)
        return model, build_optimizer(model, config["optimizer"])

    bare_model, bare_optimizer = fresh()
    sever_model, sever_optimizer = fresh()
    metrics = [METRICS.build(spec, "metrics") for spec in (config["metrics"] or ["Dice"])]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SegmentationTrainer(
            sever_model, loss, metrics, sever_optimizer, None, config, RunPaths.create(tmp, "bench"),
            train_loader=InMemoryBatches(batches), valid_loader=None, device=device, amp=config["amp"],
            normalization=Normalization(GRAY_MEAN, GRAY_STD),
        )
        bare, ours = [], []
        for _ in range(args.repeats + 1):  # the first pair warms up allocators and kernels
            bare.append(bare_loop(bare_model, loss, bare_optimizer, batches, device))
            ours.append(sever_epoch(trainer, batches, device))
        bare, ours = bare[1:], ours[1:]
        trainer.writer.close()
    b, s = statistics.median(bare), statistics.median(ours)
    print(f"model {config['arch']['type']}/{config['arch']['args']['encoder_name']}  batch {args.batch}x1x"
          f"{args.height}x{args.width}  device {device}  {args.steps} steps x {args.repeats} runs (median)")
    print(f"bare smp + torch loop : {b:8.2f} images/s   runs {[round(x, 2) for x in bare]}")
    print(f"sever trainer         : {s:8.2f} images/s   runs {[round(x, 2) for x in ours]}")
    print(f"trainer overhead      : {100 * (b / s - 1):+.1f}%  (target: within 5%)")


if __name__ == "__main__":
    main()
