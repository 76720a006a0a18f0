"""Exported models (ONNX, TorchScript, smp folder) predicting through sever's predictor.

``open_exported`` gives the predictor a model run by onnxruntime / torch.jit / smp; its
probabilities, post-processing and submission rows must be those of the PyTorch run,
within the export tolerance.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_config
from inference_runs import make_run

from sever import experiment
from sever.cli.app import cli
from sever.data_loader.datasets import read_grey
from sever.data_loader.rle import decode_masks
from sever.exceptions import CheckpointError, ConfigError
from sever.export import export_model
from sever.inference.checkpoints import load_model
from sever.inference.exported import open_exported, read_metadata
from sever.inference.outputs import load_probabilities
from sever.inference.predictor import Predictor, run_settings
from sever.inference.tiling import Tiling
from sever.model.postprocess import PROB_SCALE

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")

# min_pixels 0 and no component step: each pixel's classes depend on its own probabilities only
PIXELWISE = {"threshold": [0.45, 0.5, 0.55, 0.5], "min_pixels": 0, "one_class_per_pixel": True}


@pytest.fixture(scope="module")
def run(module_tmp, demo_dir) -> Path:
    return make_run(module_tmp("exported"), demo_dir, "fpn", seed=11)


@pytest.fixture(scope="module")
def exports(run, module_tmp) -> dict[str, Path]:
    """The run exported in every format: ONNX of any size, ONNX of 64x256 only, TorchScript, smp."""
    folder = module_tmp("exports")
    paths = {"onnx": folder / "any.onnx", "fixed": folder / "fixed.onnx", "torchscript": folder / "model.pt",
             "smp": folder / "smp"}
    export_model(run, "onnx", paths["onnx"], height=64, width=96, dynamic=True)
    export_model(run, "onnx", paths["fixed"], height=64, width=256)
    export_model(run, "torchscript", paths["torchscript"], height=64, width=96)
    export_model(run, "smp", paths["smp"], height=64, width=96)
    return paths


def demo_images(demo_dir: Path) -> torch.Tensor:
    paths = sorted((demo_dir / "test_images").iterdir())[:3]
    return torch.from_numpy(np.stack([read_grey(p) for p in paths]))


@pytest.mark.parametrize("kind", ["onnx", "fixed", "torchscript", "smp"])
def test_an_export_predicts_severs_probabilities_through_the_predictor(kind, run, exports, demo_dir):
    loaded = open_exported(exports[kind])
    assert loaded.exported == ("onnx" if kind == "fixed" else kind) and loaded.classes == 4
    images = demo_images(demo_dir)
    expected, _ = Predictor([load_model(run)], tta="hflip").predict(images)
    got, _ = Predictor([loaded], tta="hflip").predict(images)
    difference = (got.int() - expected.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.01  # quantised: a level at most, rarely
    assert expected.float().std() > 5  # probabilities that are not all one value


def test_tiles_of_an_export_are_predicted_and_blended_as_the_runs_are(run, exports, demo_dir):
    images = demo_images(demo_dir)
    tiling = Tiling(64, 128, 0.25, "gaussian", 4)
    expected, _ = Predictor([load_model(run)], tiling=tiling).predict(images)
    got, _ = Predictor([open_exported(exports["onnx"])], tiling=tiling).predict(images)
    whole, _ = Predictor([open_exported(exports["onnx"])]).predict(images)
    assert (got.int() - expected.int()).abs().max() <= 1
    assert (got.int() - whole.int()).abs().max() > 1  # tiling changed the prediction: it ran


def test_a_fixed_size_onnx_names_the_size_it_takes(exports):
    loaded = open_exported(exports["fixed"])
    with pytest.raises(ConfigError, match=r"fixed.onnx: exported for 64x256 images only .* --tile 64x256"):
        Predictor([loaded]).predict(torch.zeros(1, 64, 128, dtype=torch.uint8))


def test_the_export_carries_the_runs_postprocessing(module_tmp, demo_dir):
    run = make_run(module_tmp("tuned"), demo_dir, "tuned", seed=12)
    (run / "postprocess.yml").write_text(yaml.safe_dump({**PIXELWISE, "min_component": [0, 5, 0, 0]}))
    best = run / "checkpoints" / "model_best.pth"
    from sever.utils.checkpoint import atomic_torch_save, load_checkpoint

    state = load_checkpoint(best)
    atomic_torch_save({**state, "postprocess": PIXELWISE}, best)
    exported = export_model(run, "onnx", module_tmp("tuned_onnx") / "m.onnx", height=64, width=64, dynamic=True)
    settings, described = run_settings(None, [open_exported(exported.path)], classifier=False)
    expected, _ = run_settings(None, [load_model(run)], classifier=False)
    assert settings == expected and settings.min_component == (0, 5, 0, 0)
    assert described == f"the settings carried by the export {exported.path}"


def test_an_export_is_not_exported_again(exports, tmp_path):
    with pytest.raises(CheckpointError, match="exported by sever export"):
        export_model(exports["torchscript"], "onnx", tmp_path / "again.onnx")


def test_a_file_that_is_not_an_export_is_named(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="x.onnx: not a readable ONNX file"):
        read_metadata(tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="not a model exported by sever export"):
        read_metadata(tmp_path)


def read_rows(path: Path) -> dict[tuple[str, str], str]:
    with open(path, newline="") as handle:
        return {(row["ImageId"], row["ClassId"]): row["EncodedPixels"] for row in csv.DictReader(handle)}


def masks_of(rows: dict, image: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 4) bool masks of one image's rows."""
    return decode_masks([rows.get((image, str(c)), "") for c in range(1, 5)], shape)


def undecided(probs: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """(H, W) pixels whose classes one quantisation level of difference could change.

    A level at a class's threshold (``q`` of ``floor(255 t)`` or one above), or two
    positive classes within a level of each other (one class per pixel keeps the larger).
    """
    levels = np.floor(np.array(thresholds) * PROB_SCALE).reshape(-1, 1, 1)
    at_threshold = ((probs >= levels) & (probs <= levels + 1)).any(axis=0)
    positive = np.where(probs > levels - 1, probs.astype(int), -10)
    top_two = np.sort(positive, axis=0)[-2:]
    return at_threshold | ((top_two[1] - top_two[0] <= 1) & (top_two[0] >= 0))


@pytest.mark.slow
def test_predict_with_an_onnx_export_writes_the_rows_of_the_trained_run(demo_dir, tmp_path):
    trained = experiment.train({**tiny_config(demo_dir, tmp_path / "saved", epochs=1), "name": "trained"})
    model = tmp_path / "model.onnx"
    exported = CliRunner().invoke(cli, ["export", "-m", trained.root, "--format", "onnx", "-o", model,
                                        "--height", "64", "--width", "256"])
    assert exported.exit_code == 0, exported.output
    settings = tmp_path / "pixelwise.yml"
    settings.write_text(yaml.safe_dump(PIXELWISE))
    outputs = {}
    for name, source in (("pytorch", trained.root), ("onnx", model)):
        result = CliRunner().invoke(cli, ["predict", "-m", source, "-i", demo_dir / "test_images", "-o",
                                          tmp_path / f"{name}.csv", "--save-probs", tmp_path / name,
                                          "--postprocess", settings, "--tta", "hflip", "--batch-size", "4"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = read_rows(tmp_path / f"{name}.csv")
    assert any(outputs["pytorch"].values()), "the settings give no defect: the comparison would be empty"
    assert outputs["onnx"].keys() == outputs["pytorch"].keys()
    for image in sorted({image for image, _ in outputs["pytorch"]}):
        expected, _ = load_probabilities(tmp_path / "pytorch" / f"{image}.npz")
        got, _ = load_probabilities(tmp_path / "onnx" / f"{image}.npz")
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        shape = expected.shape[1:]
        differs = (masks_of(outputs["onnx"], image, shape) != masks_of(outputs["pytorch"], image, shape)).any(axis=-1)
        # rows equal, but for pixels the export tolerance leaves undecided
        assert not (differs & ~undecided(expected, PIXELWISE["threshold"])).any()
        assert differs.sum() <= 3


def test_an_rgb_model_exported_takes_the_grey_images_the_predictor_gives(module_tmp, demo_dir):
    """The graph froze the model's grey-to-RGB repeat at its 3-channel export: the loader repeats instead."""
    arch = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None, "in_channels": "rgb",
                                    "decoder_args": {"decoder_pyramid_channels": 32,
                                                     "decoder_segmentation_channels": 32}}}
    run = make_run(module_tmp("rgb"), demo_dir, "rgb", seed=13, arch=arch)
    exported = export_model(run, "onnx", module_tmp("rgb_onnx") / "rgb.onnx", height=64, width=256)
    assert exported.metadata["input_channels"] == 3
    images = demo_images(demo_dir)
    expected, _ = Predictor([load_model(run)]).predict(images)
    got, _ = Predictor([open_exported(exported.path)]).predict(images)
    assert (got.int() - expected.int()).abs().max() <= 1


def test_a_checkpoint_saved_as_pt_is_not_taken_for_a_torchscript_export(run, tmp_path):
    """Both are zip archives; only an export holds extra/sever.json."""
    from sever.inference.exported import exported_format

    copy = tmp_path / "model.pt"
    copy.write_bytes((run / "checkpoints" / "model_best.pth").read_bytes())
    assert exported_format(copy) is None and load_model(copy).exported is None


def test_an_export_has_no_validation_split_to_score(exports):
    result = CliRunner().invoke(cli, ["evaluate", "-m", str(exports["onnx"]), "--split", "val"])
    assert result.exit_code == 1 and "an exported onnx model carries no validation split" in result.output
    assert "Traceback" not in result.output
