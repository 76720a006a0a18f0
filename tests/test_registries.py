"""Registries fill themselves from their locations; tasks are records; checkpoints are read once."""

import subprocess
import sys
import textwrap

import pytest
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever import experiment
from sever.exceptions import ConfigError
from sever.inference import checkpoints
from sever.registries import TASKS, TRAINERS
from sever.tasks import task_of
from sever.utils.registry import Registry


GADGETS = Registry("gadget", locations=["sever_test_plugin"])


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The module ``sever_test_plugin``, on sys.path but not imported, whose import registers ``Gadget``."""
    # This module by the name pytest imported it under (its import mode decides the name).
    (tmp_path / "sever_test_plugin.py").write_text(textwrap.dedent(f"""
        from {__name__} import GADGETS

        @GADGETS.register
        class Gadget:
            def __init__(self, size=1):
                self.size = size
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sever_test_plugin"
    sys.modules.pop("sever_test_plugin", None)


def test_a_location_is_imported_on_the_first_lookup(plugin):
    assert plugin not in sys.modules
    assert GADGETS.build({"type": "Gadget", "args": {"size": 3}}, "gadget").size == 3
    assert plugin in sys.modules and GADGETS.names() == ["Gadget"] and "Gadget" in GADGETS


def test_a_missing_location_fails_loudly_on_every_lookup():
    registry = Registry("gadget", locations=["sever_no_such_module"])
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="sever_no_such_module"):
            registry.names()


def test_every_part_is_found_without_importing_its_module_first():
    """In a fresh interpreter, the registries alone reach the detection parts (no ``__init__`` imports them)."""
    code = ("from sever.registries import ARCHITECTURES, LOSSES, METRICS, DATA_LOADERS, TRANSFORMS, TRAINERS\n"
            "print(*(r.names() for r in (ARCHITECTURES, LOSSES, METRICS, DATA_LOADERS, TRANSFORMS, TRAINERS)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("FasterRCNN", "Unet", "DetectionLoss", "BCEDiceLoss", "MeanAP", "Dice", "VOCDataLoader",
                 "SteelDataLoader", "DetectionTransforms", "DetectionTrainer", "SegmentationTrainer"):
        assert f"'{name}'" in out, name


def test_each_task_names_parts_that_exist():
    for name in TASKS.names():
        task = TASKS.get(name, "task")
        assert TRAINERS.get(task.trainer, "task").__name__ == task.trainer
        for key, part in task.parts.items():
            assert experiment.TASK_PARTS[key].get(part, key)


def test_the_default_metrics_come_from_the_task(make_config):
    config = experiment.prepare_config({**make_config(), "metrics": None})
    assert experiment.metric_specs(config) == list(task_of(config).default_metrics) == ["Dice"]
    with pytest.raises(ConfigError, match="task: 'tracking' is not one of classification, detection, segmentation"):
        experiment.prepare_config({**make_config(), "task": "tracking"})


def test_predict_reads_each_checkpoint_once(runs, demo_dir, tmp_path, monkeypatch):
    reads = []
    real = checkpoints.load_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_checkpoint", counted)
    result = invoke("predict", "-m", runs["fpn"], "-m", runs["unet"], "--classifier", runs["classifier"],
                    "-i", demo_dir / "test_images", "-o", tmp_path / "sub.csv", "--device", "cpu", "--num-workers", 0)
    assert result.exit_code == 0, result.output
    assert reads == ["model_best.pth"] * 3
