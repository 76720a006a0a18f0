"""Batch samplers: proportions, weights, determinism, resuming, sharding, class groups."""

import logging
from collections import Counter

import numpy as np
import pytest

from sever.exceptions import ConfigError, DataError
from sever.data_loader.sampling import (
    SAMPLERS,
    SamplerFactory,
    ShuffleBatchSampler,
    WeightedFixedBatchSampler,
    WeightedRandomBatchSampler,
    allocate,
    class_balance_groups,
)

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
