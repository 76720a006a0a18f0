"""Models written by ``sever export``, loaded as models of sever's predictor, and the metadata they carry.

Every export carries what a deployer needs besides the weights, as JSON values
(:func:`deployment_metadata`): the task, the output channels' ClassIds and names,
the input (channels, mean and std of the grey normalisation, a fixed size or
none), the post-processing the run tuned, and sever's version. An ONNX file holds
them in its ``metadata_props`` (one entry per key, each value JSON), a TorchScript
file in its extra file ``sever.json``, an smp folder in ``sever.json`` beside
``config.json``.

:func:`open_exported` turns such a file or folder back into a
:class:`~sever.inference.checkpoints.LoadedModel` whose network runs through
onnxruntime (ONNX), ``torch.jit`` (TorchScript) or smp (an smp folder), so
``sever predict -m model.onnx`` uses the predictor's batching, TTA, tiling and
post-processing unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sever import __version__
from sever.data_loader.augmentation import Normalization
from sever.exceptions import CheckpointError, ConfigError
from sever.inference.checkpoints import LoadedModel, OpenedCheckpoint
from sever.inference.predictor import run_settings
from sever.registries import TRANSFORMS
from sever.tasks import task_of
from sever.utils.config import OutputClasses, output_classes

METADATA_FILE = "sever.json"  # TorchScript extra file; the smp folder's file beside config.json
SMP_FILES = ("config.json", "model.safetensors", METADATA_FILE)
FORMAT_VERSION = 1
INPUT = ("float32 (B, input_channels, H, W): a grey uint8 image x as (x / 255 - mean) / std, the one channel "
         "repeated input_channels times")
OUTPUT = "logits (B, classes, H, W) (a classifier: (B, classes)); probability = sigmoid(logits)"


def deployment_metadata(opened: OpenedCheckpoint, model: nn.Module, weights: str,
                        input_size: tuple[int, int] | None) -> dict[str, Any]:
    """What an export of ``opened``'s ``model`` carries besides the weights: plain JSON types.

    Args:
        opened: the checkpoint exported (its config, its tuned post-processing).
        model: its network (for the input channels).
        weights: ``"ema"`` or ``"model"``: which weights were exported.
        input_size: ``(H, W)`` when the export takes only that size, else None.
    """
    config = opened.config
    outputs = output_classes(config)
    augmentation = config.get("augmentation")
    normalization = TRANSFORMS.build(augmentation, "augmentation").normalization if augmentation else None
    postprocess, described = None, None
    if task_of(config).ensemble_option == "-m":
        loaded = LoadedModel(model, opened.source, config, normalization, opened.state.get("postprocess"))
        settings, described = run_settings(None, [loaded], classifier=False)
        postprocess = settings.to_mapping()
    arch = config["arch"] if isinstance(config["arch"], dict) else {"type": config["arch"]}
    return {
        "format_version": FORMAT_VERSION,
        "sever_version": __version__,
        "task": config["task"],
        "architecture": arch.get("type"),
        "encoder": (arch.get("args") or {}).get("encoder_name"),
        "input": INPUT,
        "input_channels": int(model.in_channels),
        "input_size": list(input_size) if input_size else None,
        "mean": None if normalization is None else float(normalization.mean),
        "std": None if normalization is None else float(normalization.std),
        "output": OUTPUT,
        "classes": outputs.outputs,
        "class_ids": "any" if outputs.any_defect else [k + 1 for k in outputs.ids],
        "class_names": _output_names(outputs),
        "dataset_classes": outputs.dataset,
        "dataset_class_names": list(outputs.names) if outputs.names else None,
        "postprocess": postprocess,
        "postprocess_source": described,
        "checkpoint": opened.source.name,
        "epoch": opened.state.get("epoch"),
        "weights": weights,
    }


def _output_names(outputs: OutputClasses) -> list[str]:
    """The name of each output channel: the class's name, ``class N`` without names, or ``any defect``."""
    if outputs.any_defect:
        return ["any defect"]
    return [outputs.names[k] if outputs.names else f"class {k + 1}" for k in outputs.ids]


def metadata_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """``metadata`` as ONNX ``metadata_props``: one entry per key, its value as JSON."""
    return {key: json.dumps(value) for key, value in metadata.items()}


# ---------------------------------------------------------------- recognising and reading exports


def exported_format(path: str | os.PathLike) -> str | None:
    """``"onnx"``, ``"torchscript"`` or ``"smp"`` when ``path`` is a ``sever export`` output, else None.

    An ``.onnx`` file; a TorchScript archive holding ``extra/sever.json`` (whatever its
    suffix: a torch.save checkpoint is a zip archive too, without it); a folder of
    ``config.json``, ``model.safetensors`` and ``sever.json``.
    """
    path = Path(path)
    if path.is_dir():
        return "smp" if all((path / name).is_file() for name in SMP_FILES) else None
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith(f"/extra/{METADATA_FILE}") for name in archive.namelist()):
                return "torchscript"
    return None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata an export carries (see :func:`deployment_metadata`).

    Raises:
        CheckpointError: not an export of sever, or one without its metadata.
    """
    path = Path(path)
    fmt = exported_format(path)
    if fmt == "onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and kin: whatever the file holds, name it
            raise CheckpointError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
        metadata = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    elif fmt == "torchscript":
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}"))
            metadata = json.loads(archive.read(name))
    elif fmt == "smp":
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    else:
        raise CheckpointError(f"{path}: not a model exported by sever export (.onnx, TorchScript or smp folder)")
    if "format_version" not in metadata:
        raise CheckpointError(f"{path}: no sever metadata (exported by an older sever?); export the run again")
    return metadata


def exported_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config the predictor reads, rebuilt from an export's metadata."""
    ids = metadata["class_ids"]
    return {
        "task": metadata["task"],
        "classes": metadata["dataset_classes"],
        "class_names": metadata["dataset_class_names"],
        "data_loader": {"args": {"train_classes": ids}},
    }


def open_exported_checkpoint(path: str | os.PathLike) -> OpenedCheckpoint:
    """An export as an :class:`OpenedCheckpoint`: its rebuilt config, and ``state["exported"]`` its format."""
    metadata = read_metadata(path)
    return OpenedCheckpoint(Path(path), {"config": exported_config(metadata), "exported": exported_format(path),
                                         "metadata": metadata, "postprocess": metadata.get("postprocess")})


# ---------------------------------------------------------------- running exports


class ExportedNetwork(nn.Module):
    """An exported network as a module of normalised images ``(B, 1 or C_in, H, W)`` -> logits.

    A grey batch is repeated to the export's ``C_in`` channels (the exported graph
    froze the model's own repeat at its export shape); inputs go to the runtime on
    the CPU (onnxruntime) or the device, and the logits come back to the input's device.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], in_channels: int, source: Path,
                 input_size: tuple[int, int] | None = None):
        super().__init__()
        self.run = run
        self.in_channels = in_channels
        self.source = source
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            height, width = self.input_size
            raise ConfigError(f"{self.source}: exported for {height}x{width} images only (without --dynamic), "
                              f"got {x.shape[-2]}x{x.shape[-1]}: predict with --tile {height}x{width}, or "
                              f"export again with --dynamic")
        if x.shape[1] == 1 and self.in_channels > 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        return self.run(x.float().contiguous()).to(x.device)


def onnx_session(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """An onnxruntime session of ``path``: CUDA when ``device`` is a GPU and onnxruntime has it, else the CPU.

    On the CPU it computes with torch's thread count (``torch.get_num_threads()``), as the
    PyTorch models do, rather than onnxruntime's default of every core.
    """
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def onnx_runner(path: str | os.PathLike, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """``path``'s ONNX graph as a function of tensors ``image`` -> ``logits`` (computed on the CPU or GPU)."""
    session = onnx_session(path, device)
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def torchscript_runner(path: str | os.PathLike, device: torch.device | str = "cpu") -> Callable:
    """A TorchScript file loaded on ``device`` (torch's deprecation notice of ``jit.load`` silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def smp_runner(path: str | os.PathLike, device: torch.device | str = "cpu") -> Callable:
    """An smp folder's model on ``device``, padding its input to the encoder's stride as sever's models do."""
    import segmentation_models_pytorch as smp

    with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local directory"
        net = smp.from_pretrained(str(path)).to(device).eval()
    stride = net.encoder.output_stride

    def run(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return net(F.pad(x, (0, -width % stride, 0, -height % stride)))[..., :height, :width]

    return run


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner, "smp": smp_runner}


def open_exported(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load an ONNX file, TorchScript file or smp folder written by ``sever export`` for sever's predictor.

    The result is what :func:`~sever.inference.checkpoints.load_model` gives for a run:
    a network of normalised ``(B, 1, H, W)`` images (here run by onnxruntime,
    ``torch.jit`` or smp), the export's normalisation and its tuned post-processing
    (``LoadedModel.postprocess``), so :class:`~sever.inference.predictor.Predictor`
    and :func:`~sever.inference.predictor.run_settings` use it as they use a run.

    Raises:
        CheckpointError: not an export of sever, no metadata, or an export without its
            normalisation (a checkpoint without ``augmentation`` in its config).
    """
    opened = open_exported_checkpoint(path)
    metadata = opened.state["metadata"]
    if metadata["mean"] is None or metadata["std"] is None:
        raise CheckpointError(f"{path}: exported without its normalisation (its checkpoint's config had no "
                              f"augmentation); export a run folder")
    runner = RUNNERS[opened.state["exported"]](path, device)
    size = metadata.get("input_size")
    network = ExportedNetwork(runner, metadata["input_channels"], Path(path), tuple(size) if size else None)
    normalization = Normalization(metadata["mean"], metadata["std"])
    return LoadedModel(network.eval(), Path(path), opened.config, normalization, metadata["postprocess"],
                       exported=opened.state["exported"])
