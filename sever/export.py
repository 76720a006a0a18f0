"""Export a trained model to ONNX or TorchScript, for inference outside sever's training code.

::

    sever export -m saved/sever-unet-b5/1026_140000 --format onnx -o unet.onnx

The model is rebuilt from the checkpoint's own config (``arch`` and ``classes``,
with ``encoder_weights`` off: the weights come from the checkpoint), with the
EMA weights when the run kept them. The exported graph maps normalised images
``image (B, C_in, H, W)`` float32 to ``logits (B, classes, H, W)`` (segmentation)
or ``(B, classes)`` (classifier); the batch size is always free.

Segmentation models pad their input to a multiple of the encoder's output
stride and crop the logits back, but only when the size needs it: a trace
would freeze that choice at the export size. The exported module therefore
always pads, by amounts computed from the input's shape (zero for multiples of
the stride), so the graph is right for any ``H, W``: TorchScript traces always
take any size; ONNX graphs take any size with ``dynamic=True`` and are fixed to
the export size otherwise.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``). torch 2.14's
default, the ``torch.export``-based exporter, also exports these models but
needs the extra ``onnxscript`` package, took about ten times longer on a
ResNet-18 FPN and writes the weights to a separate ``.data`` file.

Every export is checked before it is reported: the written file is loaded
(onnxruntime or ``torch.jit.load``) and run on random inputs, and the
probabilities it gives (the sigmoid of its logits, what sever thresholds and
saves) must match PyTorch's within ``atol`` (:data:`DEFAULT_ATOL`, a quarter of
the 1/255 step of saved probabilities). Logits are not compared as such: float
rounding differs between runtimes by a relative amount, so a saturated logit of
11 may move by 1e-4 while its probability moves by 1e-6. An export that fails
the check is kept beside the requested file for inspection, never written over it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sever.exceptions import ConfigError, SeverError
from sever.inference.checkpoints import load_network
from sever.model.model import SegmentationModel
from sever.utils.run import RunPaths, resolve_resume

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
DEFAULT_ATOL = 1e-3  # largest difference from PyTorch's probabilities an export may show
DEFAULT_OPSET = 17


class ExportCheckError(SeverError):
    """The exported file does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how it checked it.

    Attributes:
        path: the exported file.
        fmt: ``"onnx"`` or ``"torchscript"``.
        checkpoint: the checkpoint file the weights came from.
        weights: ``"ema"`` or ``"model"``: which of its weights were exported.
        checked_shapes: input shapes ``(B, C_in, H, W)`` the export was run on.
        max_abs_diff: the largest absolute difference from PyTorch's logits over those runs.
        max_prob_diff: the largest absolute difference from PyTorch's probabilities (what is checked).
    """

    path: Path
    fmt: str
    checkpoint: Path
    weights: str
    checked_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    max_prob_diff: float


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given; for a run folder its ``model_best.pth``, else its newest checkpoint."""
    path = Path(path)
    if path.is_dir() and RunPaths(path).best.is_file():
        return RunPaths(path).best
    return resolve_resume(path)


def load_trained_model(checkpoint: str | os.PathLike) -> tuple[nn.Module, Path, str]:
    """The network of a checkpoint file or run folder, in eval mode on the CPU.

    Returns:
        ``(model, checkpoint file, "ema" or "model")``: the EMA weights are used when present.

    Raises:
        CheckpointError: no such file or run folder, or see
            :func:`sever.inference.checkpoints.load_network`.
    """
    model, _, path, weights = load_network(resolve_checkpoint(checkpoint))
    return model, path, weights


class PadForExport(nn.Module):
    """A segmentation model whose input is always padded to its output stride.

    Images ``(B, C_in, H, W)`` -> logits ``(B, classes, H, W)``, like the
    model; the pad amounts are computed from the input's shape inside the graph
    (``SegmentationModel.forward`` then sees a multiple of the stride and pads nothing).
    """

    def __init__(self, model: SegmentationModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        stride = self.model.encoder.output_stride
        padded = F.pad(x, (0, (-width) % stride, 0, (-height) % stride))
        return self.model(padded)[..., :height, :width]


def _exportable(model: nn.Module) -> nn.Module:
    return PadForExport(model).eval() if isinstance(model, SegmentationModel) else model


def _check_shape(height: int, width: int, opset: int) -> None:
    """ConfigError unless all three are positive integers."""
    for name, value in (("height", height), ("width", width), ("opset", opset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"export {name}: expected a positive integer, got {value!r}")


def export_model(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    height: int = 256,
    width: int = 1600,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export the model of ``checkpoint`` to ``out`` and check it against PyTorch.

    Args:
        checkpoint: a checkpoint file or a run folder (see :func:`resolve_checkpoint`).
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file to write (parent folders are created; replaced atomically).
        height, width: the example input's size in pixels (any; the Severstal images are 256 x 1600).
        opset: ONNX opset version (ONNX only).
        dynamic: ONNX: let H and W vary too (the batch size always may).
            TorchScript traces take any size either way.
        atol: the largest difference from PyTorch's probabilities accepted.

    Raises:
        ConfigError: unknown format, a bad size or ``atol``, or ONNX without its packages.
        CheckpointError: see :func:`load_trained_model`.
        ExportCheckError: the export's probabilities differ from PyTorch's by more than ``atol``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    _check_shape(height, width, opset)
    if not atol > 0:
        raise ConfigError(f"export atol: expected a positive number, got {atol!r}")
    if fmt == "onnx":
        _require_onnx()
    model, source, weights = load_trained_model(checkpoint)
    module = _exportable(model)
    example = torch.randn(1, model.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        run = _write(fmt, module, example, temporary, opset, dynamic)
        shapes = _check_shapes(example, dynamic or fmt == "torchscript")
        try:
            logits_diff, prob_diff = _max_differences(model, run, shapes, atol)
        except ExportCheckError as exc:
            kept = _keep_rejected(temporary, out)
            raise ExportCheckError(f"{exc}; {out} not written, the export is kept as {kept} for inspection") from None
        if out.exists():
            logger.info("replacing %s", out)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("exported %s weights of %s to %s (%s)", weights, source, out, fmt)
    return ExportResult(out, fmt, source, weights, shapes, logits_diff, prob_diff)


def _require_onnx() -> None:
    """ConfigError naming the extra to install when onnx or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"--format onnx needs the {' and '.join(missing)} package(s), not installed: "
                          f"pip install 'sever[export]'")


def _keep_rejected(temporary: Path, out: Path) -> Path:
    """Move an export that failed its check to ``NAME.rejected.SUFFIX`` beside ``out``."""
    kept = out.with_name(f"{out.stem}.rejected{out.suffix}")
    os.replace(temporary, kept)
    return kept


def _write(fmt: str, module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> Callable:
    """Export ``module`` to ``path`` and load the file back as a function of CPU tensors."""
    if fmt == "onnx":
        _write_onnx(module, example, path, opset, dynamic)
        return _onnx_runner(path)
    _write_torchscript(module, example, path)
    return _torchscript_runner(path)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence what tracing and torch's deprecation notices print for every export.

    The model's pad-if-needed branch is traced at a multiple of the stride on
    purpose (see :class:`PadForExport`), and the exporters' deprecation notices
    (TorchScript, the legacy ONNX exporter) are addressed in the module docstring.
    """
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """Trace ``module`` on ``example`` into an ONNX file; batch (and with ``dynamic`` H, W) left free."""
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    logits_axes = image_axes if isinstance(module, PadForExport) else {0: "batch"}  # classifier: (B, classes)
    with _quiet_tracing():
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": image_axes, "logits": logits_axes},
        )


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``module`` on ``example`` into a TorchScript file."""
    with _quiet_tracing(), torch.no_grad():
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _quiet_tracing():
        return torch.jit.load(str(path), map_location="cpu")


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def _check_shapes(example: torch.Tensor, any_size: bool) -> tuple[tuple[int, ...], ...]:
    """Input shapes to check: batch 2 at the export size and, for size-free exports, an odd other size."""
    batch, channels, height, width = example.shape
    shapes = [(2, channels, height, width)]
    if any_size:
        shapes.append((1, channels, height // 2 + 7, width // 2 + 5))
    return tuple(shapes)


def _max_differences(model: nn.Module, run: Callable, shapes: tuple[tuple[int, ...], ...],
                     atol: float) -> tuple[float, float]:
    """Largest absolute differences of logits and of probabilities between ``run`` and ``model``.

    Both are run on random inputs of each of ``shapes`` ``(B, C_in, H, W)``.

    Raises:
        ExportCheckError: a shape differs, or the probabilities by more than ``atol``.
    """
    generator = torch.Generator().manual_seed(1)
    worst_logits = worst_probs = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.inference_mode():
            expected, got = model(x), run(x)
        if got.shape != expected.shape:
            raise ExportCheckError(f"the export gives logits of shape {tuple(got.shape)} for input {shape}, "
                             f"PyTorch {tuple(expected.shape)}")
        worst_logits = max(worst_logits, float(np.abs(got.numpy() - expected.numpy()).max()))
        worst_probs = max(worst_probs, float((torch.sigmoid(got) - torch.sigmoid(expected)).abs().max()))
    if worst_probs > atol:
        raise ExportCheckError(f"the export's probabilities differ from PyTorch's by up to {worst_probs:.2e} "
                               f"(> --atol {atol:g}; logits by up to {worst_logits:.2e}); accept it with a "
                               f"larger --atol")
    return worst_logits, worst_probs
