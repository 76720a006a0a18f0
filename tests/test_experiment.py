"""The shipped experiment files: valid, each one trains a step on CPU, and the README's write-up table matches them."""

import re

import pytest
import torch
from conftest import REPO

from sever.experiment import build_experiment, prepare_config, with_block_defaults
from sever.utils.config import dump_config, load_config

EXPERIMENTS = REPO / "experiments"
WRITE_UP = ["config.yml", "sever-unet-b5.yml", "sever-fpn-se_resnext50.yml", "sever-unet-se_resnext50.yml"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.yml")))
def test_every_experiment_file_is_valid(name):
    prepare_config(load_config(EXPERIMENTS / name))


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.yml")))
def test_config_yaml_with_every_default_filled_in_trains_the_same_run(name, tmp_path):
    full = with_block_defaults(prepare_config(load_config(EXPERIMENTS / name)))
    dump_config(full, tmp_path / "config.yaml")
    assert with_block_defaults(prepare_config(load_config(tmp_path / "config.yaml"))) == full


def test_write_up_hyper_parameters():
    config = prepare_config(load_config(EXPERIMENTS / "config.yml"))
    assert (config["arch"]["type"], config["arch"]["args"]["encoder_name"]) == ("FPN", "efficientnet-b5")
    assert config["loss"] == {"type": "BCEDiceLoss", "args": {"bce_weight": 0.6, "dice_weight": 0.4}}
    assert config["optimizer"]["encoder"] == {"lr": 7e-5, "weight_decay": 3e-5}
    assert config["optimizer"]["decoder"] == {"lr": 3e-3, "weight_decay": 3e-4}
    assert config["lr_scheduler"]["args"] == {"start_anneal": 30, "n_epochs": 250}
    assert config["augmentation"]["args"] == {"height": 256, "width": 384}


@pytest.mark.slow
@pytest.mark.parametrize("name", WRITE_UP)
def test_write_up_model_trains_one_step_on_a_small_crop(name, demo_dir):
    config = prepare_config(load_config(EXPERIMENTS / name), [
        "arch.args.encoder_weights=null", f"data_loader.args.data_dir={demo_dir}",
        "data_loader.args.batch_size=2", "data_loader.args.num_workers=0", "device=cpu",
        "augmentation.args.height=64", "augmentation.args.width=64",
    ])
    experiment = build_experiment(config)
    images, masks = next(iter(experiment.data.train_loader))
    assert images.shape == (2, 1, 64, 64)
    model = experiment.model.train()
    before = [p.detach().clone() for p in model.decoder.parameters()]
    loss = experiment.loss(model(experiment.normalization(images)), masks)["loss"]
    loss.backward()
    experiment.optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.decoder.parameters()))


# ---------------------------------------------------------------- the training guide's write-up table against the experiment files


def write_up_table() -> list[dict[str, str]]:
    """Rows of the training guide's table under 'Reproducing the write-up', keyed by its header."""
    text = (REPO / "docs" / "guides" / "training.rst").read_text()
    section = text.split("Reproducing the write-up", 1)[1]
    table = section.split(".. list-table::", 1)[1].split("\n\n", 2)[1]
    rows = [[cell.strip().strip("`") for cell in re.split(r"\n\s+- ", row)]
            for row in re.split(r"\n\s*\* - ", "\n" + table.strip())[1:]]
    header, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def test_the_write_up_table_lists_every_write_up_experiment():
    rows = write_up_table()
    assert len(rows) == 4
    assert {row["file"] for row in rows} == {"experiments/config.yml", "experiments/sever-unet-b5.yml",
                                             "experiments/sever-fpn-se_resnext50.yml",
                                             "experiments/sever-unet-se_resnext50.yml"}


@pytest.mark.parametrize("row", write_up_table(), ids=lambda row: row["file"])
def test_each_experiment_file_matches_its_row_of_the_write_up_table(row):
    config = prepare_config(load_config(REPO / row["file"]))
    arch, augmentation = config["arch"], config["augmentation"]["args"]
    assert arch["type"] == row["decoder"]
    assert arch["args"]["encoder_name"] == row["encoder"]
    assert arch["args"]["in_channels"] == row["first conv"]
    assert config["data_loader"]["args"]["batch_size"] == int(row["batch"])
    assert f"{augmentation['height']}x{augmentation['width']}" == row["crop"]
