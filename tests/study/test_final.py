"""A study's final model (``final_model: true``): one run on every labelled image after the folds, sharing the
study's time budget, carrying the out-of-fold settings, and what ``sever predict -m STUDY`` predicts with."""

import logging
import shutil

import pytest
import yaml

import sever
from sever.data_loader.demo import make_demo_data
from sever.exceptions import CheckpointError, ConfigError
from sever.experiment import check_single_run
from sever.inference.checkpoints import open_checkpoint, study_runs
from sever.study import folds
from sever.study.final import final_config
from sever.study.folder import FINAL_RUN, StudyPaths
from sever.study.train import create_study, resume_study, train_study


@pytest.fixture(scope="module")
def trained(module_tmp):
    """A 2-fold study of 12 images with a final model, trained once for the module's tests."""
    from conftest import tiny_config

    root = module_tmp("final")
    data = make_demo_data(root / "data", n_train=12, n_test=2, height=64, width=256, seed=5)
    config = {**tiny_config(data, root / "saved", epochs=1), "final_model": True}
    return train_study(config, folds=2)


def test_the_final_model_trains_on_every_image_after_the_folds(trained):
    paths = StudyPaths(trained.root)
    final = paths.final_entry()
    assert final.status == "done" and final.run == trained.root / FINAL_RUN
    assert all(entry.status == "done" for entry in paths.entries())
    args = yaml.safe_load((final.run / "config.yaml").read_text())["data_loader"]["args"]
    assert args["validation_split"] == 0 and args.get("folds") is None and args.get("split_file") is None
    assert "epoch 1/1: 3/3 batch" in (final.run / "train.log").read_text()  # all 12 images in batches of 4
    assert "epoch 1/1: 1/1 batch" in (trained.root / "fold0" / "train.log").read_text()  # a fold trains on 6


def test_the_final_model_carries_the_studys_out_of_fold_settings(trained):
    paths = StudyPaths(trained.root)
    study_settings = yaml.safe_load(paths.postprocess.read_text())
    assert yaml.safe_load((trained.root / FINAL_RUN / "postprocess.yml").read_text()) == study_settings
    carried = open_checkpoint(trained.root / FINAL_RUN).state["postprocess"]
    assert carried["threshold"] == pytest.approx(study_settings["threshold"])
    assert carried["min_pixels"] == study_settings["min_pixels"]


def test_predict_on_the_study_uses_the_final_model_with_the_studys_settings(trained, caplog):
    caplog.set_level(logging.INFO, logger="sever")
    model = sever.load(trained.root)
    assert [str(path) for path in model.source.models] == [str(trained.root / FINAL_RUN)]
    assert model.source.tuned == StudyPaths(trained.root).postprocess
    assert "predicting with its final model" in caplog.text and "fold0 -m" in caplog.text


def test_scoring_the_final_model_on_a_validation_split_says_how_to_score_it(trained):
    with pytest.raises(ConfigError, match=r"held out no validation images .* sever evaluate -m STUDY --oof"):
        sever.evaluate(trained.root, split="val")


def test_a_final_model_not_done_leaves_prediction_to_the_folds(trained, tmp_path, caplog):
    copy = tmp_path / "study"
    shutil.copytree(trained.root, copy)
    StudyPaths(copy).set_final_status("failed")
    assert study_runs(copy) == [copy / "fold0", copy / "fold1"]
    assert "its final model is failed: predicting with the folds" in caplog.text


def test_a_deleted_final_model_trains_again_on_resume(trained, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(trained.root, copy)
    for path in copy.rglob("config.yaml"):  # the copy's runs save into the copy
        path.write_text(path.read_text().replace(str(trained.root), str(copy)))
    shutil.rmtree(copy / FINAL_RUN)
    folds_before = {path: path.stat().st_mtime for path in copy.glob("fold*/checkpoints/*.pth")}
    resume_study(copy)
    assert StudyPaths(copy).final_entry().status == "done" and (copy / FINAL_RUN / "checkpoints").is_dir()
    assert {path: path.stat().st_mtime for path in copy.glob("fold*/checkpoints/*.pth")} == folds_before


def test_the_final_model_shares_the_budget_with_the_folds(tmp_path):
    paths = StudyPaths(tmp_path)
    paths.initialise(2, final=True)
    paths.set_budget(900, 1)
    assert folds.still_to_train(paths.at_round(0)) == ["round0/fold0", "round0/fold1", FINAL_RUN]
    assert folds.share_overrides(paths.at_round(0), "round0/fold0", "fold 0 of round 0", []) == ["trainer.time_budget=300s"]  # 900 s over 3 runs
    paths.charge("round0/fold0", 300)
    paths.charge("round0/fold1", 200)  # a fold that ended early leaves its saving to the final model
    paths.set_status(0, "done")
    paths.set_status(1, "done")
    assert folds.share_overrides(paths, FINAL_RUN, "the final model", [], alone=True) == ["trainer.time_budget=400s"]


def test_the_final_model_trains_alone_so_parallel_slots_cannot_lend_it_their_seconds(tmp_path):
    paths = StudyPaths(tmp_path)
    paths.initialise(2, final=True)
    paths.set_budget(600, 2)  # 1200 slot-seconds; the folds trained side by side for 400 s each
    paths.charge("round0/fold0", 400)
    paths.charge("round0/fold1", 400)
    assert paths.reserve(FINAL_RUN, [FINAL_RUN]) == 400  # the ledger's slot-seconds: more than the clock has
    assert paths.reserve(FINAL_RUN, [FINAL_RUN], alone=True) == 200  # the wall seconds the study has left


def test_the_final_models_config_drops_the_folds_and_the_tuning(trained):
    config = final_config(StudyPaths(trained.root))
    assert config["data_loader"]["args"]["validation_split"] == 0 and "folds" not in config["data_loader"]["args"]
    assert config["trainer"]["tune_postprocess"] is False and "final_model" not in config


def test_final_model_is_refused_where_it_cannot_train(tmp_path, demo_dir):
    from conftest import tiny_config

    config = {**tiny_config(demo_dir, tmp_path / "saved"), "final_model": True}
    with pytest.raises(ConfigError, match="final_model: a study trains its final model after its folds"):
        check_single_run(config)
    with pytest.raises(ConfigError, match="final_model: a study with pseudo-label rounds"):
        create_study({**config, "pseudo": {"images": str(demo_dir / "test_images"), "rounds": 1}}, 2)
    with pytest.raises(ConfigError, match="final_model: expected true/false"):
        check_single_run({**config, "final_model": "yes"})
    assert not (tmp_path / "saved").exists()  # refused before any folder was made


def test_a_hand_edited_final_entry_is_refused_naming_it(tmp_path):
    paths = StudyPaths(tmp_path)
    paths.initialise(2, final=True)
    data = yaml.safe_load(paths.file.read_text())
    data["final"]["status"] = "finished"
    paths.file.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match=r"study.yml: final: status: one of pending, running, done, failed"):
        paths.entries()


def test_the_study_report_says_what_the_final_model_is(trained, tmp_path):
    from sever.report.compare import write_study_report

    copy = tmp_path / "study"
    shutil.copytree(trained.root, copy)
    section = next(s for s in write_study_report(copy).sections if s.title == "Final model")
    assert "done (final/)" in section.text and "predicts with it" in section.text
