"""trainer.time_budget: validated durations, the run stops at the budget, the schedule ends with it, resume."""

import logging

import pytest
import torch

from sever import experiment
from sever.exceptions import ConfigError
from sever.model.scheduler import FlatCosineAnnealing, set_horizon
from sever.trainer import budget as budget_module
from sever.trainer.budget import TimeBudget
from sever.utils.checkpoint import load_checkpoint
from sever.utils.config import parse_duration
from sever.utils.run import RunPaths
from sever.utils.time_budget import spread_order


@pytest.mark.parametrize("text, seconds", [("2h30m", 9000), ("45m", 2700), ("90s", 90), ("1.5h", 5400),
                                           ("1h0m30s", 3630)])
def test_durations_are_read_in_seconds(text, seconds):
    assert parse_duration(text, "trainer.time_budget") == seconds


@pytest.mark.parametrize("value", ["90", 90, "soon", "2h30", "0s", "", "m"])
def test_anything_but_a_duration_is_refused_naming_the_key(make_config, value):
    with pytest.raises(ConfigError, match="trainer.time_budget"):
        experiment.prepare_config(make_config(time_budget=value))


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(budget_module, "time", fake)
    return fake


def test_the_plan_counts_the_time_spent_before_a_resume(clock):
    budget = TimeBudget(3600)
    budget.load({"seconds": 3600, "spent": 10.0, "durations": [5.0], "passes": [4.0], "final_epoch": None})
    budget.start()
    clock.now = 4.0
    budget.end_pass()
    assert budget.plan(2) == 2 + 717  # 3600 - 14 - 1 s left: 717 epochs of 5 s (4-s passes, 1-s tails)
    budget.load({"seconds": 3600, "spent": 3596.0, "durations": [5.0], "passes": [4.0], "final_epoch": None})
    assert budget.plan(2) == 2  # 3600 - 3596 - 4 s of this session: no other epoch, not even a short one
    budget.load({"seconds": 60, "spent": 30.0, "durations": [5.0], "passes": [4.0], "final_epoch": 4})
    assert budget.final_epoch is None  # resumed with another budget: the end is planned anew


def test_time_too_short_for_a_whole_epoch_buys_a_shorter_one_when_a_quarter_pass_fits(clock):
    budget = TimeBudget(100)
    budget.start()
    clock.now = 30.0  # epoch 1: a 30-s pass ...
    budget.end_pass()
    clock.now = 35.0  # ... and a 5-s tail
    budget.end_epoch()
    assert budget.tail == 5.0
    clock.now = 65.0
    budget.end_pass()
    assert budget.plan(2) == 3  # 30 s left beside epoch 2's tail: no 35-s epoch, but 25 s of pass
    assert budget.horizon(2) == pytest.approx(2 + 25 / 30)  # where a per-step schedule ends
    clock.now = 94.0
    assert not budget.pass_over()
    clock.now = 95.0
    assert budget.pass_over()  # only the 5-s tail left
    late = TimeBudget(100)
    late.load({"seconds": 100, "spent": 0.0, "durations": [35.0], "passes": [30.0], "final_epoch": None})
    late.start()
    clock.now += 83.0
    late.end_pass()
    assert late.plan(2) == 2  # 12 s left: 7 s of pass beside the tail, under a quarter of 30 s
    assert late.horizon(2) == 2.0


def test_sub_second_epochs_and_a_spare_of_exactly_a_quarter_pass(clock):
    quick = TimeBudget(1.0)
    quick.start()
    clock.now = 0.125
    quick.end_pass()
    assert quick.plan(1) == 1 + 7  # 0.875 s left: 7 more epochs of 0.125 s, nothing spare
    exact = TimeBudget(18.0)
    exact.start()
    clock.now += 8.0
    exact.end_pass()
    assert exact.plan(1) == 3  # 10 s left: one 8-s epoch, and 2 s spare: a quarter of a pass, enough


def test_a_budget_cut_short_by_a_checkpoint_of_an_older_version_learns_its_tail_again(clock):
    budget = TimeBudget(100)
    budget.load({"seconds": 100, "spent": 20.0, "durations": [10.0, 10.0], "final_epoch": None})
    assert (budget.durations, budget.passes, budget.tail) == ([], [], 0.0)
    assert budget.spent == 20.0


def test_a_re_laid_schedule_ends_at_its_new_horizon_and_resumes_exactly():
    def schedule():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return optimizer, FlatCosineAnnealing(optimizer, start_anneal=4, n_epochs=20, eta_min=0.01)

    optimizer, scheduler = schedule()
    optimizer.step()
    scheduler.step()
    assert set_horizon(scheduler, 5)
    assert (scheduler.start_anneal, scheduler.n_epochs) == (1, 5)  # the flat part keeps its fifth
    saved = scheduler.state_dict()
    for _ in range(4):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    resumed_optimizer, resumed = schedule()
    resumed.load_state_dict(saved)
    for _ in range(4):
        resumed.step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert not set_horizon(torch.optim.lr_scheduler.StepLR(optimizer, 3), 5)  # keeps its own counts


@pytest.mark.slow
def test_a_budget_stops_a_long_run_ends_its_schedule_and_survives_resume(make_config, caplog):
    config = make_config(epochs=50, time_budget="1s", max_steps_per_epoch=1, val_period=100)
    config["lr_scheduler"] = {"type": "FlatCosineAnnealing", "args": {"start_anneal": 10, "n_epochs": 50}}
    with caplog.at_level(logging.INFO, logger="sever"):
        run = experiment.train(config)
    state = load_checkpoint(run.last)
    assert state["epoch"] == state["time_budget"]["final_epoch"] < 50  # stopped by the budget
    assert state["lr_scheduler"]["n_epochs"] == state["epoch"]  # the schedule was laid over the budget
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.0, 0.0]  # and has reached its end
    assert "val_dice_mean" in caplog.text  # the last epoch is validated despite val_period
    assert (run.root / "postprocess.yml").is_file()  # and the finished run tuned itself
    spent = state["time_budget"]["spent"]

    (run.root / "postprocess.yml").unlink()
    experiment.resume(run.root)  # the budget is spent: nothing more to train, but the resumed run still tunes
    resumed = load_checkpoint(run.last)
    assert resumed["epoch"] == state["epoch"] and (run.root / "postprocess.yml").is_file()

    # Another budget, smaller than the time already spent (which still counts): planned anew, the
    # session's first epoch runs and is the last.
    experiment.resume(run.root, [f"trainer.time_budget={spent / 2:.3f}s"])
    longer = load_checkpoint(RunPaths(run.root).last)
    assert longer["epoch"] == state["epoch"] + 1
    assert longer["time_budget"]["spent"] > spent
    assert len(longer["time_budget"]["durations"]) == len(state["time_budget"]["durations"]) + 1
    assert len(longer["time_budget"]["passes"]) == len(longer["time_budget"]["durations"])


# ----------------------------------------------------------------------------- validation inside the budget


def test_validation_expected_from_the_measured_one_scaled_to_the_machine_now(clock):
    budget = TimeBudget(1000)
    budget.valid_images = 6
    budget.start()
    clock.now = 10.0
    budget.end_pass(5)  # 2 s a batch
    budget.begin_validation()
    clock.now = 70.0
    budget.end_validation(6)  # 10 s an image
    clock.now = 71.0
    budget.end_epoch()  # 1 s of checkpoint
    assert budget.expected_validation(6) == 60.0 and budget.rest_of_tail == pytest.approx(1.0)
    clock.now = 101.0
    budget.end_pass(5)  # 6 s a batch: the machine is 3x slower now
    assert budget.expected_validation(6) == pytest.approx(180.0)
    assert budget.tail == pytest.approx(181.0)
    assert budget.validation_stride(6) == 1  # 898 s left
    clock.now = 900.0  # 99 s left, 1 s of it the checkpoint's: 180 s of validation fit one image in 2
    assert budget.validation_stride(6) == 2
    clock.now = 999.0
    assert budget.validation_stride(6) == 6  # one image at least
    budget.end_epoch()
    saved = budget.state()  # what the checkpoint keeps
    resumed = TimeBudget(1000)
    resumed.load(saved)
    assert resumed.expected_validation(6) == pytest.approx(180.0)


@pytest.fixture
def one_image_batches(make_config):
    """A tiny config with a 100-s budget validating one image a batch (6 images), so a cut shows which."""

    def make(**trainer):
        config = make_config(time_budget="100s", **trainer)
        config["data_loader"]["args"]["valid_batch_size"] = 1
        return config

    return make


def built_trainer(config, root):
    prepared = experiment.prepare_config(config)
    return experiment.make_trainer(experiment.build_experiment(prepared), RunPaths(root))


def scored_images(monkeypatch, trainer) -> list:
    """The validation dataset's indices as the trainer reads them (the loaders run in this process)."""
    dataset = trainer.valid_loader.dataset
    read = []
    original = type(dataset).__getitem__

    def recording(self, index):
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(type(dataset), "__getitem__", recording)
    return read


@pytest.mark.slow
def test_a_validation_that_would_overrun_scores_an_even_subset_and_says_so(one_image_batches, tmp_path, clock,
                                                                            monkeypatch, caplog):
    trainer = built_trainer(one_image_batches(), tmp_path / "run")
    budget = trainer.budget
    budget.start()
    clock.now = 10.0
    budget.end_pass(5)
    budget.validation = (10.0, 2.0)  # epoch 1's validation took 10 s an image, at 2 s a training batch
    clock.now = 80.0  # 20 s left: the 60 s of a whole validation fit one image in 3
    order = [index for batch in trainer.valid_loader.batch_sampler for index in batch]
    read = scored_images(monkeypatch, trainer)
    with caplog.at_level(logging.INFO, logger="sever"):
        log = trainer._valid_epoch(2)
    assert sorted(read) == [order[0], order[3]]
    assert "validation on 2 of 6 images (1 image in 3): the time budget ends" in caplog.text
    assert "val_dice_mean" in log


class Ticking(Clock):
    """A clock one second further on at every reading."""

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.slow
def test_validation_stops_at_the_deadline_having_scored_an_even_spread(one_image_batches, tmp_path, monkeypatch,
                                                                       caplog):
    trainer = built_trainer(one_image_batches(), tmp_path / "run")
    ticking = Ticking()
    monkeypatch.setattr(budget_module, "time", ticking)
    trainer.budget.start()
    ticking.now = 95.0  # no validation measured yet: it runs until the deadline cuts it
    batches = list(trainer.valid_loader.batch_sampler)
    read = scored_images(monkeypatch, trainer)
    with caplog.at_level(logging.INFO, logger="sever"):
        trainer._valid_epoch(1)
    done = len(read)
    assert 0 < done < 6
    assert read == [batches[i][0] for i in spread_order(6)[:done]]  # every 4th, then the gaps halved
    assert f"validation on {done} of 6 images: the time budget ends" in caplog.text
    assert trainer.budget.validation[0] > 0  # the cut validation was timed


@pytest.mark.slow
def test_no_epoch_starts_when_the_validation_measured_before_would_not_fit(one_image_batches, clock, monkeypatch,
                                                                          caplog):
    trainer_class = experiment.TRAINERS.get("SegmentationTrainer", "task")
    train_step, valid_forward = trainer_class._train_step, trainer_class._valid_forward

    def slow_step(self, images, *args):  # 1 s a batch of training ...
        clock.now += 1.0
        return train_step(self, images, *args)

    def slow_validation(self, model, images, targets):  # ... and 10 s an image of validation
        clock.now += 10.0 * len(images)
        return valid_forward(self, model, images, targets)

    monkeypatch.setattr(trainer_class, "_train_step", slow_step)
    monkeypatch.setattr(trainer_class, "_valid_forward", slow_validation)
    with caplog.at_level(logging.INFO, logger="sever"):
        run = experiment.train(one_image_batches(epochs=10))
    state = load_checkpoint(run.last)
    assert state["epoch"] == 1  # epoch 2 would have ended after 100 s: its 60-s validation no longer fit
    assert "epoch 2 would not finish with its validation (about 60 s expected, 36 s left)" in caplog.text
    assert state["time_budget"]["final_epoch"] == 1  # a resume does not train on
    assert state["time_budget"]["spent"] <= 100.0


def test_a_first_pass_leaves_a_share_of_itself_for_its_unmeasured_tail(clock):
    budget = TimeBudget(110)
    budget.start()
    clock.now = 99.0
    assert not budget.pass_over()
    clock.now = 100.0  # 10 s left: a tenth of the 100-s pass so far, for the first validation and checkpoint
    assert budget.pass_over()
