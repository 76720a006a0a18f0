"""`sever export`: ONNX and TorchScript files that compute what the PyTorch model computes."""

import sys

import numpy as np
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sever import experiment
from sever.cli.app import cli
from sever.exceptions import CheckpointError, ConfigError
from sever import export as exporting
from sever.export import ExportCheckError, export_model, load_trained_model
from sever.model.model import build_model
from sever.utils.checkpoint import atomic_torch_save, load_checkpoint

ARCH = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": "imagenet",
                                "decoder_args": {"decoder_pyramid_channels": 32,
                                                 "decoder_segmentation_channels": 32}}}
CLASSES = 4


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    arch = {**ARCH, "args": {**ARCH["args"], "encoder_weights": None}}
    return build_model(arch, CLASSES).eval()


@pytest.fixture(scope="module")
def checkpoint(module_tmp):
    """A checkpoint whose config asks for ImageNet weights: export must not download them."""
    path = module_tmp("export") / "model.pth"
    model = tiny_model(0)
    atomic_torch_save({"state_dict": model.state_dict(), "config": {"arch": ARCH, "classes": CLASSES}, "epoch": 3},
                      path)
    return path, model


def pytorch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


def test_onnx_export_matches_pytorch_at_any_size_when_dynamic(checkpoint, tmp_path):
    path, model = checkpoint
    result = export_model(path, "onnx", tmp_path / "out" / "model.onnx", height=64, width=96, dynamic=True)
    assert result.path.is_file() and result.weights == "model" and result.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 64, 96), (3, 1, 64, 96), (2, 1, 50, 70)]:  # 50x70: the model pads to 64x96
        x = torch.randn(*shape)
        logits = session.run(None, {"image": x.numpy()})[0]
        expected = pytorch_logits(model, x)
        assert logits.shape == expected.shape and np.abs(logits - expected).max() <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_matches_pytorch(checkpoint, tmp_path):
    path, model = checkpoint
    result = export_model(path, "torchscript", tmp_path / "model.pt", height=64, width=96)
    loaded = torch.jit.load(str(result.path))
    for shape in [(2, 1, 64, 96), (1, 1, 40, 100)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            logits = loaded(x).numpy()
        assert np.abs(logits - pytorch_logits(model, x)).max() <= 1e-4


def test_ema_weights_are_exported_when_the_run_kept_them(tmp_path):
    model, averaged_into = tiny_model(0), tiny_model(1)
    ema = AveragedModel(averaged_into, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    state = {"state_dict": model.state_dict(), "ema_state_dict": ema.state_dict(),
             "config": {"arch": ARCH, "classes": CLASSES}, "epoch": 1}
    atomic_torch_save(state, tmp_path / "ema.pth")
    loaded, _, weights = load_trained_model(tmp_path / "ema.pth")
    x = torch.randn(1, 1, 64, 64)
    assert weights == "ema"
    assert np.abs(pytorch_logits(loaded, x) - pytorch_logits(averaged_into, x)).max() == 0


@pytest.mark.slow
def test_cli_exports_the_ema_weights_of_a_trained_run_at_a_fixed_size(make_config, tmp_path):
    run = experiment.train(make_config(epochs=1, ema_decay=0.9))
    out = tmp_path / "run.onnx"
    result = CliRunner().invoke(cli, ["export", "-m", str(run.root), "--format", "onnx", "-o", str(out),
                                      "--height", "64", "--width", "96"])
    assert result.exit_code == 0, result.output
    assert f"the ema weights of {run.best}" in result.output
    assert "2x1x64x96: probabilities differ by up to" in result.output and "(--atol 0.001)" in result.output
    # the trained EMA weights, loaded by hand into a freshly built model (not through the exporter's loader)
    state = load_checkpoint(run.best)
    ema = {k.removeprefix("module."): v for k, v in state["ema_state_dict"].items() if k != "n_averaged"}
    model = build_model(state["config"]["arch"], state["config"]["classes"]).eval()
    model.load_state_dict(ema)
    assert any(not torch.equal(ema[k], v) for k, v in state["state_dict"].items()), "EMA differs from the weights"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 64, 96)  # the batch size stays free
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - pytorch_logits(model, x)).max() <= 1e-4


def test_missing_checkpoint_and_unknown_format_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a run folder"):
        export_model(tmp_path / "nowhere", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; valid: onnx, torchscript"):
        export_model(checkpoint[0], "tflite", tmp_path / "x.tflite")
    result = CliRunner().invoke(cli, ["export", "-m", str(tmp_path / "missing.pth"), "--format", "onnx",
                                      "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "missing.pth: neither a checkpoint file nor a run folder" in result.output
    result = CliRunner().invoke(cli, ["export", "-m", str(checkpoint[0]), "--format", "tflite", "-o", "x"])
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output
    assert not (tmp_path / "x.onnx").exists()


def shifted_runner(monkeypatch, shift: float) -> None:
    """Make the check run the written ONNX file with ``shift`` added to its logits (another runtime's rounding)."""
    real = exporting._onnx_runner
    monkeypatch.setattr(exporting, "_onnx_runner", lambda path: (lambda x, run=real(path): run(x) + shift))


def test_logit_rounding_that_leaves_probabilities_alone_passes_the_check(checkpoint, tmp_path, monkeypatch):
    shifted_runner(monkeypatch, 2e-4)  # the README's failure: logits off by 1.2e-4
    result = export_model(checkpoint[0], "onnx", tmp_path / "model.onnx", height=64, width=96)
    assert result.max_abs_diff > 1e-4 and result.max_prob_diff < 1e-4  # sigmoid slope <= 1/4
    assert result.path.is_file()


def test_an_export_beyond_atol_is_kept_aside_and_never_written_over_the_target(checkpoint, tmp_path, monkeypatch):
    shifted_runner(monkeypatch, 0.1)  # probabilities move by up to 0.025
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's earlier export")
    with pytest.raises(ExportCheckError, match=r"probabilities differ .* \(> --atol 0.001.*model.rejected.onnx"):
        export_model(checkpoint[0], "onnx", out, height=64, width=96)
    assert out.read_bytes() == b"the user's earlier export"
    rejected = tmp_path / "model.rejected.onnx"
    session = onnxruntime.InferenceSession(str(rejected), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 64, 96)
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - pytorch_logits(checkpoint[1], x)).max() <= 1e-4
    result = CliRunner().invoke(cli, ["export", "-m", str(checkpoint[0]), "--format", "onnx", "-o", str(out),
                                      "--height", "64", "--width", "96", "--atol", "0.03"])
    assert result.exit_code == 0, result.output
    assert "(--atol 0.03)" in result.output and out.read_bytes() != b"the user's earlier export"


def test_onnx_without_its_packages_names_the_extra_to_install(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    result = CliRunner().invoke(cli, ["export", "-m", str(checkpoint[0]), "--format", "onnx",
                                      "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1
    assert "needs the onnxruntime package(s)" in result.output and "pip install 'sever[export]'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not list(tmp_path.iterdir())
