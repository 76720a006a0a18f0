"""``sever auto``: plan, a K-fold study within the budget, out-of-fold tuning, the predict command; tiny budgets.

The device is a fake one whose training steps take one second (the plan's only measurement), so what
is planned does not depend on how loaded the machine is; the folds then really train, within
their planned time budgets.
"""

import functools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from plan_datasets import EPOCHS_ONLY, fake_target, neu_subset

from sever.cli.app import cli
from sever.data_loader.convert import csv_to_mask_folder
from sever.data_loader.demo import make_demo_data
from sever.planning.plan import make_plan
from sever.utils.config import load_config
from sever.study.folder import StudyPaths


@pytest.fixture(autouse=True)
def one_second_steps(monkeypatch):
    monkeypatch.setattr("sever.study.auto.device_target",
                        lambda device, classes, fp: fake_target(step=1.0, per_image=True))
    # tiny budgets on tiny data: planned for epochs, so that they make the studies these tests are about (the
    # learning rules would give each such budget one run: tests/planning/test_learning.py)
    monkeypatch.setattr("sever.study.auto.make_plan", functools.partial(make_plan, policy=EPOCHS_ONLY))


def run_auto(data, out, *options):
    result = CliRunner().invoke(cli, ["auto", str(data), "--device", "cpu", "--time", "1m", "-o", str(out),
                                      *options])
    assert result.exit_code == 0, result.output
    study = re.search(r"^study saved in (.+)$", result.output, re.M).group(1)
    return result.output, StudyPaths(Path(study))


def run_predict_command(output, images, submission):
    """Run the ``next: sever predict ...`` line auto printed last; returns the CLI result."""
    command = output.strip().splitlines()[-1].split()[2:]  # after "next: sever"
    command = [str(images) if part == "IMAGES" else part for part in command]
    command[command.index("submission.csv")] = str(submission)
    predicted = CliRunner().invoke(cli, command)
    assert predicted.exit_code == 0, predicted.output
    return predicted


def check_study(output, study, planned_folds=None):
    """Every fold trained, the study tuned out-of-fold, and the last line the command that predicts."""
    assert all(entry.status == "done" for entry in study.entries())
    assert study.postprocess.read_text().startswith("# sever tune on the out-of-fold probabilities of")
    assert f"out-of-fold score {study.round_record()['score']:.4f}" in output  # what the study recorded
    assert output.strip().splitlines()[-1] == f"next: sever predict -m {study.root} -i IMAGES -o submission.csv"
    assert f"report: {study.root / 'report' / 'index.html'}" in output  # the study's own report page
    if planned_folds is not None:
        assert study.folds == planned_folds


@pytest.mark.slow
def test_auto_on_the_demo_data_ends_with_a_working_predict_command(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_train=16, n_test=3, height=64, width=256, seed=11)
    output, study = run_auto(data, tmp_path / "out", "--unlabelled", str(data / "test_images"))
    experiment = load_config(tmp_path / "out" / "demo.yml")
    assert (tmp_path / "out" / "fingerprint.json").is_file()
    assert experiment["pseudo"] == {"images": str((data / "test_images").resolve()), "rounds": 1}
    check_study(output, study, experiment["data_loader"]["args"]["folds"])
    # 2 folds x 2 rounds share 51 s (12.75 s each); the plan expects each fold's set-up, tuning, report and
    # out-of-fold pass to take more than that (20 s of set-up alone), so fold 0 trains the 1-s minimum
    fold0 = load_config(study.at_round(0).fold_dir(0) / "config.yaml")
    assert experiment["trainer"]["time_budget"] == "51s" and fold0["trainer"]["time_budget"] == "1s"
    predicted = run_predict_command(output, data / "test_images", tmp_path / "submission.csv")
    assert "the study's, tuned out-of-fold" in predicted.output
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0].startswith("ImageId") and len({row.split(",")[0] for row in rows[1:]}) <= 3


@pytest.mark.slow
def test_a_budget_too_short_for_two_folds_trains_one_self_tuned_run(tmp_path, monkeypatch):
    monkeypatch.setattr("sever.study.auto.device_target", lambda device, classes, fp: fake_target(step=2.0))
    data = make_demo_data(tmp_path / "demo", n_train=16, n_test=3, height=64, width=256, seed=11)
    result = CliRunner().invoke(cli, ["auto", str(data), "--device", "cpu", "--time", "1m", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    run = Path(re.search(r"^run saved in (.+)$", result.output, re.M).group(1))
    assert load_config(tmp_path / "out" / "demo.yml")["data_loader"]["args"]["validation_split"] == 0.15
    assert (run / "postprocess.yml").is_file() and (run / "checkpoints" / "model_best.pth").is_file()
    assert f"post-processing tuned on the run's validation split: {run / 'postprocess.yml'}" in result.output
    run_predict_command(result.output, data / "test_images", tmp_path / "submission.csv")
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0].startswith("ImageId") and len({row.split(",")[0] for row in rows[1:]}) <= 3
    explicit = CliRunner().invoke(cli, ["predict", "-m", str(run), "-i", str(data / "test_images"), "-o",
                                        str(tmp_path / "explicit.csv"), "--postprocess", str(run / "postprocess.yml")])
    assert explicit.exit_code == 0, explicit.output
    assert (tmp_path / "explicit.csv").read_text() == (tmp_path / "submission.csv").read_text()


@pytest.mark.slow
def test_auto_on_a_mask_folder(tmp_path, monkeypatch):
    from sever.study import tuning

    tunings = []
    gather = tuning.statistics_from_saved
    monkeypatch.setattr(tuning, "statistics_from_saved", lambda *args, **kw: tunings.append(1) or gather(*args, **kw))
    data = make_demo_data(tmp_path / "demo", n_train=16, n_test=2, height=64, width=256, seed=12)
    csv_to_mask_folder(data / "train_images", data / "train.csv", data / "train_masks", 4)
    (data / "train.csv").unlink()
    output, study = run_auto(data, tmp_path / "out", "--name", "masks")
    assert load_config(tmp_path / "out" / "masks.yml")["data_loader"]["args"]["format"] == "mask_folder"
    check_study(output, study)
    assert len(tunings) == 1  # the study tunes its one round out-of-fold, and auto does not again


def with_final_model(plan):
    """``plan`` as the planner writes it when it chooses a final model (``sever.planning.rules.plan_final_model``)."""
    plan.config["final_model"] = True
    plan.reasons["final_model"] = "a test's plan: a final model on every image predicts"
    return plan


@pytest.mark.slow
def test_auto_on_mixed_sizes_with_a_final_model_predicting(tmp_path, monkeypatch):
    planned = functools.partial(make_plan, policy=EPOCHS_ONLY)
    monkeypatch.setattr("sever.study.auto.make_plan", lambda *args, **kw: with_final_model(planned(*args, **kw)))
    data = make_demo_data(tmp_path / "mixed", n_train=16, n_test=2, height=96, width=256, seed=13, mixed_sizes=True)
    output, study = run_auto(data, tmp_path / "out")
    check_study(output, study)
    final = study.final_entry()
    assert load_config(tmp_path / "out" / "mixed.yml")["final_model"] is True
    assert final.status == "done" and f"final model (predicts for the study): {final.run}" in output
    assert (final.run / "postprocess.yml").read_text() == study.postprocess.read_text()
    # the study's 51 s are shared by its 2 folds and the final model: the ledger charges all three
    ledger = yaml.safe_load(study.file.read_text())["budget"]
    assert set(ledger["spent"]) == {"round0/fold0", "round0/fold1", "round0/tuning", "final"}
    run_predict_command(output, data / "test_images", tmp_path / "submission.csv")
    assert len((tmp_path / "submission.csv").read_text().splitlines()) > 1


@pytest.mark.slow
def test_auto_on_a_neu_seg_subset(shared_data, tmp_path, monkeypatch):
    # quicker steps than the other sets': at 1 s its 18 images would plan a single run, not a study
    monkeypatch.setattr("sever.study.auto.device_target", lambda device, classes, fp: fake_target(step=0.3))
    data = neu_subset(shared_data, tmp_path / "neu", every=200)
    output, study = run_auto(data, tmp_path / "out")
    assert load_config(tmp_path / "out" / "neu.yml")["augmentation"]["args"]["height"] == 192
    check_study(output, study)


def test_auto_refuses_a_missing_unlabelled_folder_before_training(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_train=8, n_test=2, height=64, width=256, seed=14)
    result = CliRunner().invoke(cli, ["auto", str(data), "--time", "2m", "-o", str(tmp_path / "out"),
                                      "--unlabelled", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "--unlabelled: folder not found" in result.output
    assert not (tmp_path / "out").exists()


def rare_tiny_dataset(root: Path, images: int = 16, size=(64, 64)) -> Path:
    """A mask folder on textured grey: class 1 a 3x3 spot in three images of four, class 2 a 2x2 spot in two
    images: defects far too small and rare to learn in the few steps of a one-minute budget."""
    rng = np.random.default_rng(5)
    (root / "train_images").mkdir(parents=True)
    (root / "train_masks").mkdir()
    for i in range(images):
        image = rng.integers(60, 120, size, dtype=np.uint8)
        labels = np.zeros(size, np.uint8)
        y, x = rng.integers(4, size[0] - 8, 2)
        if i % 4:
            labels[y:y + 3, x:x + 3] = 1
        if i in (2, 9):
            labels[y + 4:y + 6, x + 4:x + 6] = 2
        image[labels > 0] = 140
        cv2.imwrite(str(root / "train_images" / f"im{i:02d}.png"), image)
        cv2.imwrite(str(root / "train_masks" / f"im{i:02d}.png"), labels)
    return root


def unlearned_named(output: str, verdicts) -> list[str]:
    """The classes the learning verdicts say were not learned, checked to be named in the WARNING line just above
    the predict command."""
    missed = [v.name for v in verdicts if v.shown and not v.learned]
    lines = output.strip().splitlines()
    assert lines[-2] == f"WARNING: {len(missed)} of {len(verdicts)} classes not learned: {', '.join(missed)}. " \
                        + lines[-2].split(". ", 1)[1]
    for v in verdicts:
        assert v.describe() in output
    return missed


@pytest.mark.slow
@pytest.mark.parametrize("step", [1.0, 2.0], ids=["study", "single-run"])
def test_a_budget_far_too_short_is_warned_before_training_and_each_unlearned_class_named(tmp_path, monkeypatch,
                                                                                       step):
    from sever.inference.learning import run_learning, study_learning

    monkeypatch.setattr("sever.study.auto.device_target",
                        lambda device, classes, fp: fake_target(step=step, per_image=step == 1.0))
    if step == 2.0:  # the single run: as sever auto plans it, learning rules included
        monkeypatch.setattr("sever.study.auto.make_plan", make_plan)
    data = rare_tiny_dataset(tmp_path / "rare")
    result = CliRunner().invoke(cli, ["auto", str(data), "--device", "cpu", "--time", "1m", "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    output = result.output
    warning = output.index("WARNING: this budget is too short to learn this data")
    assert warning < output.index("experiment: ")  # printed before training
    saved = Path(re.search(r"^(?:study|run) saved in (.+)$", output, re.M).group(1))
    if step == 1.0:
        assert StudyPaths(saved).folds >= 2
        verdicts = study_learning(saved)
        page = (saved / "report" / "index.html").read_text()
    else:
        verdicts = run_learning(saved)
        page = (saved / "report" / "index.html").read_text()
    missed = unlearned_named(output, verdicts)
    assert any(name.endswith("1") for name in missed)  # class 1 is in every validation part; nothing learned it
    assert "Was each class learned?" in page and f"NOT LEARNED: {', '.join(missed)}." in page
