"""What the end-of-training post-processing tuning adds to a tiny run, as a ratio of the run's training.

Trains the test suite's tiny config (24 demo images of 64x256, 2 epochs, CPU) with
``trainer.tune_postprocess: false``, then runs the tuning that a finished run does
(:func:`sever.experiment.tune_postprocess`) on that run folder, and prints both times and
their ratio, measured in the same process one after the other. Wall time and this
process's CPU time are both given: on a shared machine the CPU time is distorted
less by other processes' load. Run from the repository root::

    PYTHONPATH=. python benchmarks/self_tune.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_config  # noqa: E402  (the test suite's tiny run)

from sever import experiment  # noqa: E402
from sever.data_loader.demo import make_demo_data  # noqa: E402


def timed(work) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main_() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_data(Path(tmp) / "demo", n_train=24, n_test=6, height=64, width=256, seed=3)
        config = experiment.prepare_config(tiny_config(demo, Path(tmp) / "saved", tune_postprocess=False))
        runs = []
        train = timed(lambda: runs.append(experiment.train(config)))
        config["trainer"]["tune_postprocess"] = True
        tune = timed(lambda: experiment.tune_postprocess(config, runs[0], torch.device("cpu")))
    print(f"training (2 epochs): {train[0]:.1f} s wall, {train[1]:.1f} s CPU")
    print(f"tuning after it:     {tune[0]:.1f} s wall, {tune[1]:.1f} s CPU")
    print(f"tuning / training:   {tune[0] / train[0]:.2f} wall, {tune[1] / train[1]:.2f} CPU")


if __name__ == "__main__":
    main_()
