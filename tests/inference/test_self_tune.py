"""Every run tunes its post-processing: grid widening, the tuned run folder, and which settings predict uses."""

import logging

import pytest
import torch
import yaml
from conftest import tiny_config
from inference_runs import invoke, make_run

from sever import experiment
from sever.exceptions import ConfigError
from sever.inference.checkpoints import load_model
from sever.inference.predictor import run_settings
from sever.inference.tune import TuneStatistics, search_widening, tune_run, widening
from sever.model.postprocess import PostProcessing
from sever.utils.checkpoint import load_checkpoint
from sever.utils.run import RunPaths


def gradient_stats(thresholds, best=0.85):
    """One class whose truth is every pixel above p = ``best`` of a 0..255 ramp: the best threshold is ``best``."""
    probs = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(4, 1, 1, 1)
    truth = (probs > int(best * 255)).to(torch.uint8)
    base = PostProcessing.from_mapping({"threshold": 0.4, "min_pixels": 0}, 1)
    stats = TuneStatistics(base, thresholds, ["class 1"])
    stats.update([f"{i}.jpg" for i in range(4)], probs, truth)
    return stats


def test_a_best_threshold_on_the_edge_widens_the_grid_past_it(caplog):
    stats = gradient_stats([0.3, 0.4, 0.5])
    assert stats.search([0]).best.threshold == (0.5,)  # the plain search stops at the old edge
    with caplog.at_level(logging.INFO, logger="sever.inference.tune"):
        result = search_widening(stats, [0])
    # widened three times, a step each: 0.2..0.6, 0.1..0.7, then 0.8 (0.0 is no threshold)
    assert result.thresholds == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert result.best.threshold == (0.8,)
    assert "threshold, 0.5, is on the edge" in caplog.text
    assert "still on the edge of the grid widened 3 times" in caplog.text  # 0.85 lies beyond


def test_widening_stops_once_the_best_threshold_is_inside_the_grid(caplog):
    stats = gradient_stats([0.3, 0.4, 0.5], best=0.65)
    with caplog.at_level(logging.INFO, logger="sever.inference.tune"):
        result = search_widening(stats, [0])
    # the first widening reaches 0.6, on the new edge; the second adds 0.7, which scores lower
    assert result.thresholds == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert result.best.threshold == (0.6,)
    assert "threshold, 0.6, is on the edge" in caplog.text
    assert "still on the edge" not in caplog.text


def false_blobs_of_150_and_250_pixels() -> TuneStatistics:
    """Statistics of two images whose truth is empty: 150 false pixels in one, 250 in the other."""
    probs = torch.zeros(2, 1, 20, 20, dtype=torch.uint8)
    probs[0, :, :10, :15] = 230
    probs[1, :, :10, :] = probs[1, :, 10:15, :10] = 230
    base = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0}, 1)
    stats = TuneStatistics(base, [0.5], ["class 1"])
    stats.update(["a.jpg", "b.jpg"], probs, torch.zeros_like(probs))
    return stats


def test_a_best_min_pixels_on_the_edge_widens_the_grid_past_it():
    stats = false_blobs_of_150_and_250_pixels()
    assert stats.search([0, 100, 200]).best.min_pixels == (200,)  # wipes one image: the edge of the grid
    result = search_widening(stats, [0, 100, 200])
    # widened by a step of 100 to 300, the first value above 250, then once more: 300 is no longer the edge
    assert result.min_pixels == [0, 100, 200, 300, 400]
    assert result.best.min_pixels == (300,) and result.best_scores[0] == 1.0


def test_an_uneven_grid_widens_by_the_spacing_at_each_of_its_ends():
    assert widening([0.3, 0.5, 0.55], "threshold") == ([0.1], [0.6])
    assert widening([0, 10, 100], "min_pixels") == ([], [190])
    assert widening([1, 2, 5, 10, 20], "c_factor") == ([], [30])


def test_an_uneven_min_pixels_grid_is_widened_from_its_top_spacing():
    stats = false_blobs_of_150_and_250_pixels()
    result = search_widening(stats, [0, 10, 160])
    # 160 wipes one image, on the edge: a step of 150 (not 10, the bottom's) reaches 310, which wipes both;
    # one more step (460) puts 310 inside the grid
    assert result.min_pixels == [0, 10, 160, 310, 460]
    assert result.best.min_pixels == (310,) and result.best_scores[0] == 1.0


def test_an_uneven_threshold_grid_reaches_what_its_gathered_reserve_holds():
    stats = gradient_stats([0.3, 0.6, 0.65], best=0.85)  # with the base 0.4: spacings 0.1 below, 0.05 above
    result = search_widening(stats, [0])
    assert result.thresholds == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85])
    assert result.best.threshold == (0.85,) and result.best_scores[0] == 1.0


def test_widening_stays_inside_each_axis_limits():
    assert widening([0.3, 0.5, 0.7, 0.9], "threshold") == ([0.1], [])  # 1.1 is no probability
    assert widening([0, 100], "min_pixels") == ([], [200])
    assert widening([0.5], "threshold") == ([], [])  # a single value is a choice, not a grid


def test_tune_run_writes_the_run_file_and_the_checkpoint(demo_dir, tmp_path):
    root = make_run(tmp_path, demo_dir, "tuned", seed=5)
    result = tune_run(root)
    written = PostProcessing.load(root / "postprocess.yml", 4)
    assert written == result.best
    state = load_checkpoint(RunPaths(root).best)  # weights_only: plain types only
    assert PostProcessing.from_mapping(state["postprocess"], 4) == result.best
    assert state["postprocess_scores"]["tuned"] == pytest.approx(result.best_scores.tolist())
    assert state["postprocess_scores"]["default"] == pytest.approx(result.base_scores.tolist())
    text = (root / "postprocess.yml").read_text()
    assert text.startswith("# sever tune on the validation split of")
    assert set(yaml.safe_load(text)) >= {"threshold", "min_pixels"}


def test_predict_uses_the_run_file_unless_told_otherwise(demo_dir, tmp_path):
    root = make_run(tmp_path, demo_dir, "wiping", seed=6)
    images = demo_dir / "test_images"
    default = invoke("predict", "-m", root, "-i", images, "-o", tmp_path / "default.csv", "--postprocess", "default")
    assert default.exit_code == 0 and "default post-processing (--postprocess default)" in default.output
    untuned = invoke("predict", "-m", root, "-i", images, "-o", tmp_path / "untuned.csv")
    assert "default post-processing (the checkpoint was not tuned)" in untuned.output
    state = load_checkpoint(RunPaths(root).best)
    everything = PostProcessing.from_mapping({"threshold": 0.01, "min_pixels": 0}, 4)  # every pixel in a mask
    state["postprocess"] = everything.to_mapping()
    torch.save(state, RunPaths(root).best)
    (root / "postprocess.yml").write_text(everything.to_yaml())
    tuned = invoke("predict", "-m", root, "-i", images, "-o", tmp_path / "tuned.csv")
    assert tuned.exit_code == 0 and f"{root / 'postprocess.yml'} (tuned by the run)" in tuned.output
    assert (tmp_path / "tuned.csv").read_text() != (tmp_path / "default.csv").read_text()
    again = invoke("predict", "-m", root, "-i", images, "-o", tmp_path / "again.csv", "--postprocess", "default")
    assert again.exit_code == 0 and "post-processing: default post-processing (--postprocess default)" in again.output
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "default.csv").read_text()
    (root / "postprocess.yml").unlink()  # an uploaded checkpoint alone carries its own copy
    settings, source = run_settings(None, [load_model(root)], classifier=False)
    assert settings == everything and "tuned in" in source
    settings, source = run_settings(None, [load_model(root)] * 2, classifier=False)
    assert settings == PostProcessing.default(4) and "ensemble" in source


def test_the_switch_and_a_run_without_validation_skip_tuning(demo_dir, tmp_path, caplog):
    root = make_run(tmp_path, demo_dir, "untuned", seed=7)
    config = load_checkpoint(RunPaths(root).best)["config"]
    loader = {**config["data_loader"], "args": {**config["data_loader"]["args"], "validation_split": 0}}
    unsplit = make_run(tmp_path, demo_dir, "unsplit", seed=7, data_loader=loader)
    with caplog.at_level(logging.INFO, logger="sever.experiment"):
        experiment.tune_postprocess({**config, "trainer": {**config["trainer"], "tune_postprocess": False}},
                              RunPaths(root), torch.device("cpu"))
        experiment.tune_postprocess({**config, "data_loader": loader}, RunPaths(unsplit), torch.device("cpu"))
    assert not (root / "postprocess.yml").exists() and not (unsplit / "postprocess.yml").exists()
    assert "trainer.tune_postprocess is false" in caplog.text
    assert "held out no validation images" in caplog.text


def test_a_config_switches_tuning_off_and_on(tmp_path):
    on = experiment.prepare_config(tiny_config(tmp_path, tmp_path))
    off = experiment.prepare_config(tiny_config(tmp_path, tmp_path, tune_postprocess=False))
    assert on["trainer"]["tune_postprocess"] is True and off["trainer"]["tune_postprocess"] is False
    with pytest.raises(ConfigError, match="trainer.tune_postprocess"):
        experiment.prepare_config(tiny_config(tmp_path, tmp_path, tune_postprocess="yes"))

