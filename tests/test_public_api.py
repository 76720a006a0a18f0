"""The Python API as a notebook uses it: ``import sever`` and its public names, nothing else of sever's.

A tiny demo run is trained with ``sever.train("demo", ...)``; its model then predicts numpy
images, files, folders and lists, and gives the masks and rows ``sever predict`` writes.
"""

import csv
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import sever

TINY = dict(  # the demo experiment, shrunk to seconds on a CPU
    device="cpu",
    data_loader={"args": {"generate_demo": False, "num_workers": 0}},
    augmentation={"args": {"height": 64, "width": 64}},
    lr_scheduler={"args": {"start_anneal": 1, "n_epochs": 2}},
    trainer={"epochs": 2, "save_period": 1, "tensorboard": False, "report_images": 0},
)


@pytest.fixture(scope="module")
def run(demo_dir, module_tmp):
    overrides = {**TINY, "data_loader": {"args": {**TINY["data_loader"]["args"], "data_dir": str(demo_dir)}}}
    return sever.train("demo", save_dir=str(module_tmp("saved")), **overrides)


def sever_cli(*args) -> subprocess.CompletedProcess:
    """The ``sever`` command, as a notebook's ``!sever ...`` runs it."""
    done = subprocess.run([sys.executable, "-m", "sever", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    return done


def rows_of(path) -> list[tuple]:
    with open(path, newline="") as stream:
        return [tuple(row) for row in list(csv.reader(stream))[1:]]


def test_import_sever_is_light_and_names_the_api():
    """``import sever`` loads no torch (the CLI's --help and a notebook's first cell stay fast)."""
    code = "import sys, sever; print('torch' in sys.modules, sorted(sever.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("False "), done.stdout


def test_the_public_names():
    assert {"load", "train", "auto", "evaluate", "tune"} <= set(sever.__all__)
    assert all(hasattr(sever, name) for name in sever.__all__)
    with pytest.raises(AttributeError):
        sever.no_such_name  # noqa: B018


@pytest.mark.slow
def test_train_returns_the_run_with_its_config_merged(run):
    assert run.root.is_dir() and run.best.is_file() and run.best.suffix == ".pth"
    assert run.config["trainer"]["epochs"] == 2  # the override
    assert run.config["trainer"]["monitor"] == "max val_dice_mean"  # the rest of the demo's block, kept
    assert run.config["class_names"] == ["pitted_spots", "dark_inclusions", "scratches", "patches"]


@pytest.mark.slow
def test_a_numpy_image_gives_the_masks_and_rows_of_sever_predict(run, demo_dir, tmp_path):
    folder = demo_dir / "test_images"
    sever_cli("predict", "-m", run.root, "-i", folder, "-o", tmp_path / "cli.csv", "--device", "cpu")
    expected = rows_of(tmp_path / "cli.csv")
    model = sever.load(run.root)
    assert model.class_names == ["pitted_spots", "dark_inclusions", "scratches", "patches"]
    paths = sorted(folder.iterdir())
    image = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    result = model.predict(image, device="cpu")[0]
    assert result.name == "image0" and result.masks.shape == (4, *image.shape) and result.masks.dtype == bool
    rows = [(paths[0].name, pixels, str(class_id)) for _, pixels, class_id in result.rle()]
    assert rows == expected[:4]
    from_folder = model.predict(folder, device="cpu")
    assert [tuple(map(str, row)) for row in from_folder.rle()] == expected
    np.testing.assert_array_equal(from_folder[0].masks, result.masks)
    rgb = model.predict(np.dstack([image] * 3), device="cpu")[0]
    np.testing.assert_array_equal(rgb.masks, result.masks)
    listed = model.predict([str(paths[1]), image], device="cpu", probabilities=True)
    assert [r.name for r in listed] == [paths[1].name, "image1"]
    np.testing.assert_array_equal(listed[0].masks, from_folder[1].masks)
    probabilities = listed[1].probabilities
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, *image.shape)
    assert 0 <= probabilities.min() and probabilities.max() <= 1 and from_folder[0].probabilities is None
    assert result.overlay().shape == (*image.shape, 3)


@pytest.mark.slow
def test_evaluate_scores_what_the_run_tuned(run):
    """The run tuned itself at the end of training: sever.evaluate uses those settings and scores them
    as the tuning found; the built-in settings score no better."""
    scores = sever.evaluate(run.root, split="val", device="cpu", batch_size=4)
    assert "postprocess.yml" in scores.postprocessing
    assert list(scores.class_dice) == ["1 pitted_spots", "2 dark_inclusions", "3 scratches", "4 patches"]
    tuned = sever.tune(run.load(), split="val", output=run.root / "again.yml", device="cpu", postprocess="default",
                      batch_size=4)
    np.testing.assert_allclose(list(scores.class_dice.values()), tuned.result.best_scores, atol=1e-9)
    assert sever.evaluate(run.root, split="val", device="cpu", postprocess="default").mean_dice <= scores.mean_dice
    assert (run.root / "again.yml").read_text() == (run.root / "postprocess.yml").read_text()
