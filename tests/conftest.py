"""Shared fixtures.

Real data lives in ``../shared/data`` beside the checkout (or where
``SEVER_SHARED_DATA`` points); tests that need it skip when it is absent, and the
terminal summary says how many ran and how many skipped, so a skip is never silent.
"""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("SEVER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is not there."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set SEVER_SHARED_DATA to its folder)")
    return path


# nodeid -> "ran" or "skipped", for the terminal summary.
_shared_data_outcomes: dict[str, str] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: reads ../shared/data (set by the shared_data fixture)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


def pytest_runtest_logreport(report):
    """Record each shared-data test as ran or skipped (a skip happens in setup, a run in call)."""
    if "shared_data" not in report.keywords:
        return
    if report.skipped:
        _shared_data_outcomes[report.nodeid] = "skipped"
    elif report.when == "call":
        _shared_data_outcomes[report.nodeid] = "ran"


def pytest_terminal_summary(terminalreporter, config):
    outcomes = list(_shared_data_outcomes.values())
    path = _shared_data_dir()
    where = path if path.is_dir() else f"{path}, not found"
    terminalreporter.write_line(
        f"shared-data tests: {outcomes.count('ran')} ran, {outcomes.count('skipped')} skipped ({where})"
    )


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``module_tmp(name)`` -> a new folder for this module's shared fixtures.

    The folders are deleted when the module's last test ends, unless a test failed meanwhile:
    pytest would keep them to the end of the session, and the trained runs of every module
    together would fill a small disk (``tmp_path_retention_policy`` only covers ``tmp_path``).
    """
    made = []
    failures_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failures_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the Kaggle layout (24 train, 6 test images of 64x256)."""
    from sever.data_loader.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=24, n_test=6, height=64, width=256, seed=3)


def tiny_config(data_dir: Path, save_dir: Path, **trainer) -> dict:
    """A complete experiment config small enough to train in seconds on CPU."""
    return {
        "name": "tiny",
        "save_dir": str(save_dir),
        "seed": 7,
        "device": "cpu",
        "classes": 4,
        "arch": {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None,
                                          "decoder_args": {"decoder_pyramid_channels": 32,
                                                           "decoder_segmentation_channels": 32}}},
        "data_loader": {"type": "SteelDataLoader",
                        "args": {"data_dir": str(data_dir), "batch_size": 4, "validation_split": 0.25,
                                 "num_workers": 0}},
        "augmentation": {"type": "HeavyCropTransforms", "args": {"height": 64, "width": 64}},
        "loss": {"type": "BCEDiceLoss", "args": {"bce_weight": 0.6, "dice_weight": 0.4}},
        "metrics": ["Dice"],
        "optimizer": {"type": "RAdam", "encoder": {"lr": 1e-3}, "decoder": {"lr": 3e-3}},
        "lr_scheduler": {"type": "FlatCosineAnnealing", "args": {"start_anneal": 1, "n_epochs": 3}},
        "trainer": {"epochs": 2, "save_period": 1, "tensorboard": False, "report_images": 0, **trainer},
    }


def mixed_config(data_dir: Path, save_dir: Path, **data_args) -> dict:
    """``tiny_config`` for one epoch on images of mixed sizes, cropped to 32x64 with reflected padding."""
    config = tiny_config(data_dir, save_dir, epochs=1)
    config["augmentation"]["args"] = {"height": 32, "width": 64, "pad_mode": "reflect"}
    config["data_loader"]["args"].update(validation_split=0.5, **data_args)
    return config


@pytest.fixture
def make_config(demo_dir, tmp_path):
    """``make_config(**trainer_options)`` -> a tiny config saving under this test's tmp_path."""

    def make(**trainer):
        return tiny_config(demo_dir, tmp_path / "saved", **trainer)

    return make
