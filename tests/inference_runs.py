"""Run folders for the inference tests, written without training (the weights are freshly initialised).

Each is a real sever run folder: ``<root>/<name>/<stamp>/checkpoints/model_best.pth`` holding
``state_dict``, the validated ``config`` and ``epoch``, as the trainer writes them.
"""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config

from sever import experiment
from sever.cli.app import cli
from sever.model.model import build_model
from sever.utils.checkpoint import atomic_torch_save
from sever.utils.run import RunPaths

UNET = {"type": "Unet", "args": {"encoder_name": "resnet18", "encoder_weights": None,
                                  "decoder_args": {"decoder_channels": [32, 16, 16, 8, 8]}}}
CLASSIFIER = {"type": "Classifier", "args": {"encoder_name": "resnet18", "encoder_weights": None}}


def make_run(root: Path, data_dir: Path, name: str, seed: int = 0, **changes) -> Path:
    """Write a run folder for ``tiny_config`` with ``changes`` (top-level keys) and random weights."""
    config = experiment.prepare_config({**tiny_config(data_dir, root), "name": name, **changes})
    torch.manual_seed(seed)
    model = build_model(config["arch"], config["classes"])
    run = RunPaths.create(root, name)
    atomic_torch_save({"state_dict": model.state_dict(), "config": config, "epoch": 1}, run.best)
    return run.root


def classifier_changes() -> dict:
    return {"task": "classification", "arch": CLASSIFIER, "loss": "BCELoss", "metrics": ["Accuracy"]}


_RUNS: dict[str, Path] = {}  # written once per session, whichever test module asks first


@pytest.fixture(scope="session")
def runs(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """Run folders: ``fpn`` and ``unet`` (4 classes), ``three`` (3 classes), ``classifier``."""
    if not _RUNS:
        root = tmp_path_factory.mktemp("runs")
        _RUNS.update(
            fpn=make_run(root, demo_dir, "fpn", seed=1),
            unet=make_run(root, demo_dir, "unet", seed=2, arch=UNET),
            three=make_run(root, demo_dir, "three", seed=3, classes=3),
            classifier=make_run(root, demo_dir, "classifier", seed=4, **classifier_changes()),
        )
    return _RUNS


def invoke(*args):
    """Run the CLI; returns the click Result (exceptions other than SystemExit propagate)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
