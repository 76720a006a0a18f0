"""Shared fixtures.

Real data lives in ``../shared/data`` beside the checkout (or where
``SEVER_SHARED_DATA`` points); tests that need it skip when it is absent.
"""

import os
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
        pytest.skip(f"shared data not found at {path}")
    return path


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
        "trainer": {"epochs": 2, "save_period": 1, "tensorboard": False, **trainer},
    }


@pytest.fixture
def make_config(demo_dir, tmp_path):
    """``make_config(**trainer_options)`` -> a tiny config saving under this test's tmp_path."""

    def make(**trainer):
        return tiny_config(demo_dir, tmp_path / "saved", **trainer)

    return make
