"""Measuring the target device and the data loading for ``sever plan``.

A :class:`Target` is where the planned experiment trains: its capabilities, and probes
that answer how long one training step takes, whether a batch fits in memory and how
long one loader process takes per image. :func:`device_target` builds it for a real
device by trial steps; the tests build it from fake probes, so every planning decision
is tested on CPU without depending on the machine's speed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sever.exceptions import ConfigError
from sever.model.model import build_model
from sever.planning.fingerprint import Fingerprint
from sever.planning.policy import DEFAULT_POLICY, PlanPolicy
from sever.utils.device import Capabilities, autocast, choose_amp


class PlanError(ConfigError):
    """No plan fits: the time budget is too short for one epoch of the smallest plan, or nothing fits the device."""


@dataclass(frozen=True)
class Target:
    """Where the planned experiment will train.

    Attributes:
        device: the config's ``device`` (``cpu`` or ``cuda``).
        caps: what the device offers.
        step_seconds: ``(arch, crop, batch) -> seconds`` of one training step, measured.
        fits: ``(arch, crop, batch) -> bool``, whether a step of that batch fits (CUDA).
        image_seconds: ``crop -> seconds`` one loader process takes to read and augment one
            training image, measured on the dataset's images; None: loading is not measured.
    """

    device: str
    caps: Capabilities
    step_seconds: Callable[[dict, tuple[int, int], int], float]
    fits: Callable[[dict, tuple[int, int], int], bool] | None = None
    image_seconds: Callable[[tuple[int, int]], float] | None = None


def trial_step(arch: dict, classes: int, crop: tuple[int, int], batch: int, device: torch.device,
               amp: str) -> tuple[float, int]:
    """One forward/backward step on random ``(batch, 1, h, w)`` input: ``(seconds, peak CUDA bytes)``.

    The first step warms up (cuDNN algorithm choice, allocation); the median of the next three is
    the step time, so one step slowed by other work on a shared machine does not set the plan.
    """
    model = build_model(arch, classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    images = torch.randn(batch, 1, *crop, device=device)
    target = torch.rand(batch, classes, *crop, device=device).round()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(4):
        started = time.perf_counter()
        with autocast(amp, device):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(seconds[1:]), peak


def loading_seconds(fp: Fingerprint, transforms_for: Callable[[tuple[int, int]], str] | None = None,
                    policy: PlanPolicy = DEFAULT_POLICY) -> Callable[[tuple[int, int]], float]:
    """``crop -> seconds`` one process takes to read and augment one of ``fp``'s images (the median over
    :attr:`PlanPolicy.loading_samples` images spread over the folder, with the transform set
    ``transforms_for(crop)`` names: by default the one the plan chooses for that crop)."""
    from sever.data_loader.datasets import list_images, read_grey
    from sever.registries import TRANSFORMS

    if transforms_for is None:
        from sever.planning.rules import plan_augmentation

        transforms_for = lambda crop: plan_augmentation(fp, crop, policy)[0]  # noqa: E731
    folder = Path(fp.data_dir) / fp.layout["images"]
    names = list_images(folder)
    samples = policy.loading_samples
    sample = [folder / names[i] for i in range(0, len(names), max(1, len(names) // samples))][:samples]
    cache: dict[tuple[int, int], float] = {}

    def seconds(crop: tuple[int, int]) -> float:
        if crop not in cache:
            pipeline = TRANSFORMS.build({"type": transforms_for(crop), "args": {"height": crop[0], "width": crop[1]}},
                                        "augmentation").build(train=True)
            times = []
            for path in sample:
                started = time.perf_counter()
                image = read_grey(path)
                pipeline(image=image, mask=np.zeros((*image.shape, len(fp.classes)), np.uint8))
                times.append(time.perf_counter() - started)
            cache[crop] = statistics.median(times)
        return cache[crop]

    return seconds


def device_target(device: str, classes: int, fp: Fingerprint | None = None,
                  policy: PlanPolicy = DEFAULT_POLICY) -> Target:
    """The :class:`Target` of a real device (``auto``, ``cpu``, ``cuda``), measuring on it (and the
    loading of ``fp``'s images, when given)."""
    from sever.utils.device import capabilities, resolve_device

    resolved = resolve_device(device)
    caps = capabilities(resolved)
    amp = choose_amp(caps)
    cache: dict[tuple, tuple[float, int] | None] = {}

    def measure(arch: dict, crop: tuple[int, int], batch: int) -> tuple[float, int] | None:
        key = (repr(arch), crop, batch)
        if key not in cache:
            try:
                cache[key] = trial_step(arch, classes, crop, batch, resolved, amp)
            except torch.cuda.OutOfMemoryError:
                cache[key] = None
            finally:
                if resolved.type == "cuda":
                    torch.cuda.empty_cache()
        return cache[key]

    def fits(arch: dict, crop: tuple[int, int], batch: int) -> bool:
        result = measure(arch, crop, batch)
        return result is not None and result[1] <= policy.memory_margin * (caps.memory or 0)

    def step_seconds(arch: dict, crop: tuple[int, int], batch: int) -> float:
        result = measure(arch, crop, batch)
        if result is None:
            raise PlanError(f"--device {device}: a batch of {batch} {crop[0]}x{crop[1]} crops does not fit")
        return result[0]

    return Target(resolved.type, caps, step_seconds, fits if resolved.type == "cuda" else None,
                  loading_seconds(fp, policy=policy) if fp is not None else None)
