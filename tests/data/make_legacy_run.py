"""Write ``tests/data/legacy_run/``: a run folder made by sever before the issue-13 restructure.

Made once at commit 9f6af5e with::

    PYTHONPATH=$PWD python tests/data/make_legacy_run.py

and kept as it came out, so ``tests/test_legacy_checkpoint.py`` can prove that later code still
loads, predicts with and resumes a checkpoint written by old code. Running it again with newer
code would defeat that purpose: only regenerate it when the checkpoint format changes on purpose.

The network is the smallest sever can build (smp's smallest encoder, mobilenet_v2, 2.2 M
parameters, and an 8-16 channel Unet decoder); plain SGD keeps no optimiser state, so
``last.pth`` is about the size of the weights (``model_best.pth`` is the same file, linked).
``legacy_probs/`` holds what ``sever predict --save-probs`` wrote for the demo test images
(``make_demo_data(..., n_train=8, n_test=2, height=64, width=256, seed=3)``) with that code.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from sever import experiment
from sever.cli.app import cli
from sever.data_loader.demo import make_demo_data

HERE = Path(__file__).resolve().parent
DEMO = {"n_train": 8, "n_test": 2, "height": 64, "width": 256, "seed": 3}


def legacy_config(data_dir: Path, save_dir: Path) -> dict:
    return {
        "name": "legacy", "save_dir": str(save_dir), "seed": 7, "device": "cpu", "classes": 4,
        "arch": {"type": "Unet", "args": {"encoder_name": "mobilenet_v2", "encoder_weights": None,
                                           "decoder_args": {"decoder_channels": [16, 8, 8, 8, 8]}}},
        "data_loader": {"type": "SteelDataLoader",
                        "args": {"data_dir": str(data_dir), "batch_size": 4, "validation_split": 0.25,
                                 "num_workers": 0}},
        "augmentation": {"type": "HeavyCropTransforms", "args": {"height": 64, "width": 64}},
        "loss": {"type": "BCEDiceLoss", "args": {"bce_weight": 0.6, "dice_weight": 0.4}},
        "metrics": ["Dice"],
        "optimizer": {"type": "SGD", "args": {"lr": 0.01}},
        "lr_scheduler": None,
        "trainer": {"epochs": 1, "save_period": 0, "tensorboard": False},
    }


if __name__ == "__main__":
    work = Path(tempfile.mkdtemp())
    data = make_demo_data(work / "demo", **DEMO)
    run = experiment.train(legacy_config(data, work / "saved"))
    shutil.copytree(run.root, HERE / "legacy_run", copy_function=shutil.copy2)
    result = CliRunner().invoke(cli, ["predict", "-m", str(HERE / "legacy_run"), "-i", str(data / "test_images"),
                                      "-o", str(work / "submission.csv"), "--device", "cpu", "--num-workers", "0",
                                      "--save-probs", str(HERE / "legacy_probs")])
    sys.exit(result.exit_code)
