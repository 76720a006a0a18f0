"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from sever.exceptions import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"device: {spec!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse precisions the device cannot run."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs a CUDA device; use bf16 or off on CPU")


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` (``off`` gives a no-op)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@dataclass(frozen=True)
class Capabilities:
    """What a device offers the planner.

    Attributes:
        kind: ``cpu`` or ``cuda``.
        bf16: the device computes in bfloat16 (``torch.cuda.is_bf16_supported()``).
        memory: bytes of device memory, or None (CPU: the host's, not planned against).
        name: the device's name, for messages.
    """

    kind: str
    bf16: bool = False
    memory: int | None = None
    name: str = "cpu"


def capabilities(device: torch.device) -> Capabilities:
    """The :class:`Capabilities` of ``device`` (queried from CUDA; a CPU offers no mixed precision)."""
    if device.type != "cuda":
        return Capabilities("cpu")
    properties = torch.cuda.get_device_properties(device)
    return Capabilities("cuda", torch.cuda.is_bf16_supported(), int(properties.total_memory), properties.name)


def choose_amp(caps: Capabilities) -> str:
    """The ``amp`` setting for a device: ``bf16`` where CUDA supports it, else ``fp16`` (with the trainer's
    GradScaler) on CUDA, ``off`` (fp32) on CPU, where autocast gains little and fp16 cannot run."""
    if caps.kind != "cuda":
        return "off"
    return "bf16" if caps.bf16 else "fp16"


def largest_batch(fits: Callable[[int], bool], limit: int = 256) -> int:
    """The largest batch size in ``1..limit`` for which ``fits(batch)`` holds, or 0 when even 1 does not fit.

    Doubles from 1 until a size fails (or ``limit``), then bisects between the last size that
    fitted and the first that failed; ``fits`` is assumed monotone (what fits at b fits below b).
    Each probe costs a trial step, so about ``2 * log2(answer)`` calls are made.
    """
    if not fits(1):
        return 0
    good = 1
    while good < limit:
        trial = min(2 * good, limit)
        if not fits(trial):
            bad = trial
            break
        good = trial
    else:
        return good
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


CPU_BATCH_PIXELS = 2**19  # pixels of one CPU batch (about 0.5 megapixel): a step of a few seconds on 2-4 cores


def cpu_batch_size(crop: tuple[int, int], low: int = 2, high: int = 16) -> int:
    """The CPU batch size for a training crop ``(h, w)`` in pixels: the power of two nearest below
    :data:`CPU_BATCH_PIXELS` / crop pixels, within ``low..high``. Memory is not the limit on a
    CPU; a step long enough to keep every core busy, short enough to fit many per epoch, is."""
    fitting = max(1, CPU_BATCH_PIXELS // (crop[0] * crop[1]))
    return int(min(high, max(low, 2 ** (fitting.bit_length() - 1))))
