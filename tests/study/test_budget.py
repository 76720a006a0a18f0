"""A study's trainer.time_budget, shared between the folds still to train (the clock is injected)."""

import sys

import pytest
import yaml

from sever.study import folder, folds
from sever.study import train as study
from sever.study.folder import BudgetSpent, StudyPaths

FOLD_SECONDS = 150.0  # what each fold "takes" on the injected clock


@pytest.fixture
def clock(monkeypatch):
    """The clock moves on by FOLD_SECONDS each time a fold reads it (when it starts and when it ends); the
    deadlines polled in between (its tuning, its out-of-fold maps) read the time as it is."""
    now = [-FOLD_SECONDS]

    def read() -> float:
        if sys._getframe(1).f_code.co_name == "train_share":  # a fold (or final model) starting or ending
            now[0] += FOLD_SECONDS
        return now[0]

    monkeypatch.setattr(folder, "CLOCK", read)


def fold_budgets(paths: StudyPaths) -> list:
    """Each trained fold's trainer.time_budget, as its run folder's config.yaml records it."""
    return [yaml.safe_load((paths.fold_dir(k) / "config.yaml").read_text())["trainer"]["time_budget"]
            for k in range(paths.folds) if (paths.fold_dir(k) / "config.yaml").is_file()]


@pytest.mark.slow
def test_each_fold_gets_its_share_of_what_is_left(make_config, clock):
    paths = study.train_study(make_config(epochs=1, time_budget="10m", tune_postprocess=False), folds=3)
    # 600 s over 3 folds; each took 150 s, so the next ones share the savings
    assert fold_budgets(paths) == ["200s", "225s", "300s"]
    assert paths.spent() == 3 * FOLD_SECONDS


@pytest.mark.slow
def test_later_folds_train_for_their_share_less_the_overhead_measured_on_the_folds_before(make_config, clock):
    paths = study.train_study(make_config(epochs=1, time_budget="6m", tune_postprocess=False), folds=3)
    # fold 0: 120 s of 360, took 150 (30 s overhead); fold 1: 105 s left each, less 30; it took 150 (75 s
    # overhead); fold 2: the 60 s left, less the mean overhead 52.5
    assert fold_budgets(paths) == ["120s", "75s", "7.5s"]
    assert paths.overhead() == pytest.approx((30 + 75 + 142.5) / 3)


@pytest.mark.slow
def test_an_expected_overhead_comes_out_of_the_first_fold_until_one_is_measured(make_config, clock):
    paths = study.train_study(make_config(epochs=1, time_budget="6m", tune_postprocess=False), folds=3,
                              expected_overhead=40)
    # fold 0: 120 s of 360 less the 40 expected; it took 150 (70 s over its 80); fold 1: 105 s left each,
    # less the 70 measured; it took 150 (115 s over); fold 2: the 60 s left, less the mean 92.5: 1 s at least
    assert fold_budgets(paths) == ["80s", "35s", "1s"]
    assert paths.overhead() == pytest.approx((70 + 115 + 149) / 3)


@pytest.mark.slow
def test_a_resumed_study_gives_the_remaining_folds_the_remaining_time(make_config, clock):
    first = study.train_study(make_config(epochs=1, time_budget="10m", tune_postprocess=False), folds=3, only=0)
    assert fold_budgets(first) == ["200s"] and first.spent() == FOLD_SECONDS
    study.resume_study(first.root)
    assert fold_budgets(first) == ["200s", "225s", "300s"]


@pytest.mark.slow
def test_a_new_budget_on_resume_is_shared_anew(make_config, clock):
    first = study.train_study(make_config(epochs=1, time_budget="10m", tune_postprocess=False), folds=3, only=0)
    study.resume_study(first.root, overrides=["trainer.time_budget=20m"])
    assert fold_budgets(first)[1:] == ["525s", "900s"]  # (1200 - 150) / 2, then (1200 - 300) / 1


def ledger(tmp_path, seconds, slots=1, folds=4):
    paths = StudyPaths(tmp_path)
    paths.initialise(folds)
    paths.set_budget(seconds, slots)
    return paths


def test_parallel_slots_each_get_a_share_and_a_finished_fold_returns_its_saving(tmp_path):
    paths = ledger(tmp_path, 600, slots=2)
    keys = [f"round0/fold{k}" for k in range(4)]
    assert paths.reserve(keys[0], keys) == 300  # 1200 slot-seconds over 4 folds
    assert paths.reserve(keys[1], keys[1:]) == 300  # fold 0 holds 300 while it trains
    paths.charge(keys[0], 100)
    assert paths.reserve(keys[2], keys[2:]) == 400  # (1200 - 100 spent - 300 held by fold 1) / 2


def test_an_interrupted_fold_gets_its_share_plus_what_its_run_already_counted(tmp_path):
    paths = ledger(tmp_path, 600, folds=2)
    keys = ["round0/fold0", "round0/fold1"]
    paths.reserve(keys[0], keys)
    paths.charge(keys[0], 100)  # interrupted after 100 s; the run's own clock says 100 s too
    assert paths.reserve(keys[0], keys) == 250 + 100


def test_later_rounds_count_among_the_folds_still_to_train(tmp_path):
    paths = StudyPaths(tmp_path)
    paths.initialise(2, rounds=1)
    paths.set_budget(800, 1)
    assert folds.still_to_train(paths.at_round(0)) == ["round0/fold0", "round0/fold1", "round1/fold0", "round1/fold1"]
    assert folds.share_overrides(paths.at_round(0), "round0/fold0", "fold 0 of round 0", ["a=1"]) == ["a=1", "trainer.time_budget=200s"]


def test_a_spent_budget_stops_the_study_naming_the_fold(tmp_path):
    paths = ledger(tmp_path, 100, folds=2)
    paths.charge("round0/fold0", 150)
    with pytest.raises(BudgetSpent, match="time_budget is spent .* fold 1 of round 0 still to train"):
        folds.share_overrides(paths.at_round(0), "round0/fold1", "fold 1 of round 0", [])


def test_a_study_without_budget_leaves_the_overrides_alone(tmp_path):
    paths = StudyPaths(tmp_path)
    paths.initialise(2)
    assert folds.share_overrides(paths.at_round(0), "round0/fold0", "fold 0 of round 0", ["a=1"]) == ["a=1"]


def test_a_study_on_a_machine_3x_slower_than_planned_still_ends_by_its_budget(make_config, monkeypatch):
    """Planned: 40 s of overhead a fold; the machine then runs 3x slower, so each fold's set-up, tuning,
    report and out-of-fold maps take 120 s. Each fold's run keeps its own training budget (its clock
    holds it); the ledger must give the later folds their share less the overhead measured, so the
    study ends within its budget and the last fold still trains as long as the one before."""
    now = [0.0]
    monkeypatch.setattr(folder, "CLOCK", lambda: now[0])
    trained = []

    def run_on_a_slow_machine(config, overrides, run_dir=None, deadline=None):
        seconds = folds._given_budget(overrides)
        trained.append(seconds)
        now[0] += seconds + 3 * 40.0 - 30.0  # its training, then all its overhead but the out-of-fold maps
        return None

    def out_of_fold_maps(study, fold, deadline=None):
        now[0] += 30.0

    monkeypatch.setattr(folds.experiment, "train", run_on_a_slow_machine)
    monkeypatch.setattr(folds, "write_oof", out_of_fold_maps)
    paths = study.train_study(make_config(epochs=1, time_budget="10m", tune_postprocess=False), folds=3,
                              expected_overhead=40, tuning_reserve=90)
    assert paths.spent() == pytest.approx(now[0]) and now[0] <= 600 * 1.05
    assert trained == pytest.approx([160, 40, 40])  # the last fold is not starved by the slowdown
    assert paths.overhead() == pytest.approx(120)
    assert paths.tuning_deadline().left() == pytest.approx(90)  # the reserve is left for the tuning
