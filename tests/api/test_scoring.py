"""sever.evaluate and sever.tune: the scores and settings sever evaluate / sever tune give, checked by effect."""

import numpy as np
import pytest
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever.api.model import load
from sever.api.scoring import evaluate, tune
from sever.exceptions import ConfigError
from sever.model.postprocess import PostProcessing

GRID = dict(thresholds=[0.3, 0.45, 0.5, 0.6], min_pixels=[0, 50, 200], c_factors=[1.0])


def test_evaluate_prints_what_sever_evaluate_prints(runs):
    scores = evaluate(runs["unet"], split="val", device="cpu", tta="hflip")
    result = invoke("evaluate", "-m", runs["unet"], "--split", "val", "--device", "cpu", "--tta", "hflip")
    assert result.exit_code == 0, result.output
    assert scores.table() in result.output
    assert f"post-processing: {scores.postprocessing}" in result.output
    assert list(scores.class_dice) == ["class 1", "class 2", "class 3", "class 4"]
    assert scores.mean_dice == pytest.approx(float(np.mean(scores.evaluation.dice)))


def test_evaluate_images_against_labels_scores_their_rows(runs, demo_dir, tmp_path):
    """Scoring a folder against its labels is scoring the submission sever predict writes for it."""
    images, labels = demo_dir / "test_images", demo_dir / "test_labels.csv"
    settings = tmp_path / "low.yml"
    settings.write_text("threshold: 0.45\nmin_pixels: 0\n")
    scores = evaluate(runs["fpn"], images=images, labels=labels, postprocess=settings, device="cpu")
    assert invoke("predict", "-m", runs["fpn"], "-i", images, "-o", tmp_path / "s.csv", "--postprocess", settings,
                  "--device", "cpu").exit_code == 0
    by_csv = invoke("evaluate", "--pred", tmp_path / "s.csv", "--truth", labels, "--images", images)
    assert scores.table() in by_csv.output
    assert len(scores.evaluation.image_ids) == 6 and scores.mean_dice < 1  # the settings leave masks to score
    with pytest.raises(ConfigError, match="images needs labels"):
        evaluate(runs["fpn"], images=images)
    with pytest.raises(ConfigError, match="split: 'test'"):
        evaluate(runs["fpn"], split="test")
    with pytest.raises(ConfigError, match="unknown option.*threshold"):
        evaluate(runs["fpn"], threshold=0.5)


def test_tune_writes_the_settings_sever_tune_writes_and_they_score_as_found(runs, tmp_path):
    model = load(runs["unet"])
    tuned = tune(model, output=tmp_path / "api.yml", device="cpu", **GRID)
    assert tuned.path == tmp_path / "api.yml"
    written = PostProcessing.load(tuned.path, 4)
    assert written.to_mapping() == tuned.settings.to_mapping()
    grid = [f"--{key.replace('_', '-')}={','.join(str(v) for v in values)}" for key, values in GRID.items()]
    result = invoke("tune", "-m", runs["unet"], "--split", "val", "-o", tmp_path / "cli.yml", "--device", "cpu", *grid)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.yml").read_text() == tuned.path.read_text()
    assert tuned.summary() in result.output
    # The settings found score on the validation split what the search said they would.
    rescored = evaluate(model, split="val", postprocess=tuned.path, device="cpu")
    np.testing.assert_allclose(list(rescored.class_dice.values()), tuned.result.best_scores)
    default = evaluate(model, split="val", postprocess="default", device="cpu")
    assert rescored.mean_dice >= default.mean_dice
