"""``trainer.valid_tile`` / ``valid_overlap``: validation, self-tuning and ``--split val`` predicted in tiles."""

import re

import pytest
import torch
from conftest import tiny_config
from inference_runs import UNET, classifier_changes, invoke, make_run

from sever import experiment
from sever.exceptions import ConfigError
from sever.inference.checkpoints import load_model, open_checkpoint
from sever.inference.predictor import Predictor
from sever.inference.tiling import Tiling
from sever.inference.tune import DEFAULT_MIN_PIXELS, DEFAULT_THRESHOLDS, search_widening, statistics_from_run, tune_run
from sever.model.postprocess import PostProcessing
from sever.utils.run import RunPaths


@pytest.mark.parametrize("trainer, message", [
    ({"valid_tile": "0x64"}, "trainer.valid_tile: 0x64: height and width must be positive"),
    ({"valid_tile": "-32x64"}, "trainer.valid_tile: -32x64: height and width must be positive"),
    ({"valid_tile": "16x64"}, "trainer.valid_tile: 16x64 is smaller than the network stride 32"),
    ({"valid_tile": "48x64"}, "trainer.valid_tile: 48x64: height and width must be multiples"),
    ({"valid_tile": "big"}, "trainer.valid_tile: expected HEIGHTxWIDTH"),
    ({"valid_tile": "64x64", "valid_overlap": 1.0}, r"trainer.valid_overlap: must be in \[0, 1\)"),
    ({"valid_tile": "64x64", "valid_overlap": -0.1}, r"trainer.valid_overlap: must be in \[0, 1\)"),
])
def test_bad_validation_tiles_are_refused_before_anything_is_built(demo_dir, tmp_path, trainer, message):
    with pytest.raises(ConfigError, match=message):
        experiment.prepare_config(tiny_config(demo_dir, tmp_path, **trainer))


def test_a_classifier_is_not_validated_in_tiles(demo_dir, tmp_path):
    config = {**tiny_config(demo_dir, tmp_path, valid_tile="64x64"), **classifier_changes()}
    with pytest.raises(ConfigError, match="trainer.valid_tile: a classification run is validated on whole images"):
        experiment.prepare_config(config)


def _validate(demo_dir, tmp_path, tile):
    """A Unet (BatchNorm: no statistics over the whole image) validated whole or in ``tile``s overlapping by half.

    Returns the validation log, the input shapes the network saw, the probabilities of the first batch.
    """
    config = tiny_config(demo_dir, tmp_path / "saved", valid_tile=tile, valid_overlap=0.5)
    config["arch"] = UNET
    built = experiment.build_experiment(experiment.prepare_config(config))
    shapes = []
    built.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[-2:])))
    trainer = experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", str(tile)))
    log = trainer._valid_epoch(1)
    seen = set(shapes)
    images, masks = next(iter(built.data.valid_loader))
    inputs, targets = trainer._to_device(images, masks)
    with torch.inference_mode():
        _, logits = trainer._valid_forward(trainer.eval_model, inputs, targets)
    return log, seen, torch.sigmoid(logits)


def test_validation_in_tiles_scores_as_whole_images_with_only_tiles_in_the_network(demo_dir, tmp_path):
    whole, whole_shapes, whole_probs = _validate(demo_dir, tmp_path, None)
    tiled, tiled_shapes, tiled_probs = _validate(demo_dir, tmp_path, "64x128")
    assert whole_shapes == {(64, 256)}, "the demo images are 64x256"
    assert tiled_shapes == {(64, 128)}, "the network sees tiles only"
    dice = [key for key in whole if re.fullmatch(r"val_dice_(\d+|mean)", key)]
    assert {k: tiled[k] for k in dice} == pytest.approx({k: whole[k] for k in dice}, abs=5e-3)
    assert (tiled_probs - whole_probs).abs().mean() < 0.01
    assert whole_probs.std() > 0.01, "the maps compared are not flat"


def _tuned_scores(root, tiling):
    opened = open_checkpoint(root)
    predictor = Predictor([load_model(opened, "cpu")], tiling=tiling)
    stats = statistics_from_run(predictor, PostProcessing.default(predictor.classes), DEFAULT_THRESHOLDS, 4, 0)
    return search_widening(stats, DEFAULT_MIN_PIXELS).best_scores


def test_self_tuning_and_split_val_predict_as_the_run_validated(demo_dir, tmp_path):
    """An FPN (GroupNorm: statistics over its input) scores differently whole and in tiles: each path shows which."""
    root = make_run(tmp_path / "runs", demo_dir, "fpn", seed=1,
                    trainer={**tiny_config(demo_dir, tmp_path)["trainer"], "valid_tile": "64x128",
                             "valid_overlap": 0.5})
    tiled = _tuned_scores(root, Tiling(64, 128, 0.5))
    whole = _tuned_scores(root, None)
    assert not tiled == pytest.approx(whole, abs=1e-6)
    assert tune_run(root).best_scores == pytest.approx(tiled, abs=1e-12)
    outputs = {}
    for label, extra in (("run", ()), ("tiles", ("--tile", "64x128", "--overlap", 0.5)),
                         ("whole", ("--tile", "64x256"))):
        result = invoke("evaluate", "-m", root, "--split", "val", "--num-workers", 0, "--postprocess", "default",
                        *extra)
        assert result.exit_code == 0, result.output
        outputs[label] = [line for line in result.output.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert outputs["run"] == outputs["tiles"] != outputs["whole"]
