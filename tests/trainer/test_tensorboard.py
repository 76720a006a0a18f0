"""What a run shows in TensorBoard, read back from its event files."""

import logging
import math
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from sever import experiment
from sever.utils.checkpoint import load_checkpoint

NAMES = ["pits", "inclusions", "scratches", "patches"]


@pytest.fixture(scope="module")
def trained(demo_dir, module_tmp):
    """A three-epoch run with class names whose learning rate changes every epoch."""
    from conftest import tiny_config

    config = tiny_config(demo_dir, module_tmp("saved"), epochs=3, tensorboard=True, log_step=1)
    config["class_names"] = NAMES
    logger = logging.getLogger("sever")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        run = experiment.train(config)
    finally:
        logger.removeHandler(handler)
    events = EventAccumulator(str(run.tensorboard), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return run, events, [record.getMessage() for record in records]


def scalars(events, tag):
    return {event.step: event.value for event in events.Scalars(tag)}


@pytest.mark.slow
def test_the_learning_rate_of_an_epoch_is_the_one_its_steps_used(trained):
    _, events, _ = trained
    per_epoch = scalars(events, "lr/encoder")
    per_step = scalars(events, "batch/lr_encoder")
    steps_per_epoch = len(per_step) // 3
    assert per_epoch[1] == pytest.approx(1e-3)  # the configured rate trains epoch 1
    assert per_epoch[3] < per_epoch[2]  # flat for an epoch, then annealed
    for epoch, lr in per_epoch.items():
        used = {per_step[step] for step in per_step if (step // steps_per_epoch) + 1 == epoch}
        assert used == {lr}, epoch  # both stored as float32


@pytest.mark.slow
def test_a_per_step_schedule_shows_its_rate_falling_at_every_step(demo_dir, tmp_path):
    from conftest import tiny_config

    config = tiny_config(demo_dir, tmp_path / "saved", epochs=2, tensorboard=True, log_step=1)
    config["lr_scheduler"] = {"type": "FlatCosineAnnealing",
                              "args": {"start_anneal": 0, "n_epochs": 2, "per_step": True}}
    run = experiment.train(config)
    events = EventAccumulator(str(run.tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    per_step = scalars(events, "batch/lr_encoder")
    steps = sorted(per_step)
    assert len(steps) >= 4 and steps == list(range(len(steps)))
    # one cosine over both epochs' steps: the rate falls within each epoch too, towards 0
    expected = [1e-3 * (1 + math.cos(math.pi * step / len(steps))) / 2 for step in steps]
    assert [per_step[step] for step in steps] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_per_class_tags_use_the_class_names(trained):
    _, events, _ = trained
    tags = set(events.Tags()["scalars"])
    assert {f"epoch/val_dice_{name}" for name in NAMES} <= tags
    assert "epoch/val_dice_mean" in tags
    assert not any(tag.startswith("epoch/val_dice_") and tag[-1].isdigit() for tag in tags)


@pytest.mark.slow
def test_hparams_hold_the_flattened_config_and_the_best_monitored_value(trained):
    run, events, _ = trained
    content = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["hparam/best_val_dice_mean"]
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.encoder.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["trainer.epochs"].number_value == 3
    assert start.hparams["arch.args.encoder_name"].string_value == "resnet18"
    best = scalars(events, "hparam/best_val_dice_mean")
    state = load_checkpoint(run.last)
    assert best[max(best)] == pytest.approx(state["monitor_best"])
    assert best[state["best_epoch"]] == pytest.approx(state["monitor_best"])


@pytest.mark.slow
def test_the_config_is_shown_as_text(trained):
    _, events, _ = trained
    (text,) = events.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert "    name: tiny" in shown and "    class_names:" in shown


@pytest.mark.slow
def test_training_ends_with_the_best_score_its_epoch_and_an_eta_per_epoch(trained):
    run, _, messages = trained
    state = load_checkpoint(run.last)
    assert f"finished: best val_dice_mean {state['monitor_best']:.5f} at epoch {state['best_epoch']} " \
           f"(model_best.pth); run folder {run.root}" in messages
    epoch_lines = [message for message in messages if re.match(r"epoch \d+/\d+  ", message)]  # not progress lines
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    assert all("(run ETA " in line for line in epoch_lines[:2]) and "ETA" not in epoch_lines[2]


def test_only_families_numbered_by_class_take_the_class_names():
    from types import SimpleNamespace

    from sever.trainer.base import BaseTrainer

    trainer = SimpleNamespace(config={"class_names": ["a", "b"]})
    keys = ["val_ap_0", "val_ap_1", "val_mar_1", "val_mar_10", "val_map_50", "val_dice_mean"]
    assert BaseTrainer._tags(trainer, keys) == {"val_ap_0": "val_ap_a", "val_ap_1": "val_ap_b",
                                               "val_mar_1": "val_mar_1", "val_mar_10": "val_mar_10",
                                               "val_map_50": "val_map_50", "val_dice_mean": "val_dice_mean"}
    assert BaseTrainer._tags(SimpleNamespace(config={"class_names": None}), ["val_ap_0"]) == {"val_ap_0": "val_ap_0"}
