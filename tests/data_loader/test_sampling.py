"""Batch samplers: proportions, weights, determinism, resuming, sharding, class groups."""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.demo import make_demo_data
from sever.data_loader.sampling import (
    SAMPLERS,
    SamplerFactory,
    ShuffleBatchSampler,
    WeightedFixedBatchSampler,
    WeightedRandomBatchSampler,
    allocate,
    class_balance_groups,
)
from sever.exceptions import ConfigError, DataError

TRAIN = np.arange(0, 100)
PSEUDO = np.arange(100, 130)


def group_of(index: int) -> int:
    return 0 if index < 100 else 1


def epoch(sampler, number: int = 0, start_batch: int = 0) -> list[list[int]]:
    sampler.set_epoch(number, start_batch)
    return list(sampler)


def make(kind: str, **kwargs):
    args = dict(groups=[TRAIN, PSEUDO], batch_size=16, n_batches=20, weights=[0.88, 0.12], seed=3)
    args.update(kwargs)
    if kind == "shuffle":
        return ShuffleBatchSampler(130, args["batch_size"], seed=args["seed"],
                                   rank=args.get("rank", 0), world_size=args.get("world_size", 1))
    return {"fixed": WeightedFixedBatchSampler, "random": WeightedRandomBatchSampler}[kind](**args)


def test_allocate_is_exact_by_largest_remainder():
    assert allocate(np.array([0.88, 0.12]), 16).tolist() == [14, 2]  # 14.08, 1.92
    assert allocate(np.array([1, 1, 1]) / 3, 16).tolist() == [6, 5, 5]  # tie -> lower index
    assert allocate(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4


def test_fixed_sampler_has_exact_counts_in_every_batch():
    batches = epoch(make("fixed"))
    assert len(batches) == 20
    for batch in batches:
        assert len(batch) == 16
        assert Counter(map(group_of, batch)) == {0: 14, 1: 2}


def test_random_sampler_matches_weights_over_many_batches():
    sampler = make("random", weights=[0.7, 0.3], batch_size=32, n_batches=200)
    drawn = [group_of(i) for batch in epoch(sampler) for i in batch]
    assert all(len(batch) == 32 for batch in epoch(sampler))
    assert abs(np.mean(drawn) - 0.3) < 0.02  # 6400 draws: standard error 0.006
    per_batch = [sum(map(group_of, b)) for b in epoch(sampler)]
    assert len(set(per_batch)) > 3  # proportions vary from batch to batch


@pytest.mark.parametrize(
    "alpha, expected",
    [(0.0, [0.6, 0.3, 0.1]), (0.5, [0.3 + 1 / 6, 0.15 + 1 / 6, 0.05 + 1 / 6]), (1.0, [1 / 3] * 3)],
)
def test_alpha_blends_population_and_uniform(alpha, expected):
    assert np.allclose(SamplerFactory.weights([60, 30, 10], alpha), expected)
    groups = [np.arange(60), np.arange(60, 90), np.arange(90, 100)]
    sampler = SamplerFactory.get(groups, batch_size=10, alpha=alpha)
    assert np.allclose(sampler.weights, expected)
    assert len(sampler) == 10  # one pass over 100 samples


def test_explicit_weights_override_alpha_and_are_normalised():
    sampler = SamplerFactory.get([TRAIN, PSEUDO], 16, alpha=1.0, weights=[44, 6], kind="random")
    assert isinstance(sampler, WeightedRandomBatchSampler)
    assert np.allclose(sampler.weights, [0.88, 0.12])
    assert len(sampler) == 9  # ceil(130 / 16)


def test_pseudo_group_is_undersampled_at_a_low_weight():
    sampler = SamplerFactory.get([TRAIN, PSEUDO], 16, weights=[0.88, 0.12])
    drawn = {i for batch in epoch(sampler) for i in batch}
    assert len(drawn & set(PSEUDO)) == 9 * 2  # 18 of 30 pseudo samples, no repeats


@pytest.mark.parametrize("kind", ["shuffle", "fixed", "random"])
def test_batches_depend_only_on_seed_and_epoch(kind):
    first, second = make(kind), make(kind)
    assert epoch(first, 2) == epoch(second, 2)
    assert epoch(first, 2) != epoch(first, 3)
    assert epoch(first, 2) != epoch(make(kind, seed=4), 2)


@pytest.mark.parametrize("kind", ["shuffle", "fixed", "random"])
def test_start_batch_resumes_with_the_tail_of_the_epoch(kind):
    sampler = make(kind)
    full = epoch(sampler, 5)
    assert epoch(sampler, 5, start_batch=3) == full[3:]
    assert epoch(sampler, 5, start_batch=len(sampler)) == []
    assert len(sampler) == len(full)
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(5, start_batch=len(sampler) + 1)


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_each_group_is_cycled_before_repeating(kind):
    groups = [np.arange(10), np.arange(10, 17)]
    sampler = make(kind, groups=groups, batch_size=4, n_batches=30, weights=[0.5, 0.5])
    batches = epoch(sampler)
    for group in groups:
        drawn = [i for batch in batches for i in batch if i in set(group)]
        passes = [drawn[k : k + len(group)] for k in range(0, len(drawn) - len(group) + 1, len(group))]
        assert len(passes) >= 5
        assert all(sorted(p) == group.tolist() for p in passes)
        assert len({tuple(p) for p in passes}) > 1  # reshuffled when exhausted


def test_each_epoch_starts_a_fresh_pass():
    sampler = make("fixed", groups=[np.arange(10)], weights=[1], batch_size=3, n_batches=2)
    for number in (0, 1):
        drawn = [i for b in epoch(sampler, number) for i in b]
        assert len(set(drawn)) == 6  # 6 draws of a fresh pass over 10: no repeats
    fresh = make("fixed", groups=[np.arange(10)], weights=[1], batch_size=3, n_batches=2)
    assert epoch(fresh, 1) == epoch(sampler, 1) != epoch(sampler, 0)  # no state carried over


def test_shuffle_sampler_passes_and_validation_order():
    sampler = ShuffleBatchSampler(10, 4, drop_last=True, seed=1)
    batches = epoch(sampler)
    assert len(sampler) == 2 and [len(b) for b in batches] == [4, 4]
    assert len({i for b in batches for i in b}) == 8
    ordered = ShuffleBatchSampler(10, 4, drop_last=False, shuffle=False)
    assert epoch(ordered) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_empty_populations_raise_data_error():
    with pytest.raises(DataError, match="empty"):
        ShuffleBatchSampler(0, 4)
    with pytest.raises(DataError, match="no complete batch"):
        ShuffleBatchSampler(3, 4, drop_last=True)
    with pytest.raises(DataError, match=r"group\(s\) \[0\] have weight > 0 but no samples"):
        WeightedFixedBatchSampler([[], PSEUDO], 8, 5, [0.5, 0.5])
    with pytest.raises(DataError, match="no samples"):
        SamplerFactory.get([TRAIN, []], 8, alpha=0.5, kind="random")
    with pytest.raises(DataError, match="empty"):
        SamplerFactory.get([], 8)
    with pytest.raises(DataError, match="every group is empty"):
        SamplerFactory.get([[], []], 8, alpha=0.0)


def test_an_empty_group_with_weight_zero_is_allowed():
    sampler = SamplerFactory.get([TRAIN, []], 8, alpha=0.0)
    assert all(len(b) == 8 for b in epoch(sampler))


def test_invalid_arguments_raise_value_error():
    for kwargs, message in [
        ({"weights": [1.0]}, "1 weights for 2 groups"),
        ({"weights": [-1.0, 2.0]}, "non-negative"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_batches": 0}, "n_batches"),
        ({"seed": -1}, "seed"),
        ({"rank": 2, "world_size": 2}, "rank"),
    ]:
        with pytest.raises(ValueError, match=message):
            make("fixed", **kwargs)
    with pytest.raises(ValueError, match="alpha"):
        SamplerFactory.weights([1, 2], 1.5)


def test_starved_group_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="sever.data_loader.sampling"):
        sampler = make("fixed", weights=[0.99, 0.01], batch_size=8)
    assert sampler.counts.tolist() == [8, 0]
    assert "get no sample" in caplog.text


@pytest.mark.parametrize("kind", ["shuffle", "fixed", "random"])
def test_ranks_take_disjoint_slices_of_the_global_batch(kind):
    single = epoch(make(kind, batch_size=16))
    ranks = [epoch(make(kind, batch_size=8, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for whole, part0, part1 in zip(single, *ranks):
        assert len(part0) == len(part1) == 8
        assert not set(part0) & set(part1)
        assert sorted(part0 + part1) == sorted(whole)
        if kind == "fixed":  # 14 + 2 split evenly between the ranks
            assert Counter(map(group_of, part0)) == Counter(map(group_of, part1)) == {0: 7, 1: 1}


def test_factory_epoch_covers_the_data_once_across_ranks():
    sampler = SamplerFactory.get([TRAIN, PSEUDO], 8, alpha=0.0, world_size=2, rank=1)
    assert len(sampler) == 9  # ceil(130 / 16)


def test_unshuffled_last_batch_is_padded_for_every_rank():
    ranks = [epoch(ShuffleBatchSampler(5, 2, drop_last=False, shuffle=False, rank=r, world_size=2)) for r in (0, 1)]
    assert ranks == [[[0, 2], [4]], [[1, 3], [0]]]


def test_class_balance_groups_uses_the_rarest_present_class():
    has_defect = np.array(
        [
            [1, 0, 1, 0],  # class 0 in 3 images, class 2 in 4 -> 0
            [1, 1, 0, 0],  # class 1 in 1 image -> 1
            [0, 0, 1, 0],  # -> 2
            [0, 0, 0, 0],  # defect-free
            [1, 0, 1, 0],  # -> 0
            [0, 0, 1, 0],  # -> 2
            [0, 0, 0, 0],  # defect-free
        ],
        dtype=bool,
    )
    groups = class_balance_groups(has_defect)
    assert [g.tolist() for g in groups] == [[0, 4], [1], [2, 5], [3, 6]]  # class 3 is empty: dropped


def test_class_balance_groups_breaks_ties_by_class_index():
    groups = class_balance_groups(np.array([[1, 1], [1, 1], [0, 0]]))
    assert [g.tolist() for g in groups] == [[0, 1], [2]]
    with pytest.raises(DataError, match="no images"):
        class_balance_groups(np.zeros((0, 4), dtype=bool))


def test_samplers_build_from_config_blocks():
    supplied = dict(groups=[TRAIN, PSEUDO], batch_size=16, seed=7)
    fixed = SAMPLERS.build({"type": "WeightedFixedBatchSampler", "args": {"weights": [0.88, 0.12]}}, "s", **supplied)
    assert isinstance(fixed, WeightedFixedBatchSampler) and fixed.counts.tolist() == [14, 2]
    assert fixed.seed == 7 and len(fixed) == 9
    balanced = SAMPLERS.build({"type": "WeightedRandomBatchSampler", "args": {"alpha": 1, "n_batches": 4}}, "s",
                              **supplied)
    assert np.allclose(balanced.weights, [0.5, 0.5]) and len(balanced) == 4
    plain = SAMPLERS.build("ShuffleBatchSampler", "s", groups=[PSEUDO], batch_size=4, seed=0)
    drawn = [i for b in epoch(plain) for i in b]
    assert len(plain) == 7 and len(drawn) == len(set(drawn)) == 28  # drop_last: 30 -> 7 * 4
    assert set(drawn) <= set(PSEUDO)


def test_config_errors_name_the_key():
    supplied = dict(groups=[TRAIN, PSEUDO], batch_size=16, seed=7)
    with pytest.raises(ConfigError, match="sampler.args.batch_size: set by sever itself"):
        SAMPLERS.build({"type": "WeightedFixedBatchSampler", "args": {"batch_size": 4}}, "sampler", **supplied)
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        SAMPLERS.build({"type": "WeightedFixedBatchSampler", "args": {"alpah": 0.2}}, "sampler", **supplied)
    with pytest.raises(ConfigError, match="3 weights for 2 groups"):
        SAMPLERS.build({"type": "WeightedFixedBatchSampler", "args": {"weights": [1, 1, 1]}}, "sampler", **supplied)


# ---------------------------------------------------------------- found by mutation testing (tools/mutation.py)


def test_allocate_breaks_ties_by_the_lower_index_whatever_the_order():
    # remainders 1/6, 1/6, 1/3, 1/3 and one sample left: groups 2 and 3 tie, group 2 gets it
    assert allocate(np.array([1, 1, 2, 2]) / 6, 7).tolist() == [1, 1, 3, 2]


@pytest.mark.parametrize("kind", ["shuffle", "fixed", "random"])
def test_a_fresh_sampler_yields_epoch_zero_whole_and_set_epoch_starts_at_the_first_batch(kind):
    fresh = list(make(kind))
    assert len(fresh) == len(make(kind)) and fresh == epoch(make(kind), 0)
    sampler = make(kind)
    sampler.set_epoch(3, start_batch=2)
    sampler.set_epoch(2)  # no start_batch: the whole epoch
    assert list(sampler) == epoch(make(kind), 2)


def test_omitted_seed_rank_and_world_size_mean_seed_zero_on_a_single_process():
    groups = [TRAIN, PSEUDO]
    explicit = dict(seed=0, rank=0, world_size=1)
    pairs = [
        (ShuffleBatchSampler(130, 16), ShuffleBatchSampler(130, 16, **explicit)),
        (WeightedFixedBatchSampler(groups, 16, 9, [0.88, 0.12]),
         WeightedFixedBatchSampler(groups, 16, 9, [0.88, 0.12], **explicit)),
        (SamplerFactory.get(groups, 16, kind="random"), SamplerFactory.get(groups, 16, kind="random", **explicit)),
    ]
    for kind in ("WeightedFixedBatchSampler", "WeightedRandomBatchSampler"):
        pairs.append((SAMPLERS.build(kind, "s", groups=groups, batch_size=16),
                      SAMPLERS.build(kind, "s", groups=groups, batch_size=16, **explicit)))
    for (omitted, given), batches in zip(pairs, [8, 9, 9, 9, 9]):  # shuffle drops the last incomplete batch
        assert len(omitted) == len(given) == batches
        assert epoch(omitted, 1) == epoch(given, 1)
        assert all(len(batch) == 16 for batch in epoch(omitted, 1))


def test_alpha_defaults_to_half_way_between_population_and_uniform():
    population = np.array([100, 30]) / 130
    expected = 0.5 * population + 0.25
    assert np.allclose(SamplerFactory.get([TRAIN, PSEUDO], 16).weights, expected)
    for kind in ("WeightedFixedBatchSampler", "WeightedRandomBatchSampler"):
        built = SAMPLERS.build(kind, "s", groups=[TRAIN, PSEUDO], batch_size=16)
        assert np.allclose(built.weights, expected)


@pytest.mark.parametrize("kind", ["WeightedFixedBatchSampler", "WeightedRandomBatchSampler"])
def test_config_built_samplers_take_every_supplied_argument(kind):
    supplied = dict(groups=[TRAIN, PSEUDO], batch_size=8, seed=5)
    args = {"weights": [3, 1], "n_batches": 6}
    whole = SAMPLERS.build({"type": kind, "args": args}, "s", **{**supplied, "batch_size": 16})
    ranks = [SAMPLERS.build({"type": kind, "args": args}, "s", **supplied, rank=r, world_size=2) for r in (0, 1)]
    assert np.allclose(whole.weights, [0.75, 0.25]) and len(whole) == 6
    for full, part0, part1 in zip(epoch(whole, 2), epoch(ranks[0], 2), epoch(ranks[1], 2)):
        assert part0 == full[0::2] and part1 == full[1::2]
    assert epoch(whole, 2) != epoch(SAMPLERS.build({"type": kind, "args": args}, "s", **{**supplied, "seed": 6,
                                                                                         "batch_size": 16}), 2)


def test_the_config_shuffle_sampler_shuffles():
    plain = SAMPLERS.build("ShuffleBatchSampler", "s", groups=[np.arange(40)], batch_size=40, seed=0)
    first, second = epoch(plain, 0)[0], epoch(plain, 1)[0]
    assert sorted(first) == sorted(second) == list(range(40))
    assert first != list(range(40)) and first != second


def test_indices_stay_python_ints_with_empty_plain_list_groups_and_starved_groups():
    samplers = [
        SAMPLERS.build("ShuffleBatchSampler", "s", groups=[list(range(10)), []], batch_size=4),
        WeightedFixedBatchSampler([TRAIN, []], 8, 3, [1, 0]),  # an empty group at weight 0
        WeightedFixedBatchSampler([TRAIN, PSEUDO], 8, 3, [0.99, 0.01]),  # group 1 gets no sample per batch
        WeightedRandomBatchSampler([TRAIN, []], 8, 3, [1, 0]),
    ]
    for sampler in samplers:
        drawn = [i for batch in epoch(sampler) for i in batch]
        assert drawn and all(type(i) is int for i in drawn)


def test_groups_of_any_shape_are_flattened_to_indices():
    sampler = WeightedFixedBatchSampler([np.arange(6).reshape(3, 2)], 3, 2, [1])
    assert sorted(i for batch in epoch(sampler) for i in batch) == list(range(6))
    shuffled = ShuffleBatchSampler(6, 3, indices=np.arange(10, 16).reshape(2, 3))
    assert sorted(i for batch in epoch(shuffled) for i in batch) == list(range(10, 16))


def test_a_single_weight_may_be_a_number():
    sampler = WeightedFixedBatchSampler([TRAIN], 4, 2, 2.0)
    assert sampler.weights.tolist() == [1.0] and sampler.counts.tolist() == [4]


def test_a_single_sample_is_enough():
    assert epoch(ShuffleBatchSampler(1, 1)) == [[0]]
    assert epoch(SamplerFactory.get([[5]], 1)) == [[5]]
    assert epoch(SamplerFactory.get([[5], []], 1, weights=[1, 0], kind="random")) == [[5]]
    assert epoch(WeightedFixedBatchSampler([[7]], 1, 1, [1])) == [[7]]


@pytest.mark.parametrize("build, message", [
    (lambda: ShuffleBatchSampler(10, 0), r"batch_size must be an integer >= 1, got 0"),
    (lambda: ShuffleBatchSampler(10, True), r"batch_size must be an integer >= 1, got True"),
    (lambda: ShuffleBatchSampler(10, 2.5), r"batch_size must be an integer >= 1, got 2.5"),
    (lambda: ShuffleBatchSampler(10, 2, seed=-1), r"seed must be an integer >= 0, got -1"),
    (lambda: ShuffleBatchSampler(10, 2, world_size=0), r"world_size must be an integer >= 1, got 0"),
    (lambda: ShuffleBatchSampler(10, 2, rank=2, world_size=2), r"rank must be an integer \[0, 2\), got 2"),
    (lambda: ShuffleBatchSampler(-1, 2), r"n_samples must be an integer >= 1, got -1"),
    (lambda: ShuffleBatchSampler(4, 2, indices=[1, 2, 3]), r"sampler: 3 indices for n_samples=4"),
    (lambda: ShuffleBatchSampler(2, 1, indices=[0, -1]), r"sampler: dataset indices must be non-negative"),
    (lambda: WeightedFixedBatchSampler([TRAIN], 4, 0, [1]), r"n_batches must be an integer >= 1, got 0"),
    (lambda: WeightedFixedBatchSampler([TRAIN, PSEUDO], 4, 2, [0, 0]),
     r"sampler: weights must be non-negative with a positive sum, got \[0.0, 0.0\]"),
    (lambda: SamplerFactory.get([TRAIN], 4, kind="fix"), r"sampler kind must be one of \['fixed', 'random'\], got 'fix'"),
])
def test_invalid_arguments_are_named_with_their_bounds(build, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        build()


def test_set_epoch_errors_name_the_argument_and_its_bounds():
    sampler = ShuffleBatchSampler(10, 4)
    with pytest.raises(ValueError, match=r"^epoch must be an integer >= 0, got -1$"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match=r"^start_batch must be an integer \[0, 3\), got 3$"):
        sampler.set_epoch(0, start_batch=3)
    sampler.set_epoch(np.int64(2), start_batch=np.int64(2))  # numpy integers count as integers
    assert len(list(sampler)) == 0


@pytest.mark.parametrize("build, message", [
    (lambda: ShuffleBatchSampler(0, 4), "sampler: no samples to draw from (the dataset is empty)"),
    (lambda: SamplerFactory.get([], 4), "sampler: no groups of samples to draw from (the dataset is empty)"),
    (lambda: SamplerFactory.get([[], []], 4), "sampler: every group is empty"),
    (lambda: SamplerFactory.get([[], []], 4, weights=[1, 1]), "sampler: every group is empty"),
])
def test_empty_data_messages(build, message):
    with pytest.raises(DataError) as error:
        build()
    assert str(error.value) == message


def test_the_starved_group_warning_names_exactly_the_starved_groups(caplog):
    with caplog.at_level(logging.WARNING, logger="sever.data_loader.sampling"):
        WeightedFixedBatchSampler([TRAIN, PSEUDO], 8, 2, [0.5, 0.5])  # 4 + 4
        WeightedFixedBatchSampler([TRAIN, PSEUDO], 8, 2, [1, 0])  # weight 0: not starved, unwanted
        assert caplog.messages == []
        WeightedFixedBatchSampler([TRAIN, PSEUDO, PSEUDO], 8, 2, [0.98, 0.01, 0.01])
    assert caplog.messages == ["sampler: group(s) [1, 2] get no sample in a batch of 8 at their weight; "
                               "raise their weight or use WeightedRandomBatchSampler"]


def test_class_balancing_logs_its_dropped_groups_in_one_message(caplog):
    with caplog.at_level(logging.INFO, logger="sever.data_loader.sampling"):
        class_balance_groups(np.array([[0, 1], [0, 0]], dtype=bool))
    assert caplog.messages == ["class balancing: no images for group(s) [0] (group 2 is defect-free); dropped"]


def test_the_padded_last_batch_is_the_last_and_fills_every_rank():
    # 19 samples, 4 ranks of 2: batches [0..7], [8..15], [16, 17, 18] padded with 0 to one sample per rank
    ranks = [epoch(ShuffleBatchSampler(19, 2, drop_last=False, shuffle=False, rank=r, world_size=4)) for r in range(4)]
    assert ranks == [[[0, 4], [8, 12], [16]], [[1, 5], [9, 13], [17]], [[2, 6], [10, 14], [18]],
                     [[3, 7], [11, 15], [0]]]


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_more_batches_only_append_to_the_epoch(kind):
    short, long = make(kind, n_batches=5), make(kind, n_batches=20)
    assert epoch(long, 4)[:5] == epoch(short, 4)


def test_class_balancing_logs_exactly_the_empty_groups_and_names_bad_input(caplog):
    has_defect = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=bool)  # classes 1 and 2 never occur
    with caplog.at_level(logging.INFO, logger="sever.data_loader.sampling"):
        groups = class_balance_groups(has_defect)
    assert [g.tolist() for g in groups] == [[0, 2], [1]]
    assert "no images for group(s) [1, 2] (group 3 is defect-free); dropped" in caplog.text
    with pytest.raises(ValueError, match=r"^has_defect must be \(N, C\), got shape \(3,\)$"):
        class_balance_groups(np.zeros(3, dtype=bool))
    with pytest.raises(DataError, match="^class balancing: no images$"):
        class_balance_groups(np.zeros((0, 2), dtype=bool))


def test_the_shuffle_sampler_built_without_a_seed_uses_seed_zero():
    groups = [np.arange(10)]
    unseeded = SAMPLERS.build("ShuffleBatchSampler", "s", groups=groups, batch_size=3)
    seeded = SAMPLERS.build("ShuffleBatchSampler", "s", groups=groups, batch_size=3, seed=0)
    for sampler in (unseeded, seeded):
        sampler.set_epoch(1)
    assert [list(b) for b in unseeded] == [list(b) for b in seeded]


# ---------------------------------------------------------------- class-balanced sampling through the data loader


@pytest.fixture(scope="module")
def skewed_dir(module_tmp) -> Path:
    return make_demo_data(module_tmp("skewed"), n_train=40, n_test=1, height=32, width=128, seed=5)


def rarest_class_groups(has_defect: np.ndarray) -> np.ndarray:
    """Per image: the index of its rarest present class, or C when it has none (computed here, by hand)."""
    counts = has_defect.sum(0)
    labels = []
    for row in has_defect:
        present = [c for c in range(len(row)) if row[c]]
        labels.append(min(present, key=lambda c: (counts[c], c)) if present else len(row))
    return np.array(labels)


def epoch_group_counts(data: SteelDataLoader, labels: np.ndarray, epoch: int) -> tuple[list, np.ndarray]:
    data.train_loader.batch_sampler.set_epoch(epoch)
    batches = [[index for index, _ in batch] for batch in data.train_loader.batch_sampler]
    counts = np.bincount(labels[np.concatenate(batches)], minlength=labels.max() + 1)
    return batches, counts


def loader(data_dir: Path, sampler) -> SteelDataLoader:
    from sever.data_loader.augmentation import TRANSFORMS

    transforms = TRANSFORMS.build({"type": "LightTransforms", "args": {}}, "augmentation")
    return SteelDataLoader(str(data_dir), batch_size=8, validation_split=0, num_workers=0, sampler=sampler,
                           classes=4, transforms=transforms, seed=3)


def test_class_balanced_sampling_without_pseudo_labels_balances_the_rarest_classes(skewed_dir):
    plain = loader(skewed_dir, None)
    balanced = loader(skewed_dir, {"type": "WeightedFixedBatchSampler", "args": {"alpha": 1.0}})
    labels = rarest_class_groups(plain.train_dataset.annotations.has_defect())
    population = np.bincount(labels)
    present = population > 0
    assert population[present].max() >= 2 * population[present].min(), "the demo data must be skewed"

    plain_batches, plain_counts = epoch_group_counts(plain, labels, 1)
    assert np.array_equal(plain_counts, population)  # one shuffled pass: every image once
    batches, counts = epoch_group_counts(balanced, labels, 1)
    assert [len(b) for b in batches] == [len(b) for b in plain_batches]
    # alpha = 1: every present group equally often per batch (largest-remainder rounding: +-1)
    for batch in batches:
        per_group = np.bincount(labels[batch], minlength=len(population))[present]
        assert per_group.max() - per_group.min() <= 1, batch
    assert counts[present].max() - counts[present].min() <= len(batches)
    assert not np.array_equal(counts, population)
