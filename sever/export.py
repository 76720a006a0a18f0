"""Export a trained model to ONNX, TorchScript or an smp folder, for inference outside sever.

::

    sever export -m saved/sever-unet-b5/1026_140000 --format onnx -o unet.onnx
    sever export -m saved/sever-unet-b5/1026_140000 --format smp -o unet/

Each export carries its metadata (:mod:`sever.inference.exported`: classes, mean and
std, input channels, the tuned post-processing, the task, sever's version): an ONNX
file in its ``metadata_props``, a TorchScript file in its extra file ``sever.json``.
``--format smp`` writes a folder that plain ``segmentation_models_pytorch.from_pretrained``
loads strictly (``config.json``, ``model.safetensors``), the preprocessing as
albumentations' ``A.Compose.save_pretrained`` (``albumentations_config_eval.json``),
``sever.json`` and a model card (``README.md``).

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
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import yaml
import torch.nn.functional as F
from torch import nn

from sever.exceptions import ConfigError, SeverError
from sever.inference.checkpoints import OpenedCheckpoint, load_network, open_checkpoint
from sever.inference.predictor import TUNED_FILE
from sever.inference.exported import (METADATA_FILE, deployment_metadata, exported_format, metadata_strings,
                                      onnx_runner, smp_runner, torchscript_runner)
from sever.model.model import SegmentationModel
from sever.utils.run import RunPaths, resolve_resume

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "smp")
DEFAULT_ATOL = 1e-3  # largest difference from PyTorch's probabilities an export may show
DEFAULT_OPSET = 17


class ExportCheckError(SeverError):
    """The exported file does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how it checked it.

    Attributes:
        path: the exported file.
        fmt: ``"onnx"``, ``"torchscript"`` or ``"smp"``.
        checkpoint: the checkpoint file the weights came from.
        weights: ``"ema"`` or ``"model"``: which of its weights were exported.
        checked_shapes: input shapes ``(B, C_in, H, W)`` the export was run on.
        max_abs_diff: the largest absolute difference from PyTorch's logits over those runs.
        max_prob_diff: the largest absolute difference from PyTorch's probabilities (what is checked).
        metadata: what the export carries besides the weights
            (:func:`sever.inference.exported.deployment_metadata`).
    """

    path: Path
    fmt: str
    checkpoint: Path
    weights: str
    checked_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    max_prob_diff: float
    metadata: dict | None = None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given; for a run folder its ``model_best.pth``, else its newest checkpoint."""
    path = Path(path)
    if path.is_dir() and RunPaths(path).best.is_file():
        return RunPaths(path).best
    return resolve_resume(path)


def load_trained_model(checkpoint: str | os.PathLike | OpenedCheckpoint) -> tuple[nn.Module, Path, str]:
    """The network of a checkpoint file or run folder (or one already opened), in eval mode on the CPU.

    Returns:
        ``(model, checkpoint file, "ema" or "model")``: the EMA weights are used when present.

    Raises:
        CheckpointError: no such file or run folder, or see
            :func:`sever.inference.checkpoints.load_network`.
    """
    if not isinstance(checkpoint, OpenedCheckpoint):
        checkpoint = resolve_checkpoint(checkpoint)
    model, _, path, weights = load_network(checkpoint)
    return model, path, weights


def check_output(out: Path, fmt: str) -> None:
    """Refuse, before any work, an output that cannot be written.

    Raises:
        ConfigError: a parent of ``out`` is a file; ``out`` is a folder (ONNX, TorchScript) or a
            file (smp); ``out`` is a folder holding something other than an earlier smp export.
    """
    for parent in out.parents:  # nearest first: the first that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write {out}: {parent} is a file, not a folder")
            break
    if fmt != "smp" and out.is_dir():
        raise ConfigError(f"cannot write {out}: a folder; --format {fmt} writes a file")
    if fmt == "smp" and out.exists():
        if not out.is_dir():
            raise ConfigError(f"cannot write {out}: a file; --format smp writes a folder")
        if any(out.iterdir()) and exported_format(out) != "smp":
            raise ConfigError(f"cannot write {out}: a folder holding other files; give a new or empty folder")


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
        fmt: ``"onnx"``, ``"torchscript"`` or ``"smp"`` (a folder, segmentation models only).
        out: the file (smp: the folder) to write; parent folders are created; replaced atomically.
        height, width: the example input's size in pixels (any; the Severstal images are 256 x 1600).
        opset: ONNX opset version (ONNX only).
        dynamic: ONNX: let H and W vary too (the batch size always may).
            TorchScript traces and smp folders take any size either way.
        atol: the largest difference from PyTorch's probabilities accepted.

    Raises:
        ConfigError: unknown format, a bad size, ``atol`` or output path, ONNX without its
            packages, or ``smp`` for a model that is not a segmentation model.
        CheckpointError: see :func:`load_trained_model`.
        ExportCheckError: the export's probabilities differ from PyTorch's by more than ``atol``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    _check_shape(height, width, opset)
    if not atol > 0:
        raise ConfigError(f"export atol: expected a positive number, got {atol!r}")
    out = Path(out)
    check_output(out, fmt)
    if fmt == "onnx":
        _require_onnx()
    opened = open_checkpoint(resolve_checkpoint(checkpoint))
    model, source, weights = load_trained_model(opened)
    if fmt == "smp" and not isinstance(model, SegmentationModel):
        raise ConfigError(f"--format smp: {source} is a {opened.config['task']} model; smp folders hold "
                          f"segmentation models: export it with --format onnx or torchscript")
    fixed_size = (height, width) if fmt == "onnx" and not dynamic else None
    metadata = deployment_metadata(opened, model, weights, fixed_size)
    if fmt == "smp" and metadata["mean"] is None:
        raise ConfigError(f"--format smp: {source}'s config has no augmentation block, so no normalisation to "
                          f"save with the model; export a run folder's checkpoint")
    example = torch.randn(1, model.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        run, shapes = _write(fmt, model, example, temporary, opset, dynamic, metadata, opened)
        try:
            logits_diff, prob_diff = _max_differences(model, run, shapes, atol)
        except ExportCheckError as exc:
            kept = _keep_rejected(temporary, out)
            raise ExportCheckError(f"{exc}; {out} not written, the export is kept as {kept} for inspection") from None
        _replace(temporary, out)
    finally:
        _remove(temporary)
    logger.debug("exported %s weights of %s to %s (%s)", weights, source, out, fmt)  # the CLI says it once
    return ExportResult(out, fmt, source, weights, shapes, logits_diff, prob_diff, metadata)


def _replace(temporary: Path, out: Path) -> None:
    """Move the checked export onto ``out`` (an earlier smp folder there is removed first)."""
    if out.exists():
        logger.info("replacing %s", out)
        if out.is_dir():
            shutil.rmtree(out)
    os.replace(temporary, out)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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


def _write(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool,
           metadata: dict, opened: OpenedCheckpoint) -> tuple[Callable, tuple[tuple[int, ...], ...]]:
    """Export ``model`` to ``path``; the file loaded back as a function of CPU tensors, and the shapes to check."""
    if fmt == "smp":
        write_smp_folder(model, path, metadata, opened)
        return smp_runner(path), (_stride_multiple(example, model.encoder.output_stride),)
    module = _exportable(model)
    if fmt == "onnx":
        _write_onnx(module, example, path, opset, dynamic, metadata)
        return _onnx_runner(path), _check_shapes(example, dynamic)
    _write_torchscript(module, example, path, metadata)
    return _torchscript_runner(path), _check_shapes(example, True)


def write_smp_folder(model: SegmentationModel, folder: Path, metadata: dict, opened: OpenedCheckpoint) -> None:
    """Write ``model`` as a folder plain smp and albumentations load (see the module docstring).

    ``config.json`` and ``model.safetensors`` by smp's own ``save_pretrained``; the
    preprocessing by albumentations' ``A.Compose.save_pretrained``; ``sever.json`` the
    metadata; ``README.md`` the model card (:func:`model_card`), written over smp's generic one.
    """
    model.to_smp().save_pretrained(str(folder))
    preprocessing(metadata, model.encoder.output_stride).save_pretrained(str(folder))
    _drop_pad_state(folder / "albumentations_config_eval.json")
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(metadata, opened), encoding="utf-8")


def preprocessing(metadata: dict, stride: int):
    """The albumentations pipeline that turns a grey uint8 ``(H, W)`` image into what sever feeds the model.

    The grey channel repeated to the model's input channels, ``(x / 255 - mean) / std``, padded
    with zeros (the normalised mean) at the bottom and right to a multiple of ``stride`` as
    sever's models pad, and made a ``(C_in, H', W')`` float32 tensor. Crop the model's output
    back to ``(H, W)``.
    """
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    steps = [A.ToRGB(num_output_channels=metadata["input_channels"])] if metadata["input_channels"] > 1 else []
    steps += [
        A.Normalize(mean=metadata["mean"], std=metadata["std"], max_pixel_value=255.0),
        A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=stride, pad_width_divisor=stride,
                      position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0),
        ToTensorV2(),
    ]
    return A.Compose(steps)


def model_card(metadata: dict, opened: OpenedCheckpoint) -> str:
    """The smp folder's ``README.md``: classes, training data, scores, tuned post-processing, how to load."""
    config = opened.config
    rows = "\n".join(f"| {k} | {cid} | {name} |" for k, (cid, name) in
                     enumerate(zip(_class_ids(metadata), metadata["class_names"])))
    trained_with = f" {opened.state['sever_version']}" if opened.state.get("sever_version") else ""
    postprocess = yaml.safe_dump(metadata["postprocess"], sort_keys=False, default_flow_style=None).strip()
    return f"""---
library_name: segmentation-models-pytorch
pipeline_tag: image-segmentation
tags: [segmentation-models-pytorch, semantic-segmentation, sever, surface-defects]
---
# {metadata["architecture"]} ({metadata["encoder"]}): {config.get("name", "sever model")}

Trained with sever{trained_with} and exported by sever {metadata["sever_version"]} from `{opened.source.name}`
(epoch {metadata["epoch"]}, {metadata["weights"]} weights).

## Classes

One output channel per class (sigmoid probabilities, no background channel):

| output | ClassId | name |
|---|---|---|
{rows}

## Training data

{_training_data(config)}

## Scores

{_scores(opened)}

## Input

A grey image read as one uint8 channel (`cv2.IMREAD_GRAYSCALE`), normalised as `(x / 255 - mean) / std`
with mean {metadata["mean"]:.6g} and std {metadata["std"]:.6g}, repeated to {metadata["input_channels"]} input
channel(s) and padded with zeros at the bottom and right to a multiple of 32 (the saved preprocessing does
all of it; crop the output back to the image's size).

## Post-processing

{metadata["postprocess_source"]}: a pixel is a defect of class c when its probability is above
`threshold[c]`; a class with fewer than `min_pixels[c]` pixels left in an image is removed;
`one_class_per_pixel` keeps each pixel in its most probable class only; `min_component` removes smaller
connected components.

```yaml
{postprocess}
```

## Load it with smp and albumentations

```python
import albumentations as A
import cv2
import segmentation_models_pytorch as smp
import torch

model = smp.from_pretrained("THIS_FOLDER").eval()
preprocess = A.Compose.from_pretrained("THIS_FOLDER")
image = cv2.imread("image.jpg", cv2.IMREAD_GRAYSCALE)
with torch.no_grad():
    logits = model(preprocess(image=image)["image"][None])
probs = logits.sigmoid()[0, :, : image.shape[0], : image.shape[1]]  # (classes, H, W)
```

`sever predict -m THIS_FOLDER -i IMAGES` applies the whole post-processing above and writes a submission.
`sever.json` holds these settings as JSON.
"""


def _class_ids(metadata: dict) -> list:
    ids = metadata["class_ids"]
    return ["any"] if ids == "any" else ids


def _training_data(config: dict) -> str:
    """The data a run trained on, as Markdown lines."""
    loader = config.get("data_loader") or {}
    args = loader.get("args") or {}
    augmentation = config.get("augmentation") or {}
    lines = [f"- data: `{args.get('data_dir', 'unknown')}` ({loader.get('type', 'unknown loader')})"]
    if args.get("validation_split") is not None:
        lines.append(f"- validation split: {args['validation_split']} of the images")
    if args.get("train_classes") is not None:
        lines.append(f"- classes trained: {args['train_classes']}")
    lines.append(f"- augmentation: {augmentation.get('type', 'unknown')} {json.dumps(augmentation.get('args') or {})}")
    return "\n".join(lines)


def _scores(opened: OpenedCheckpoint) -> str:
    """The run's best monitored score and its tuned post-processing's score, as Markdown lines."""
    state = opened.state
    monitor = (opened.config.get("trainer") or {}).get("monitor", "off")
    lines = []
    if monitor != "off" and state.get("monitor_best") is not None:
        lines.append(f"- best {monitor.split()[-1]}: {float(state['monitor_best']):.4f} (epoch "
                     f"{state.get('best_epoch', state.get('epoch'))}, validation split)")
    tuned = opened.source.parent.parent / TUNED_FILE
    header = tuned.read_text(encoding="utf-8").splitlines()[:1] if tuned.is_file() else []
    if header and header[0].startswith("#"):
        lines.append(f"- post-processing tuned: {header[0].lstrip('# ')}")
    return "\n".join(lines) or "No scores recorded in the checkpoint."


def _drop_pad_state(path: Path) -> None:
    """Remove ``padding`` from saved ``PadIfNeeded`` steps.

    albumentations 2.0.8 saves that internal attribute with the arguments, then warns
    on loading that it is not one; the transform computes it again from the others.
    """
    saved = json.loads(path.read_text(encoding="utf-8"))
    for step in saved["transform"]["transforms"]:
        if step.get("__class_fullname__") == "PadIfNeeded":
            step.pop("padding", None)
    path.write_text(json.dumps(saved, indent=1), encoding="utf-8")


def _stride_multiple(example: torch.Tensor, stride: int) -> tuple[int, ...]:
    """Batch 2 at the example's size rounded up to ``stride``: what a plain smp model takes."""
    _, channels, height, width = example.shape
    return 2, channels, height + (-height % stride), width + (-width % stride)


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


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool,
                metadata: dict) -> None:
    """Trace ``module`` on ``example`` into an ONNX file with ``metadata`` in its ``metadata_props``.

    The batch (and with ``dynamic`` H, W) is left free.
    """
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    logits_axes = image_axes if isinstance(module, PadForExport) else {0: "batch"}  # classifier: (B, classes)
    with _quiet_tracing():
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": image_axes, "logits": logits_axes},
        )
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata_strings(metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """Trace ``module`` on ``example`` into a TorchScript file, ``metadata`` as its extra file ``sever.json``."""
    with _quiet_tracing(), torch.no_grad():
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path),
                       _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torchscript_runner(path)


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return onnx_runner(path)


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
