"""A trained run for the report tests, trained once per session whichever test module asks first."""

from pathlib import Path

import pytest
from conftest import tiny_config

from sever import experiment

CLASS_NAMES = ["pits", "inclusion", "scratches", "patches"]
_TRAINED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def trained(demo_dir, tmp_path_factory) -> Path:
    """A run trained for two short epochs with TensorBoard on: training wrote its report."""
    if not _TRAINED:
        config = tiny_config(demo_dir, tmp_path_factory.mktemp("report-runs"), tensorboard=True,
                             max_steps_per_epoch=2, report_images=16)
        _TRAINED["run"] = experiment.train({**config, "class_names": CLASS_NAMES}).root
    return _TRAINED["run"]
