"""The label formats the CLI offers (``LabelFormat``): the data-source registry's mask sources, so a source
registered with ``@register_source`` is planned, converted and checked like the built-in ones."""

import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from plan_datasets import fake_target, squares_dataset

from sever.cli.app import cli
from sever.data_loader.demo import make_demo_data
from sever.data_loader.sources import read_csv_folder, register_source
from sever.experiment import prepare_config
from sever.registries import DATA_SOURCES
from sever.utils.config import load_config


@pytest.fixture
def nested_csv(monkeypatch):
    """A source registered here: a Kaggle CSV kept in a ``labels/`` sub-folder; gone after the test."""
    DATA_SOURCES.names()  # the built-in sources first, so the copy below holds them
    monkeypatch.setattr(DATA_SOURCES, "_entries", dict(DATA_SOURCES._entries))

    @register_source("nested_csv", labels="masks")
    def read_nested(folder):
        return read_csv_folder(folder.root / folder.images, folder.root / "labels" / folder.csv, folder.classes)

    return "nested_csv"


@pytest.fixture
def nested_data(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_train=12, n_test=2, height=64, width=256, seed=21)
    (data / "labels").mkdir()
    shutil.copy(data / "train.csv", data / "labels" / "train.csv")
    return data


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def test_a_registered_source_is_offered_by_every_command_that_reads_labels(nested_csv):
    for command in ("plan", "auto", "check-data"):
        assert "nested_csv" in invoke(command, "--help").output, command
    help_text = invoke("convert", "--help").output
    offered_from, offered_to = help_text.split("--to", 1)
    assert "nested_csv" in offered_from and "nested_csv" not in offered_to  # read, not written
    assert invoke("plan", "data", "--format", "bogus", "-o", "x.yml").exit_code == 2


def test_plan_reads_a_registered_source_and_writes_a_config_that_trains_on_it(nested_csv, nested_data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr("sever.study.auto.device_target", lambda device, classes, fp: fake_target())
    (nested_data / "train.csv").rename(nested_data / "elsewhere.csv")  # only the source's own CSV is left
    result = invoke("plan", nested_data, "--format", "nested_csv", "--time", "1h", "-o", tmp_path / "nested.yml")
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "nested.yml")
    assert config["data_loader"]["args"]["format"] == "nested_csv"
    assert config["data_loader"]["args"]["csv"] == "train.csv"
    assert config["classes"] == 4  # detected from the labels the source read
    prepare_config(config)
    (nested_data / "elsewhere.csv").rename(nested_data / "train.csv")
    kaggle = invoke("plan", nested_data, "--format", "kaggle", "--time", "1h", "-o", tmp_path / "kaggle.yml")
    assert kaggle.exit_code == 0, kaggle.output
    reference = load_config(tmp_path / "kaggle.yml")
    assert config["augmentation"] == reference["augmentation"] and config["metrics"] == reference["metrics"]


def test_convert_reads_a_registered_source(nested_csv, nested_data, tmp_path, monkeypatch):
    common = ["--images", nested_data / "train_images", "--classes", 4]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    nested = invoke("convert", "--from", "nested_csv", "--to", "mask-folder", "--masks", tmp_path / "from_nested",
                    "--csv", "train.csv", *common)
    assert nested.exit_code != 0 and "train.csv" in nested.output  # the source reads labels/ under the cwd
    monkeypatch.chdir(nested_data)
    nested = invoke("convert", "--from", "nested_csv", "--to", "mask-folder", "--masks", tmp_path / "from_nested",
                    "--csv", "train.csv", *common)
    assert nested.exit_code == 0, nested.output
    kaggle = invoke("convert", "--from", "kaggle", "--to", "mask_folder", "--masks", tmp_path / "from_kaggle",
                    "--csv", nested_data / "train.csv", *common)
    assert kaggle.exit_code == 0, kaggle.output
    names = sorted(p.name for p in (tmp_path / "from_kaggle").iterdir())
    assert names and names == sorted(p.name for p in (tmp_path / "from_nested").iterdir())
    for name in names:
        assert np.array_equal(cv2.imread(str(tmp_path / "from_nested" / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tmp_path / "from_kaggle" / name), cv2.IMREAD_UNCHANGED))
    refused = invoke("convert", "--from", "kaggle", "--to", "nested_csv", "--masks", tmp_path / "m", "--csv",
                     nested_data / "train.csv", *common)
    assert refused.exit_code == 2 and "nested_csv" in refused.output  # convert cannot write it


def test_check_data_checks_a_registered_source(nested_csv, nested_data):
    fine = invoke("check-data", nested_data, "--format", "nested_csv")
    assert fine.exit_code == 0, fine.output
    assert "the nested_csv labels" in fine.output and "class 1 masks" in fine.output
    rows = (nested_data / "labels" / "train.csv").read_text().splitlines()
    (nested_data / "labels" / "train.csv").write_text("\n".join(rows + ["ghost.jpg,1,1 5"]) + "\n")
    broken = invoke("check-data", nested_data, "--format", "nested_csv")
    assert broken.exit_code == 1 and "ghost.jpg" in broken.output


def test_mask_folder_is_accepted_with_a_hyphen(tmp_path, monkeypatch):
    monkeypatch.setattr("sever.study.auto.device_target", lambda device, classes, fp: fake_target())
    data = squares_dataset(tmp_path / "sq", images=12)
    result = invoke("plan", data, "--format", "mask-folder", "--time", "1h", "-o", tmp_path / "sq.yml")
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "sq.yml")["data_loader"]["args"]["format"] == "mask_folder"
    checked = invoke("check-data", data, "--format", "mask-folder", "--classes", 2)
    assert checked.exit_code == 0, checked.output
