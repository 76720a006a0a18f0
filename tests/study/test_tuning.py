"""Out-of-fold tuning of a study: one function, and the recorded score is the score of the settings it wrote.

The study here is made by hand, without training: two folds of the demo data with a saved split,
each fold's "out-of-fold maps" drawn from the true masks (defects 160..255, background 0..150),
so the default threshold 0.5 keeps background noise and a tuned one does not.
"""

import pytest
from click.testing import CliRunner
from made_studies import study_from_truth

from sever.cli.app import cli
from sever.inference.evaluate import evaluate_saved
from sever.inference.predictor import class_labels, load_settings
from sever.study.folder import StudyPaths
from sever.study.tuning import oof_sources, tune_out_of_fold


@pytest.fixture
def hand_made_study(demo_dir, tmp_path):
    from conftest import tiny_config

    config = tiny_config(demo_dir, tmp_path / "saved")
    return study_from_truth(demo_dir, config, tmp_path / "study", (64, 256), (160, 256), (0, 151))


def scores_of(paths: StudyPaths, settings_file) -> tuple[float, list[float]]:
    """The mean and per-class Dice of ``settings_file`` on the study's out-of-fold maps, scored apart."""
    sources = oof_sources(paths)
    result = evaluate_saved(sources, load_settings(settings_file, 4, False), class_labels(None, 4))
    return result.mean_dice, result.class_dice.tolist()


def test_the_recorded_score_is_the_score_of_the_settings_written(hand_made_study):
    paths = hand_made_study
    result = tune_out_of_fold(paths, thresholds=(0.3, 0.5, 0.62, 0.7), min_pixels=(0, 50))
    record = paths.round_record()
    tuned, per_class = scores_of(paths, paths.postprocess)
    default, _ = scores_of(paths, None)
    assert record["score"] == pytest.approx(tuned) and record["class_scores"] == pytest.approx(per_class)
    assert record["default_score"] == pytest.approx(default)
    assert record["score"] > record["default_score"] + 0.05  # the maps make the tuning matter
    assert result.best_scores.mean() == pytest.approx(record["score"])


def test_sever_tune_on_a_study_records_the_score_of_its_new_settings(hand_made_study, tmp_path):
    paths = hand_made_study
    tune_out_of_fold(paths, thresholds=(0.1, 0.15, 0.2), min_pixels=(0,))  # the base 0.5 is searched too
    first = paths.round_record()["score"]
    result = CliRunner().invoke(cli, ["tune", "-m", str(paths.root)])
    assert result.exit_code == 0, result.output
    assert f"wrote {paths.postprocess}" in result.output
    record = paths.round_record()
    assert record["score"] == pytest.approx(scores_of(paths, paths.postprocess)[0])
    assert record["score"] > first + 0.01  # the default grid finds better settings, and records their score
    written = paths.postprocess.read_text()
    result = CliRunner().invoke(cli, ["tune", "-m", str(paths.root), "-o", str(tmp_path / "elsewhere.yml")])
    assert result.exit_code == 0, result.output
    assert paths.round_record() == record and paths.postprocess.read_text() == written  # the study's own untouched
    assert (tmp_path / "elsewhere.yml").is_file()
