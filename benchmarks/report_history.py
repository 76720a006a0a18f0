"""Seconds to read a run's training history for its report: sever's reader against TensorBoard's.

An event file is written here as training writes one: per epoch, the epoch values and learning
rates (``epoch/...``, ``lr/...``), ``--batch-tags`` per-step scalars for each of ``--steps`` steps, and
the validation image grid (``--grid`` images of ``--height`` x ``--width``, truth above prediction, as
the trainer logs ``val/truth_above_prediction``). Both readers then read it, taking turns
``--repeat`` times: TensorBoard's ``EventAccumulator`` (the report's reader until this script came;
it reads, checksums and decodes every record, the images too) and
:func:`sever.report.history.read_history`, which skips records too long to be scalars. The script
checks that both give the same per-epoch values and prints the median seconds of each and their
ratio. Run from the repository root::

    PYTHONPATH=. python benchmarks/report_history.py [--epochs 80] [--steps 24] [--grid 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_run(root: Path, args) -> Path:
    """A run folder whose ``runs/`` holds one event file shaped like a training run's."""
    from torch.utils.tensorboard import SummaryWriter

    from sever.utils.run import RunPaths

    run = RunPaths.create(root, "history")
    rng = np.random.default_rng(0)
    step = 0
    with SummaryWriter(str(run.tensorboard)) as writer:
        for epoch in range(1, args.epochs + 1):
            for _ in range(args.steps):
                step += 1
                for tag in range(args.batch_tags):
                    writer.add_scalar(f"batch/value_{tag}", float(rng.random()), step)
            for key in ("train_loss", "val_loss", *(f"val_dice_{c}" for c in range(4))):
                writer.add_scalar(f"epoch/{key}", float(rng.random()), epoch)
            writer.add_scalar("lr/encoder", 1e-3 / epoch, epoch)
            # a defect image is mostly smooth steel: noise over a gradient compresses as such images do
            base = np.linspace(60, 180, args.width, dtype=np.float32)[None, :, None]
            grid = base + rng.normal(0, 2, (args.grid, 2 * args.height, args.width, 3))
            writer.add_images("val/truth_above_prediction", grid.clip(0, 255).astype(np.uint8), epoch,
                              dataformats="NHWC")
    return run.root


def tensorboard_values(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "runs"), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {tag[len("epoch/"):]: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"] if tag.startswith("epoch/")}


def sever_values(run_dir: Path) -> dict[str, dict[int, float]]:
    from sever.report.history import read_history
    from sever.utils.run import RunPaths

    return read_history(RunPaths(run_dir)).values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps an epoch")
    parser.add_argument("--batch-tags", type=int, default=4, help="scalars logged each step")
    parser.add_argument("--grid", type=int, default=4, help="validation images drawn each epoch")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="report-history-") as tmp:
        run_dir = write_run(Path(tmp), args)
        size = sum(f.stat().st_size for f in (run_dir / "runs").iterdir())
        print(f"event file: {size / 2**20:.0f} MiB ({args.epochs} epochs, {args.grid} images of "
              f"{args.height}x{args.width} an epoch)")
        seconds = {"tensorboard": [], "sever": []}
        sever_values(run_dir)  # imports sever (torch) outside the timing
        for _ in range(args.repeat):  # taking turns, so a busy spell hits both
            for name, read in (("tensorboard", tensorboard_values), ("sever", sever_values)):
                started = time.perf_counter()
                values = read(run_dir)
                seconds[name].append(time.perf_counter() - started)
                if name == "tensorboard":
                    expected = values
                elif {k: {s: round(v, 6) for s, v in p.items()} for k, p in values.items()} != \
                        {k: {s: round(v, 6) for s, v in p.items()} for k, p in expected.items()}:
                    raise SystemExit("the two readers disagree on the per-epoch values")
        tb, ours = (statistics.median(seconds[name]) for name in ("tensorboard", "sever"))
        print(f"TensorBoard EventAccumulator: {tb:.2f} s; sever read_history: {ours:.3f} s; "
              f"{tb / ours:.0f}x faster (median of {args.repeat}; both read the same values)")


if __name__ == "__main__":
    main()
