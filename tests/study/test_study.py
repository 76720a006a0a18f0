"""K-fold studies: the fold split, the study folder, fold scheduling, out-of-fold tuning and fold ensembles."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sever.cli.app import cli
from sever.data_loader.data_loaders import SteelDataLoader, fold_assignment, fold_split, read_split
from sever.exceptions import CheckpointError, ConfigError, DataError
from sever.inference.outputs import SavedProbabilities, load_probabilities, probability_files, save_probabilities
from sever.inference.tune import statistics_from_saved
from sever.study import folds as study_folds
from sever.study import train as study
from sever.study.folder import StudyPaths


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def random_labels(n=60, seed=0, rates=(0.5, 0.1, 0.3, 0.04)):
    return np.random.default_rng(seed).random((n, len(rates))) < np.array(rates)


# ----------------------------------------------------------------------------- the fold split


def test_every_image_validates_in_exactly_one_fold():
    labels = random_labels()
    valid = [fold_split(labels, 5, k, seed=1) for k in range(5)]
    counts = np.zeros(len(labels), int)
    for train_idx, valid_idx in valid:
        counts[valid_idx] += 1
        assert sorted(np.concatenate([train_idx, valid_idx]).tolist()) == list(range(len(labels)))
    assert (counts == 1).all()
    sizes = [len(v) for _, v in valid]
    assert max(sizes) - min(sizes) <= 1


def test_fold_split_is_a_function_of_the_seed():
    labels = random_labels()
    assert (fold_assignment(labels, 4, seed=3) == fold_assignment(labels, 4, seed=3)).all()
    assert (fold_assignment(labels, 4, seed=3) != fold_assignment(labels, 4, seed=4)).any()


def test_each_common_class_pattern_is_spread_evenly_over_the_folds():
    labels = random_labels(n=200, seed=5)
    folds = 4
    assignment = fold_assignment(labels, folds, seed=0)
    patterns, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    for p in np.flatnonzero(counts >= folds):
        per_fold = np.bincount(assignment[inverse.ravel() == p], minlength=folds)
        assert per_fold.max() - per_fold.min() <= 1, patterns[p]


def test_rare_patterns_are_merged_so_a_rare_class_reaches_several_folds():
    labels = np.zeros((40, 3), bool)
    labels[:20, 0] = True
    labels[[0, 5, 21, 30], 2] = True  # four images of class 3, each in a pattern of its own size 1 or 2
    assignment = fold_assignment(labels, 4, seed=0)
    assert len(set(assignment[labels[:, 2]].tolist())) == 4


def test_a_class_rarer_than_the_folds_is_warned_about_by_name(caplog):
    labels = np.zeros((20, 2), bool)
    labels[:10, 0] = True
    labels[3, 1] = True
    with caplog.at_level(logging.WARNING, logger="sever"):
        fold_assignment(labels, 3, seed=0, class_names=["scratch", "inclusion"])
    assert "inclusion has 1 image(s) for 3 folds: 2 fold(s) validate without it" in caplog.text


@pytest.mark.parametrize("folds, fold, message", [
    (3, 3, r"data_loader.args.fold: must be one of 0..2 \(folds: 3\), got 3"),
    (3, -1, "data_loader.args.fold: must be one of 0..2"),
    (1, 0, "data_loader.args.folds: must be an integer >= 2, got 1"),
    (61, 0, "data_loader.args.folds: 61 folds for 60 images"),
])
def test_bad_folds_name_the_key(folds, fold, message):
    with pytest.raises(ConfigError, match=message):
        fold_split(random_labels(), folds, fold, seed=0)


def test_folds_replace_validation_split_in_the_loader(demo_dir):
    split = read_split(demo_dir, validation_split=0.5, folds=3, fold=1, classes=4, seed=7)
    assert len(split.valid_indices) == 8  # 24 images / 3 folds, not half of them
    loader = SteelDataLoader(str(demo_dir), batch_size=4, folds=3, fold=1, num_workers=0, check="off",
                             classes=4, transforms=_transforms(), seed=7)
    assert [p.name for p in loader.valid_dataset.paths] == [split.paths[i].name for i in split.valid_indices]


def _transforms():
    from sever.registries import TRANSFORMS

    return TRANSFORMS.build({"type": "HeavyCropTransforms", "args": {"height": 64, "width": 64}}, "augmentation")


# ----------------------------------------------------------------------------- scheduling


def test_fold_slots_pin_each_slot_to_its_gpus():
    assert study_folds.fold_slots(2, 1, gpus=0) == [{}, {}]
    assert study_folds.fold_slots(2, 2, gpus=4) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    with pytest.raises(ConfigError, match="--parallel 3 x --nproc 1 needs 3 GPUs; this machine has 2"):
        study_folds.fold_slots(3, 1, gpus=2)


CHILD = """
import os, sys, time
from pathlib import Path
folder, fold = Path(sys.argv[1]), sys.argv[2]
(folder / f"started-{fold}").write_text(os.environ["SLOT"])
deadline = time.monotonic() + 60
while len(list(folder.glob("started-*"))) < 2:  # only passes when two folds run at once
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
sys.exit(0 if fold != "2" else 5)
"""


def test_two_slots_take_folds_from_the_queue_as_two_processes(tmp_path):
    import subprocess

    script = tmp_path / "child.py"
    script.write_text(CHILD)

    def launch(fold, environment):
        return subprocess.run([sys.executable, str(script), str(tmp_path), str(fold)],
                              env={**environment, "PATH": ""}, check=False).returncode

    results = study_folds.run_queue([0, 1, 2, 3], [{"SLOT": "a"}, {"SLOT": "b"}], launch)
    assert results == {0: 0, 1: 0, 2: 5, 3: 0}
    slots = {path.name: path.read_text() for path in tmp_path.glob("started-*")}
    assert len(slots) == 4 and set(slots.values()) == {"a", "b"}


# ----------------------------------------------------------------------------- a trained study


@pytest.fixture(scope="module")
def trained_study(demo_dir, module_tmp):
    """A 2-fold study of the tiny config, one epoch per fold."""
    from conftest import tiny_config

    config = tiny_config(demo_dir, module_tmp("study"), epochs=1)
    return study.train_study(config, folds=2).root


@pytest.mark.slow
def test_a_study_trains_every_fold_and_keeps_out_of_fold_maps(trained_study, demo_dir):
    paths = StudyPaths(trained_study)
    assert [(e.fold, e.status, e.run.name) for e in paths.entries()] == [(0, "done", "fold0"), (1, "done", "fold1")]
    names = []
    for fold in range(2):
        assert (paths.fold_dir(fold) / "checkpoints" / "model_best.pth").is_file()
        run_config = yaml.safe_load((paths.fold_dir(fold) / "config.yaml").read_text())
        assert run_config["data_loader"]["args"]["folds"] == 2 and run_config["data_loader"]["args"]["fold"] == fold
        files = probability_files(paths.oof_dir(fold))
        assert load_probabilities(files[0])[0].shape == (4, 64, 256)
        names += [f.name[:-len(".npz")] for f in files]
    assert sorted(names) == sorted(p.name for p in (demo_dir / "train_images").iterdir())


@pytest.mark.slow
def test_tune_on_a_study_writes_its_postprocess_and_predict_uses_it(trained_study, demo_dir, tmp_path):
    result = invoke("tune", "-m", trained_study, "--thresholds", "0.4,0.6", "--min-pixels", "0,100")
    assert result.exit_code == 0, result.output
    assert "24 images" in result.output  # the union of both folds' validation images
    tuned = Path(trained_study) / "postprocess.yml"
    assert f"the out-of-fold probabilities of {trained_study}" in tuned.read_text()

    result = invoke("evaluate", "-m", trained_study, "--oof")
    assert result.exit_code == 0, result.output
    assert f"post-processing: {tuned}" in result.output
    for name in ("class 1", "class 4"):
        assert name in result.output

    result = invoke("predict", "-m", trained_study, "-i", demo_dir / "test_images", "-o", tmp_path / "s.csv",
                    "--device", "cpu", "--num-workers", 0, "--save-probs", tmp_path / "study")
    assert result.exit_code == 0, result.output
    assert f"post-processing: {tuned}" in result.output
    folds = [Path(trained_study) / "fold0", Path(trained_study) / "fold1"]
    invoke("predict", "-m", folds[0], "-m", folds[1], "-i", demo_dir / "test_images", "-o", tmp_path / "f.csv",
           "--device", "cpu", "--num-workers", 0, "--save-probs", tmp_path / "folds")
    for path in probability_files(tmp_path / "folds"):
        assert (load_probabilities(path)[0] == load_probabilities(tmp_path / "study" / path.name)[0]).all()


@pytest.mark.slow
def test_a_study_shares_its_weight_among_its_folds(trained_study, demo_dir, tmp_path):
    folds = [Path(trained_study) / "fold0", Path(trained_study) / "fold1"]
    common = ["-i", demo_dir / "test_images", "--device", "cpu", "--num-workers", 0]
    invoke("predict", "-m", trained_study, "-m", folds[0], "-w", 1, "-w", 1, "-o", tmp_path / "a.csv",
           "--save-probs", tmp_path / "a", *common)
    invoke("predict", "-m", folds[0], "-m", folds[1], "-m", folds[0], "-w", 0.5, "-w", 0.5, "-w", 1,
           "-o", tmp_path / "b.csv", "--save-probs", tmp_path / "b", *common)
    for path in probability_files(tmp_path / "b"):
        assert (load_probabilities(path)[0] == load_probabilities(tmp_path / "a" / path.name)[0]).all()
    result = invoke("predict", "-m", trained_study, "-m", folds[0], "-w", 1, "-o", tmp_path / "c.csv", *common)
    assert result.exit_code == 1 and "-w: 1 weight(s) for 2 -m" in result.output


@pytest.mark.slow
def test_predict_refuses_a_study_with_a_failed_fold_unless_allowed(trained_study, demo_dir, tmp_path):
    paths = StudyPaths(trained_study)
    paths.set_status(1, "failed")
    try:
        args = ["predict", "-m", trained_study, "-i", demo_dir / "test_images", "-o", tmp_path / "s.csv",
                "--device", "cpu", "--num-workers", 0]
        result = invoke(*args)
        assert result.exit_code == 1
        assert f"fold 1 is failed ({paths.fold_dir(1)})" in result.output
        assert "--allow-missing-folds" in result.output
        result = invoke(*args, "--allow-missing-folds")
        assert result.exit_code == 0, result.output
        result = invoke("evaluate", "-m", trained_study, "--oof")
        assert result.exit_code == 1 and "fold 1 has no out-of-fold probabilities" in result.output
    finally:
        paths.set_status(1, "done")


@pytest.mark.slow
def test_resume_finishes_only_the_unfinished_folds(make_config, tmp_path):
    config = make_config(epochs=1)
    config["data_loader"]["args"]["validation_split"] = 0  # ignored: folds decide the validation images
    first = study.train_study(config, folds=3, only=2)
    assert [e.status for e in first.entries()] == ["pending", "pending", "done"]
    done_best = (first.fold_dir(2) / "checkpoints" / "model_best.pth").stat().st_mtime_ns
    first.set_status(1, "running")  # as an interrupted fold is left
    (first.fold_dir(1) / "checkpoints").mkdir(parents=True)
    result = invoke("train", "-r", first.root, "--set", "trainer.epochs=1")
    assert result.exit_code == 0, result.output
    assert [e.status for e in first.entries()] == ["done", "done", "done"]
    assert (first.fold_dir(2) / "checkpoints" / "model_best.pth").stat().st_mtime_ns == done_best


@pytest.mark.slow
def test_a_fold_interrupted_mid_run_resumes_from_its_newest_checkpoint(make_config):
    created = study.train_study(make_config(epochs=1), folds=2, only=0)
    created.set_status(0, "running")
    study.resume_study(created.root, overrides=["trainer.epochs=2"])
    log = (created.fold_dir(0) / "train.log").read_text()
    assert "resuming from" in log
    assert sorted(p.name for p in (created.fold_dir(0) / "checkpoints").glob("checkpoint-epoch*.pth")) == [
        "checkpoint-epoch1.pth", "checkpoint-epoch2.pth"]
    assert [e.status for e in created.entries()] == ["done", "done"]


def test_cli_refuses_bad_fold_options(make_config, tmp_path):
    path = tmp_path / "x.yml"
    path.write_text(yaml.safe_dump(make_config()))
    result = invoke("train", "-c", path, "--folds", 3, "--fold", 3)
    assert result.exit_code == 1 and "--fold 3: must be one of 0..2 (--folds 3)" in result.output
    result = invoke("train", "-c", path, "--fold", 1)
    assert result.exit_code == 2 and "--fold and --parallel are for studies" in result.output
    result = invoke("train", "-c", path, "--folds", 25)
    assert result.exit_code == 1 and "data_loader.args.folds: 25 folds for 24 images" in result.output
    assert not (tmp_path / "saved").exists()  # refused before any folder was made


def test_out_of_fold_maps_of_different_class_counts_are_refused(tmp_path):
    for folder, classes in (("fold0", 4), ("fold1", 3)):
        (tmp_path / folder).mkdir()
        save_probabilities(tmp_path / folder, "a.jpg", np.zeros((classes, 8, 8), np.uint8))
    sources = [(SavedProbabilities([tmp_path / "fold0"]), None), (SavedProbabilities([tmp_path / "fold1"]), None)]
    with pytest.raises(DataError, match=f"{tmp_path / 'fold1'} holds 3 classes .* but {tmp_path / 'fold0'} 4"):
        statistics_from_saved(sources, None, [0.5])


def test_a_folder_without_study_file_is_no_study(tmp_path):
    with pytest.raises(CheckpointError, match="not a study folder"):
        study.resume_study(tmp_path)


@pytest.mark.slow
def test_parallel_folds_train_as_separate_processes_sharing_the_study_file(make_config, tmp_path):
    path = tmp_path / "x.yml"
    path.write_text(yaml.safe_dump(make_config(epochs=1)))
    result = invoke("train", "-c", path, "--folds", 2, "--parallel", 2)
    assert result.exit_code == 0, result.output
    (root,) = (tmp_path / "saved" / "tiny").iterdir()
    paths = StudyPaths(root)
    assert [e.status for e in paths.entries()] == ["done", "done"]
    for fold in range(2):
        assert (paths.fold_dir(fold) / "checkpoints" / "model_best.pth").is_file()
        assert probability_files(paths.oof_dir(fold))
    assert not (root / "study.yml.lock").exists()
