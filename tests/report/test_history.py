"""A run's history for the report: per-epoch values and learning rates read back from TensorBoard event files
written here with the writer training uses, from ``train.log`` lines when TensorBoard was off, and the notes the
page shows for what is missing or damaged."""

import math

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from sever.report.history import read_history, truncated
from sever.utils.run import RunPaths

LOSSES = {1: 0.9, 2: 0.6, 3: 0.45}
DICE = {1: 0.2, 2: 0.35, 3: float("nan")}  # a non-finite value is left out of the curves
RATES = {1: 1e-3, 2: 5e-4, 3: 2.5e-4}


def write_events(run: RunPaths, validation: bool = True) -> None:
    """The tags training writes: ``epoch/<key>`` per epoch and ``lr/<group>`` per parameter group."""
    with SummaryWriter(str(run.tensorboard)) as writer:
        for epoch in LOSSES:
            writer.add_scalar("epoch/train_loss", LOSSES[epoch], epoch)
            if validation:
                writer.add_scalar("epoch/val_dice_0", DICE[epoch], epoch)
            writer.add_scalar("lr/encoder", RATES[epoch], epoch)


@pytest.fixture
def run(tmp_path) -> RunPaths:
    return RunPaths.create(tmp_path, "history")


def test_values_and_rates_come_from_the_event_files_by_epoch(run):
    write_events(run)
    history = read_history(run)
    assert history.source == "TensorBoard events in runs/" and history.notes == []
    epochs, losses = history.series("train_loss")
    assert epochs == [1, 2, 3] and losses == pytest.approx([LOSSES[e] for e in epochs])
    assert history.series("val_dice_0") == ([1, 2], pytest.approx([0.2, 0.35]))
    assert history.lr == {"encoder": pytest.approx(RATES)}
    assert history.keys("val_") == ["val_dice_0"] and history.has_validation
    assert history.series("never_logged") == ([], [])


def test_without_events_the_values_come_from_train_log_and_the_rate_is_said_missing(run):
    run.log_file.write_text(
        "2026-12-07 10:00:00,000 - sever.trainer.base - INFO - training starts\n"
        "2026-12-07 10:00:01,000 - sever.trainer.base - INFO - epoch 1/3  train_loss 0.9000  val_dice_0 0.2000"
        "  (run ETA 0:00:02)\n"
        "2026-12-07 10:00:02,000 - sever.trainer.base - INFO - epoch 2/3  train_loss 0.6000  val_dice_0 nan"
        "  (run ETA 0:00:01)\n"
        "2026-12-07 10:00:03,000 - sever.trainer.base - INFO - epoch 2/3  train_loss 0.5500  val_dice_0 0.3000\n",
        encoding="utf-8")
    history = read_history(run)
    assert history.source == "train.log"
    # epoch 2 logged twice (a resumed run): the last line wins; its earlier nan would have been left out
    assert history.values == {"train_loss": {1: 0.9, 2: 0.55}, "val_dice_0": {1: 0.2, 2: 0.3}}
    assert history.lr == {}
    assert [note for note in history.notes if "learning rate was not recorded" in note]


def test_a_run_that_logged_no_epoch_or_no_validation_says_so(run):
    history = read_history(run)
    assert history.values == {} and history.source == "nothing"
    assert len(history.notes) == 1 and "no epoch was logged yet" in history.notes[0]
    write_events(run, validation=False)
    history = read_history(run)
    assert not history.has_validation
    assert len(history.notes) == 1 and "no validation has run yet" in history.notes[0]


def test_an_event_file_cut_inside_a_record_is_found_and_its_complete_values_are_kept(run):
    write_events(run)
    (events,) = run.tensorboard.glob("events.out.tfevents.*")
    assert not truncated(events)
    whole = events.read_bytes()
    events.write_bytes(whole[:-5])  # the last record (lr/encoder at epoch 3) loses its tail
    assert truncated(events)
    history = read_history(run)
    assert len(history.notes) == 1 and events.name in history.notes[0] and "truncated" in history.notes[0]
    assert history.series("train_loss")[0] == [1, 2, 3]
    assert sorted(history.lr["encoder"]) == [1, 2]
    assert all(math.isfinite(v) for v in history.series("val_dice_0")[1])


def test_the_scalars_between_large_image_records_are_all_read(run):
    rng = np.random.default_rng(0)
    with SummaryWriter(str(run.tensorboard)) as writer:
        for epoch in LOSSES:
            writer.add_scalar("epoch/train_loss", LOSSES[epoch], epoch)
            grid = rng.integers(0, 256, (2, 128, 256, 3), dtype=np.uint8)  # noise: each image record is long
            writer.add_images("val/truth_above_prediction", grid, epoch, dataformats="NHWC")
            writer.add_scalar("lr/encoder", RATES[epoch], epoch)
    (events,) = run.tensorboard.glob("events.out.tfevents.*")
    assert events.stat().st_size > 3 * 2 * 128 * 256  # the images are in the file, each far over a scalar's length
    history = read_history(run)
    assert history.series("train_loss") == ([1, 2, 3], pytest.approx([LOSSES[e] for e in (1, 2, 3)]))
    assert history.lr == {"encoder": pytest.approx(RATES)}


def test_a_resumed_run_s_event_file_replaces_what_was_logged_from_its_first_epoch_on(run):
    write_events(run)  # epochs 1 to 3, then the run stopped and resumed from its epoch-1 checkpoint
    (first,) = run.tensorboard.glob("events.out.tfevents.*")
    first.rename(run.tensorboard / "events.out.tfevents.1700000000.host.1.0")
    with SummaryWriter(str(run.tensorboard)) as writer:  # the resume's file, named by a later time
        writer.add_scalar("epoch/train_loss", 0.5, 2)
        writer.add_scalar("lr/encoder", 4e-4, 2)
    history = read_history(run)
    assert history.values["train_loss"] == pytest.approx({1: 0.9, 2: 0.5})  # epoch 3 of before the resume is gone
    assert history.values["val_dice_0"] == pytest.approx({1: 0.2})
    assert history.lr == {"encoder": pytest.approx({1: 1e-3, 2: 4e-4})}


def test_scalars_written_new_style_as_tensors_are_read_too(run):
    with SummaryWriter(str(run.tensorboard)) as writer:  # torch's add_scalar(new_style=True): a "scalars" tensor
        for epoch in LOSSES:
            writer.add_scalar("epoch/train_loss", LOSSES[epoch], epoch, new_style=True)
    assert read_history(run).series("train_loss") == ([1, 2, 3], pytest.approx([LOSSES[e] for e in (1, 2, 3)]))
