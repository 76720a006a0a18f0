"""`sever convert`: mask folder <-> Kaggle CSV, exact round trips, and NEU-Seg's two copies agreeing."""

import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sever.cli.app import cli
from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.convert import csv_to_mask_folder, mask_folder_to_csv
from sever.data_loader.datasets import list_images
from sever.data_loader.mask_folder import read_mask_folder
from mask_folders import NAMES, make_label_maps, write_dataset


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("layout", ["labels", "per-class"])
@pytest.mark.parametrize("fmt", ["train", "original"])
def test_mask_folder_to_csv_to_mask_folder_is_exact(tmp_path, layout, fmt):
    masks = make_label_maps(np.random.default_rng(5), overlap=layout == "per-class")
    root = write_dataset(tmp_path / "src", masks, layout, names=NAMES)
    written = mask_folder_to_csv(root / "images", root / "masks", tmp_path / "masks.csv", 3, NAMES, fmt)
    names = list_images(root / "images")
    assert read_rle_csv(tmp_path / "masks.csv", 3, image_ids=names) == written
    back = csv_to_mask_folder(root / "images", tmp_path / "masks.csv", tmp_path / "back", 3, NAMES, layout)
    assert back == written
    assert read_mask_folder(root / "images", tmp_path / "back", 3, NAMES)[0] == written
    if layout == "labels":  # the very same PNG values
        for name in names:
            stem = name.rsplit(".", 1)[0]
            original = cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(cv2.imread(str(tmp_path / "back" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), original)


def test_cli_converts_both_ways(tmp_path):
    masks = make_label_maps(np.random.default_rng(6))
    root = write_dataset(tmp_path / "src", masks, "labels")
    csv = tmp_path / "train.csv"
    result = run("convert", "--from", "mask-folder", "--to", "kaggle", "--images", root / "images",
                 "--masks", root / "masks", "--csv", csv, "--classes", 3)
    assert result.exit_code == 0, result.output
    assert f"of {len(masks)} images to {csv}" in result.output
    result = run("convert", "--from", "kaggle", "--to", "mask-folder", "--images", root / "images",
                 "--masks", tmp_path / "per", "--csv", csv, "--classes", 3, "--class-names", ",".join(NAMES),
                 "--layout", "per-class")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "per")) == sorted({NAMES[k] for m in masks for k in range(3) if m[..., k].any()})
    assert read_mask_folder(root / "images", tmp_path / "per", 3, NAMES)[0] == read_rle_csv(
        csv, 3, image_ids=list_images(root / "images"))


def test_cli_errors(tmp_path):
    masks = make_label_maps(np.random.default_rng(7))
    root = write_dataset(tmp_path / "src", masks, "labels")
    base = ["--images", root / "images", "--masks", root / "masks", "--csv", tmp_path / "x.csv", "--classes", 2]
    result = run("convert", "--from", "mask-folder", "--to", "kaggle", *base)
    assert result.exit_code == 1 and "is not a class number 0..2" in result.output and "Traceback" not in result.output
    result = run("convert", "--from", "kaggle", "--to", "kaggle", *base)
    assert result.exit_code == 2 and "nothing to convert" in result.output
    result = run("convert", "--from", "kaggle", "--to", "mask-folder", *base[:-2], "--classes", 3,
                 "--class-names", "a,b")
    assert result.exit_code == 2 and "2 names for 3 classes" in result.output
    result = run("convert", "--from", "kaggle", "--to", "mask-folder", *base[:-2], "--classes", 3)
    assert result.exit_code == 1 and "x.csv" in result.output


def test_neu_seg_label_maps_and_csv_agree(shared_data, tmp_path):
    """The real NEU-Seg ships both formats; converting the label maps must give its train.csv."""
    source = shared_data / "neu-seg"
    names = sorted(os.listdir(source / "train_images"))[::73][:50]
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name in names:
        stem = name.rsplit(".", 1)[0]
        os.symlink(source / "train_images" / name, tmp_path / "images" / name)
        os.symlink(source / "train_masks" / f"{stem}.png", tmp_path / "masks" / f"{stem}.png")
    converted = mask_folder_to_csv(tmp_path / "images", tmp_path / "masks", tmp_path / "train.csv", 3)
    shipped = read_rle_csv(source / "train.csv", 3, image_ids=names).subset(np.arange(len(names)))
    assert converted.has_defect().sum() > 30
    assert converted == shipped
