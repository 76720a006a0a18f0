"""`sever export`: ONNX and TorchScript files that compute what the PyTorch model computes."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from click.testing import CliRunner
from inference_runs import classifier_changes, make_run
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sever import experiment
from sever.cli.app import cli
from sever.exceptions import CheckpointError, ConfigError
from sever import export as exporting
from sever.inference.checkpoints import load_model
from sever.inference.predictor import tta_probabilities
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


# ---------------------------------------------------------------- a run's export: smp folder, metadata, bad outputs

TUNED = {"threshold": [0.3, 0.45, 0.6, 0.7], "min_pixels": [10, 20, 30, 40], "one_class_per_pixel": True,
         "min_component": [0, 3, 0, 0], "component_domination": False, "classifier": None}


def tuned_run(root: Path, data_dir: Path, seed: int = 5, **changes) -> Path:
    """A run whose best checkpoint was tuned (``postprocess`` in it) and whose postprocess.yml was edited after."""
    run = make_run(root, data_dir, "tuned", seed=seed, class_names=["pits", "inclusion", "scratches", "patches"],
                   **changes)
    best = run / "checkpoints" / "model_best.pth"
    state = load_checkpoint(best)
    state.update(postprocess={**TUNED, "threshold": [0.5] * 4}, monitor_best=0.6123, best_epoch=1)
    atomic_torch_save(state, best)
    (run / "postprocess.yml").write_text("# sever tune on the validation split: mean Dice 0.7001 (base settings "
                                         "0.6500) over 6 images\n" + yaml.safe_dump(TUNED), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def tuned(module_tmp, demo_dir) -> Path:
    return tuned_run(module_tmp("tuned"), demo_dir)


def sever_probabilities(run: Path, image: np.ndarray) -> np.ndarray:
    """float32 (C, H, W) probabilities of one grey image as sever's predictor computes them (no TTA)."""
    loaded = load_model(run)
    with torch.inference_mode():
        x = loaded.normalization(torch.from_numpy(image)[None, None])
        return tta_probabilities(loaded.model, x)[0].numpy()


def odd_sized_image(demo_dir: Path, folder: Path) -> Path:
    """A 50x200 crop of a demo image as a PNG: not a multiple of the stride, so padding matters."""
    image = cv2.imread(str(min((demo_dir / "train_images").iterdir())), cv2.IMREAD_GRAYSCALE)[5:55, 20:220]
    path = folder / "odd.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize("in_channels", ["g", "rgb"])
def test_smp_folder_loads_with_plain_smp_and_albumentations_and_gives_severs_probabilities(
        in_channels, demo_dir, tmp_path):
    arch = {**ARCH, "args": {**ARCH["args"], "encoder_weights": None, "in_channels": in_channels}}
    run = tuned_run(tmp_path / "runs", demo_dir, arch=arch)
    out = tmp_path / "exported" / "fpn"
    result = CliRunner().invoke(cli, ["export", "-m", str(run), "--format", "smp", "-o", str(out),
                                      "--height", "64", "--width", "96"])
    assert result.exit_code == 0, result.output
    assert result.output.count("exported the model weights") == 1 and "(smp)" in result.output
    # what a user of smp and albumentations does, with nothing of sever
    import albumentations as A
    import segmentation_models_pytorch as smp

    model = smp.from_pretrained(str(out)).eval()  # strict by default
    preprocess = A.Compose.from_pretrained(str(out))
    image_path = odd_sized_image(demo_dir, tmp_path)
    image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    with torch.no_grad():
        x = preprocess(image=image)["image"][None]
        probs = model(x).sigmoid()[0, :, :50, :200].numpy()
    assert x.shape == (1, 3 if in_channels == "rgb" else 1, 64, 224)
    expected = sever_probabilities(run, image)
    assert probs.shape == expected.shape == (4, 50, 200)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert np.abs(probs - 0.5).max() > 0.01  # probabilities that a wrong normalisation would move
    config = (out / "config.json").read_text()
    assert '"_model_class": "FPN"' in config and f'"in_channels": {3 if in_channels == "rgb" else 1}' in config


def test_smp_model_card_holds_classes_data_scores_and_tuned_postprocessing(tuned, tmp_path):
    result = export_model(tuned, "smp", tmp_path / "card", height=64, width=64)
    card = (result.path / "README.md").read_text()
    assert "| 2 | 3 | scratches |" in card and "library_name: segmentation-models-pytorch" in card
    assert "SteelDataLoader" in card and "HeavyCropTransforms" in card
    assert "0.6123" in card and "mean Dice 0.7001 (base settings 0.6500) over 6 images" in card
    assert "threshold: [0.3, 0.45, 0.6, 0.7]" in card and "min_component: [0, 3, 0, 0]" in card
    assert f"{result.metadata['mean']:.6g}" in card and "1 input\nchannel(s)" in card
    assert "smp.from_pretrained" in card and "A.Compose.from_pretrained" in card


def test_a_classifier_has_no_smp_folder(demo_dir, tmp_path):
    run = make_run(tmp_path, demo_dir, "classifier", **classifier_changes())
    with pytest.raises(ConfigError, match="classification model; smp folders hold segmentation models"):
        export_model(run, "smp", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def expected_metadata(run: Path) -> dict:
    loaded = load_model(run)
    return {"class_names": ["pits", "inclusion", "scratches", "patches"], "class_ids": [1, 2, 3, 4],
            "mean": pytest.approx(loaded.normalization.mean), "std": pytest.approx(loaded.normalization.std),
            "input_channels": 1, "postprocess": TUNED, "task": "segmentation", "sever_version": "0.1.0"}


def test_onnx_metadata_props_carry_classes_normalisation_and_the_tuned_postprocessing(tuned, tmp_path):
    export_model(tuned, "onnx", tmp_path / "model.onnx", height=64, width=96)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert {key: props[key] for key in expected_metadata(tuned)} == expected_metadata(tuned)
    assert props["input_size"] == [64, 96] and props["architecture"] == "FPN"
    assert "postprocess.yml (tuned by the run)" in props["postprocess_source"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["mean"]) == props["mean"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_extra_file_carries_the_same_metadata(tuned, tmp_path):
    export_model(tuned, "torchscript", tmp_path / "model.pt", height=64, width=96)
    extra = {"sever.json": ""}
    torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    metadata = json.loads(extra["sever.json"])
    assert {key: metadata[key] for key in expected_metadata(tuned)} == expected_metadata(tuned)
    assert metadata["input_size"] is None  # a trace takes any size


def test_the_success_line_is_said_once(tuned, tmp_path, caplog):
    caplog.set_level("INFO")
    result = CliRunner().invoke(cli, ["export", "-m", str(tuned), "--format", "torchscript",
                                      "-o", str(tmp_path / "m.pt"), "--height", "64", "--width", "64"])
    assert result.exit_code == 0, result.output
    assert result.output.count(f"to {tmp_path / 'm.pt'}") == 1
    assert not [r for r in caplog.records if r.levelno >= 20 and "exported" in r.getMessage()]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "smp"])
def test_an_output_below_a_file_is_refused_before_any_work(fmt, tmp_path):
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("keep me")
    out = blocker / "model.pt"
    # the checkpoint does not exist: the output is checked first, so its error is the one said
    result = CliRunner().invoke(cli, ["export", "-m", str(tmp_path / "no_run"), "--format", fmt, "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: cannot write {out}: {blocker} is a file, not a folder"]
    assert "Traceback" not in result.output and blocker.read_text() == "keep me"


def test_a_file_format_refuses_a_folder_and_smp_a_foreign_folder(checkpoint, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="a folder; --format onnx writes a file"):
        export_model(checkpoint[0], "onnx", tmp_path / "folder")
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="a folder holding other files"):
        export_model(checkpoint[0], "smp", tmp_path / "folder")
    assert (tmp_path / "folder" / "notes.txt").read_text() == "mine"


def test_an_export_below_pytorch_by_more_than_atol_is_rejected_too(checkpoint, tmp_path, monkeypatch):
    """A difference of either sign counts: logits lower than PyTorch's by 0.1 fail as those higher do."""
    shifted_runner(monkeypatch, -0.1)
    with pytest.raises(ExportCheckError, match=r"probabilities differ from PyTorch's by up to 2\.\d+e-02"):
        export_model(checkpoint[0], "onnx", tmp_path / "model.onnx", height=64, width=96)
    assert not (tmp_path / "model.onnx").exists()
    shifted_runner(monkeypatch, 0.1 - 2e-4)  # back up to -2e-4 in all: within atol, reported as a positive size
    result = export_model(checkpoint[0], "onnx", tmp_path / "model.onnx", height=64, width=96)
    assert 1.9e-4 < result.max_abs_diff < 2.1e-4 and 0 < result.max_prob_diff < 1e-4
