"""The arithmetic of a time budget (sever/utils/time_budget.py): one place for the reserve, the shares,
the overhead, the epochs that fit."""

import pytest

from sever.exceptions import ConfigError
from sever.utils import time_budget as tb


def test_budgets_are_parsed_with_units_only():
    assert tb.parse_budget("1h30m") == 5400 and tb.parse_budget("90s") == 90 and tb.parse_budget("1.5h") == 5400
    with pytest.raises(ConfigError, match="--time: expected a duration"):
        tb.parse_budget("90")
    with pytest.raises(ConfigError, match="trainer.time_budget"):
        tb.parse_budget("soon", "trainer.time_budget")


def test_a_study_keeps_its_reserve_and_shares_the_rest_a_single_run_keeps_none():
    assert tb.study_training(1000) == pytest.approx(850)
    assert tb.fold_share(1000, 5) == pytest.approx(170)  # (1000 - 15%) / 5
    assert tb.fold_share(1000, 1) == 1000  # a single run: no out-of-fold tuning to reserve for
    assert tb.fold_share(1000, 4, reserve=0.5) == pytest.approx(125)


def test_a_folds_training_is_its_share_less_its_overhead_with_a_floor_only_when_asked():
    assert tb.fold_training(170, 50) == 120
    assert tb.fold_training(30, 50) == -20  # the planner sees a share that cannot pay its overhead
    assert tb.fold_training(30, 50, floor=tb.MIN_FOLD_TRAINING) == 1.0  # a study in training still runs the fold


def test_a_ledger_share_splits_what_is_neither_spent_nor_reserved():
    # 2 slots of 600 s; 300 s spent, another fold in training holds 200 s; 3 folds share the 700 s left
    assert tb.ledger_share(1200, [100, 200], [200], 3) == pytest.approx(700 / 3)
    assert tb.ledger_share(600, [600], [], 2) == 0  # spent


def test_the_overhead_is_the_measured_mean_else_the_expected():
    assert tb.mean_overhead([10, 30]) == 20
    assert tb.mean_overhead([], expected=45) == 45


@pytest.mark.parametrize("left, expected", [
    (100, 10.0),  # ten epochs of 8 s pass + 2 s tail
    (95, 9.375),  # nine epochs, then 3 s of pass beside a tail: 3/8 >= a quarter
    (91, 9.0),  # nine epochs, then 1 s beside a tail: under a quarter of a pass, not worth its validation
    (5, 0.375),  # no whole epoch: 3 s of pass beside its tail
    (3, 0.0),  # 1 s of pass beside its tail: nothing
])
def test_epochs_fitting_counts_a_shorter_last_epoch_only_from_a_useful_share(left, expected):
    assert tb.epochs_fitting(left, 8.0, 2.0) == pytest.approx(expected)


def test_useful_epochs_drop_a_sliver_and_keep_a_share():
    assert tb.useful_epochs(3.1) == (3, 0.0)
    assert tb.useful_epochs(3.4) == (3, pytest.approx(0.4))
    assert tb.useful_epochs(0.6) == (0, pytest.approx(0.6))
    assert tb.useful_epochs(3.1, partial_share=0.05) == (3, pytest.approx(0.1))


def test_a_spread_order_visits_every_index_once_each_prefix_spread_evenly():
    assert tb.spread_order(10, 4) == [0, 4, 8, 2, 6, 1, 5, 9, 3, 7]
    order = tb.spread_order(538)
    assert sorted(order) == list(range(538))
    assert order[:68] == list(range(0, 538, 8))  # cut after an eighth: every 8th image
    assert sorted(order[:269]) == list(range(0, 538, 2))  # after half: every second one


@pytest.mark.parametrize("expected, left, items, stride", [(60, 60, 6, 1), (60, 20, 6, 3), (60, 25, 6, 3),
                                                            (180, 20, 6, 6), (60, -5, 6, 6), (10, 1, 1, 1)])
def test_a_pass_that_would_not_fit_keeps_every_kth_item(expected, left, items, stride):
    assert tb.subset_stride(expected, left, items) == stride


def test_the_slowdown_scales_a_measured_time_and_never_halves_it_more():
    assert tb.slowdown(2.0, 6.0) == 3.0
    assert tb.slowdown(2.0, 0.1) == 0.5
    assert tb.scaled_seconds(10.0, 6, tb.slowdown(2.0, 6.0)) == 180.0
    assert tb.reserve_seconds(85.0) == pytest.approx(15.0)


def test_a_deadline_stops_at_its_time_or_for_any_condition_added():
    now = [0.0]
    deadline = tb.Deadline(10.0, clock=lambda: now[0])
    assert deadline.reason() is None and deadline.left() == 10.0
    stop = []
    deadline.add(lambda: "SIGTERM received" if stop else None)
    stop.append(True)
    assert deadline.reason() == "SIGTERM received"
    now[0] = 10.0
    assert deadline.reason() == tb.BUDGET_ENDS
    assert tb.Deadline().left() == float("inf") and tb.Deadline().reason() is None


@pytest.mark.parametrize("left, per_item, items, fitting", [(10.0, 3.0, 8, 3), (100.0, 3.0, 8, 8), (-1.0, 3.0, 8, 0),
                                                              (5.0, 0.0, 8, 8)])
def test_items_fitting_the_time_left_at_their_measured_cost(left, per_item, items, fitting):
    assert tb.items_fitting(left, per_item, items) == fitting


def test_planning_time_comes_out_of_a_single_run_and_scales_a_study():
    assert tb.after_planning(300.0, total=600.0, left=540.0, shared=False) == 240.0
    assert tb.after_planning(510.0, total=600.0, left=540.0, shared=True) == pytest.approx(459.0)  # keeps 15% reserve
    assert tb.after_planning(30.0, total=600.0, left=500.0, shared=False) == tb.MIN_FOLD_TRAINING
    assert tb.study_left(600.0, 2, [300.0, 500.0], reserve=90.0) == pytest.approx(290.0)


def test_a_pass_until_the_deadline_covers_its_minimum_then_stops_and_says_so(caplog):
    import logging

    now = [0.0]
    deadline = tb.Deadline(1.0, clock=lambda: now[0])
    batches = [[i, i + 1] for i in range(0, 16, 2)]  # 8 batches of 2 of 16 images
    taken = []
    with caplog.at_level(logging.INFO, logger="sever"):
        for batch in tb.until_deadline(batches, deadline, 16, "fold 0: out-of-fold maps", at_least=4):
            taken.append(batch)
            now[0] += 1.0  # the deadline passes with the first batch, but 4 images are due first
    assert taken == batches[:2]
    assert "fold 0: out-of-fold maps on 4 of 16 images: the time budget ends" in caplog.text
    assert list(tb.until_deadline(batches, None, 16, "tuning")) == batches
