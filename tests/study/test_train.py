"""Making and resuming a study: the saved split survives added images, deleted folds train again."""

import json
import logging
import shutil

import pytest
import yaml
from click.testing import CliRunner

from sever.cli.app import cli
from sever.data_loader.demo import make_demo_data
from sever.exceptions import DataError
from sever.inference.outputs import probability_files
from sever.study.folder import StudyPaths
from sever.study.train import resume_study, train_study


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def own_data(tmp_path):
    """A demo dataset of this test's own (images get added to it)."""
    return make_demo_data(tmp_path / "data", n_train=12, n_test=2, height=64, width=256, seed=5)


def config_of(data, tmp_path):
    from conftest import tiny_config

    return tiny_config(data, tmp_path / "saved", epochs=1, tune_postprocess=False)


def add_image(data, name):
    """Add ``name`` to the data: a copy of its first image with that image's label rows."""
    first = sorted((data / "train_images").iterdir())[0].name
    shutil.copy(data / "train_images" / first, data / "train_images" / name)
    rows = [line for line in (data / "train.csv").read_text().splitlines() if line.startswith(first)]
    with open(data / "train.csv", "a") as csv:
        csv.write("".join(f"{row.replace(first, name)}\n" for row in rows))


def oof_names(paths: StudyPaths, fold: int) -> set[str]:
    return {path.name[:-len(".npz")] for path in probability_files(paths.oof_dir(fold))}


def saved_images(paths: StudyPaths) -> dict[str, int]:
    return json.loads(paths.splits.read_text())["images"]


@pytest.mark.slow
def test_a_resumed_study_keeps_its_folds_when_images_were_added(own_data, tmp_path):
    paths = train_study(config_of(own_data, tmp_path), folds=2, only=0)
    split = saved_images(paths)
    assert len(split) == 12 and sorted(set(split.values())) == [0, 1]
    assert oof_names(paths, 0) == {key.split("/")[-1] for key, fold in split.items() if fold == 0}
    add_image(own_data, "added0.jpg")
    add_image(own_data, "added1.jpg")
    before = {path: path.read_bytes() for path in paths.root.rglob("*") if path.is_file()}

    result = invoke("train", "-r", paths.root)  # refused, naming the images and the option
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{paths.splits}: 2 image(s) of the data folder have no fold (added since the split): "
            f"train_images/added0.jpg, train_images/added1.jpg; sever train -r {paths.root} --assign-new-images"
            ) in result.output
    assert {path: path.read_bytes() for path in paths.root.rglob("*") if path.is_file()} == before

    result = invoke("train", "-r", paths.root, "--assign-new-images")
    assert result.exit_code == 0, result.output
    assigned = saved_images(paths)
    assert {key: assigned[key] for key in split} == split  # no image moved
    assert assigned["train_images/added0.jpg"] == 0 and assigned["train_images/added1.jpg"] == 1  # 6/6, then 7/6
    assert [entry.status for entry in paths.entries()] == ["done", "done"]
    assert oof_names(paths, 1) == {key.split("/")[-1] for key, fold in assigned.items() if fold == 1}
    fold1 = yaml.safe_load((paths.fold_dir(1) / "config.yaml").read_text())
    assert fold1["data_loader"]["args"]["split_file"] == str(paths.splits.resolve())


@pytest.mark.slow
def test_a_fold_marked_done_without_its_folder_trains_again(make_config, caplog):
    paths = train_study(make_config(epochs=1, tune_postprocess=False), folds=2)
    shutil.rmtree(paths.fold_dir(1))
    with caplog.at_level(logging.WARNING, logger="sever.study.train"):
        resume_study(paths.root)
    assert f"round 0, fold 1: marked done in {paths.file} but its run folder {paths.fold_dir(1)} is gone: " \
           "training it again" in caplog.text
    assert (paths.fold_dir(1) / "checkpoints" / "model_best.pth").is_file()
    assert [entry.status for entry in paths.entries()] == ["done", "done"]
    assert probability_files(paths.oof_dir(1))


@pytest.mark.slow
def test_an_older_study_without_splits_gets_the_seeds_split_and_keeps_it(own_data, tmp_path, caplog):
    paths = train_study(config_of(own_data, tmp_path), folds=2, only=0)
    first = saved_images(paths)
    paths.splits.unlink()  # as a study made before splits.json
    config_file = paths.fold_dir(0) / "config.yaml"  # and fold 0 trained on the seed's split
    run = yaml.safe_load(config_file.read_text())
    del run["data_loader"]["args"]["split_file"]
    config_file.write_text(yaml.safe_dump(run))
    with caplog.at_level(logging.INFO, logger="sever.study.train"):
        resume_study(paths.root)
    assert "a study from before saved splits: wrote" in caplog.text
    assert saved_images(paths) == first  # the seed's split of the same data: the folds read unchanged
    assert [entry.status for entry in paths.entries()] == ["done", "done"]


def test_a_hand_edit_of_the_split_is_refused_before_anything_trains(own_data, tmp_path):
    from sever.study.train import create_study

    paths = create_study(config_of(own_data, tmp_path), folds=2)
    data = json.loads(paths.splits.read_text())
    data["images"]["train_images/unknown.jpg"] = 1
    paths.splits.write_text(json.dumps(data))
    before = paths.file.read_bytes()
    result = invoke("train", "-r", paths.root)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{paths.splits}: 1 image(s) not in the data folder: train_images/unknown.jpg" in result.output
    assert paths.file.read_bytes() == before and not paths.fold_dir(0).exists()
    with pytest.raises(DataError, match="not in the data folder"):
        resume_study(paths.root)


def test_assign_new_images_is_only_for_resuming_a_study(make_config, tmp_path):
    path = tmp_path / "x.yml"
    path.write_text(yaml.safe_dump(make_config()))
    result = invoke("train", "-c", path, "--folds", 2, "--assign-new-images")
    assert result.exit_code == 2 and "--assign-new-images is for -r STUDY_DIR" in result.output
    result = invoke("train", "-c", path, "--assign-new-images")
    assert result.exit_code == 2 and "--assign-new-images is for -r STUDY_DIR" in result.output
    assert not (tmp_path / "saved").exists()
