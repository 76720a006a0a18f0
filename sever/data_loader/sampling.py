"""Batch samplers: plain shuffling, fixed-proportion and weighted group sampling.

Every sampler yields batches (lists of dataset indices) and is a deterministic
function of ``(seed, epoch)``: call ``set_epoch(epoch)`` before every epoch,
or ``set_epoch(epoch, start_batch=k)`` to resume an epoch after its first
``k`` batches with exactly the batches the interrupted run would have seen.
``len(sampler)`` is the number of batches in a whole epoch.

Distributed training: with ``world_size`` ranks, every rank builds the same
*global* batch of ``batch_size * world_size`` indices from ``(seed, epoch)``
and keeps the strided slice ``global_batch[rank::world_size]``. The ranks'
batches are disjoint and together equal the batch a single process with
``batch_size * world_size`` would draw.

Groups: the weighted samplers draw from ``groups``, a list of index arrays —
``[train, pseudo]`` for pseudo-labels, or :func:`class_balance_groups` for
class balancing — in proportions given by per-group weights
(:meth:`SamplerFactory.weights`).

Config (``SAMPLERS``): the data layer builds the sampler with::

    SAMPLERS.build(spec, "data_loader.args.sampler",
                   groups=groups, batch_size=batch_size, seed=seed,
                   rank=rank, world_size=world_size)

where ``groups`` is a list of 1-D int arrays of dataset indices (one array for
plain training). The config supplies only the sampling choices::

    sampler: ShuffleBatchSampler                                  # args: drop_last
    sampler: {type: WeightedFixedBatchSampler, args: {alpha: 0.5}}
    sampler: {type: WeightedRandomBatchSampler, args: {weights: [0.88, 0.12], n_batches: 500}}
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from sever.exceptions import DataError
from sever.registries import SAMPLERS

logger = logging.getLogger(__name__)


def _check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer in ``[low, high)``; ValueError otherwise."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value >= high):
        bounds = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def _as_groups(groups: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each group as a 1-D int64 array; DataError when there are no groups."""
    if len(groups) == 0:
        raise DataError("sampler: no groups of samples to draw from (the dataset is empty)")
    arrays = [np.asarray(group, dtype=np.int64).reshape(-1) for group in groups]
    if any((array < 0).any() for array in arrays):
        raise ValueError("sampler: dataset indices must be non-negative")
    return arrays


def _check_weights(weights: Sequence[float], groups: list[np.ndarray]) -> np.ndarray:
    """Weights normalised to sum 1; DataError when a weighted group is empty.

    Returns:
        ``(G,)`` float64.
    """
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(groups):
        raise ValueError(f"sampler: {len(weights)} weights for {len(groups)} groups")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"sampler: weights must be non-negative with a positive sum, got {weights.tolist()}")
    empty = [i for i, (w, g) in enumerate(zip(weights, groups)) if w > 0 and len(g) == 0]
    if empty:
        raise DataError(f"sampler: group(s) {empty} have weight > 0 but no samples")
    return weights / weights.sum()


def allocate(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder).

    Args:
        weights: ``(G,)`` non-negative, summing to 1.
        total: the number to split.

    Returns:
        ``(G,)`` int64 counts summing to ``total``; ties go to the lower index.
    """
    exact = weights * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _cycle(group: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``group``: shuffled passes, reshuffled each time it is exhausted.

    Returns:
        ``(n,)`` int64 dataset indices.
    """
    if n == 0:
        return np.empty(0, dtype=np.int64)
    passes = math.ceil(n / len(group))
    return np.concatenate([rng.permutation(group) for _ in range(passes)])[:n]


class EpochBatchSampler(Sampler[list[int]]):
    """Base of the samplers: epoch selection, resuming and rank slicing.

    Subclasses implement :meth:`global_batches` and ``__len__``.

    Args:
        batch_size: samples per batch on this rank.
        seed: non-negative base seed.
        rank, world_size: this process's slice of every global batch.
    """

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int):
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0, self.world_size)
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        """Samples per batch over all ranks: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch the next iteration yields, skipping its first ``start_batch`` batches."""
        epoch = _check_int("epoch", epoch, 0)
        self.start_batch = _check_int("start_batch", start_batch, 0, len(self) + 1)
        self.epoch = epoch

    def _rng(self, n: int) -> list[np.random.Generator]:
        """``n`` independent generators, a function of ``(seed, epoch)`` only."""
        sequence = np.random.SeedSequence([self.seed, self.epoch])
        return [np.random.default_rng(child) for child in sequence.spawn(n)]

    def global_batches(self) -> list[np.ndarray]:
        """Every global batch of the current epoch, each ``(<= global_batch_size,)`` int64."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start_batch :]:
            yield batch[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        raise NotImplementedError


class ShuffleBatchSampler(EpochBatchSampler):
    """One pass over ``n_samples`` indices per epoch, shuffled by ``(seed, epoch)``.

    Args:
        n_samples: draws ``range(n_samples)``, or the given ``indices``.
        batch_size: samples per batch on this rank.
        drop_last: drop the last incomplete global batch. Otherwise it is kept;
            with several ranks it is padded from the start of the epoch's order
            to a multiple of ``world_size`` so every rank gets a batch.
        seed: non-negative base seed.
        shuffle: False keeps the index order (validation).
        rank, world_size: see the module docstring.
        indices: ``(n_samples,)`` dataset indices to draw instead of ``range(n_samples)``.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        drop_last: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        indices: Sequence[int] | None = None,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        if n_samples == 0:
            raise DataError("sampler: no samples to draw from (the dataset is empty)")
        self.n_samples = _check_int("n_samples", n_samples, 1)
        self.indices = np.arange(n_samples) if indices is None else _as_groups([indices])[0]
        if len(self.indices) != self.n_samples:
            raise ValueError(f"sampler: {len(self.indices)} indices for n_samples={n_samples}")
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        if len(self) == 0:
            raise DataError(
                f"sampler: {n_samples} samples make no complete batch of {self.global_batch_size} "
                f"with drop_last; lower batch_size or set drop_last false"
            )

    def global_batches(self) -> list[np.ndarray]:
        order = self._rng(1)[0].permutation(self.indices) if self.shuffle else self.indices
        size = self.global_batch_size
        batches = [order[start : start + size] for start in range(0, len(self) * size, size)]
        missing = -len(batches[-1]) % self.world_size
        if missing:
            batches[-1] = np.concatenate([batches[-1], np.resize(order, missing)])
        return batches

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(self.n_samples / self.global_batch_size)


def _shuffle_from_config(
    groups: Sequence[Sequence[int]],
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> ShuffleBatchSampler:
    """Config entry: one shuffled pass over the union of ``groups``."""
    population = np.concatenate(_as_groups(groups))
    return ShuffleBatchSampler(len(population), batch_size, drop_last, seed, True, rank, world_size, population)


class WeightedBatchSampler(EpochBatchSampler):
    """Base of the group samplers: ``n_batches`` global batches drawn from weighted groups.

    Args:
        groups: list of G 1-D arrays of dataset indices.
        batch_size: samples per batch on this rank.
        n_batches: batches per epoch.
        weights: ``(G,)`` non-negative, normalised here; a group with weight 0
            is never drawn and may be empty.
        seed, rank, world_size: see :class:`EpochBatchSampler`.
    """

    kind: str  # the subclass's name in SamplerFactory.KINDS

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        n_batches: int,
        weights: Sequence[float],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.groups = _as_groups(groups)
        self.weights = _check_weights(weights, self.groups)
        self.n_batches = _check_int("n_batches", n_batches, 1)
        self._prepare()

    @classmethod
    def from_config(
        cls,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        alpha: float = 0.5,
        weights: Sequence[float] | None = None,
        n_batches: int | None = None,
    ) -> WeightedBatchSampler:
        """Config entry: the data layer supplies groups, batch size, seed and ranks; see :meth:`SamplerFactory.get`."""
        return SamplerFactory.get(groups, batch_size, n_batches, alpha, cls.kind, weights, seed, rank, world_size)

    def _prepare(self) -> None:
        """Per-kind set-up after the arguments are checked."""

    def __len__(self) -> int:
        return self.n_batches


class WeightedFixedBatchSampler(WeightedBatchSampler):
    """Every global batch holds a fixed number of samples from each group.

    The counts are ``weights * global_batch_size`` rounded by the largest
    remainder method, so they sum to the batch size exactly; the batch lists
    group 0's samples first, then group 1's, ... so every rank's strided slice
    holds each group's count divided by ``world_size``, give or take one. Each
    group is drawn in shuffled passes, reshuffled when exhausted and at every
    epoch. With weights ``[0.88, 0.12]`` over ``[train, pseudo]`` every batch
    is 12% pseudo-labelled.
    """

    kind = "fixed"

    def _prepare(self) -> None:
        """Per-batch group counts ``(G,)``; warns about weighted groups that get none."""
        self.counts = allocate(self.weights, self.global_batch_size)
        starved = [i for i, (w, c) in enumerate(zip(self.weights, self.counts)) if w > 0 and c == 0]
        if starved:
            logger.warning(
                "sampler: group(s) %s get no sample in a batch of %d at their weight; "
                "raise their weight or use WeightedRandomBatchSampler",
                starved,
                self.global_batch_size,
            )

    def global_batches(self) -> list[np.ndarray]:
        rngs = self._rng(len(self.groups))
        blocks = [
            _cycle(group, count * self.n_batches, rng).reshape(self.n_batches, count)
            for group, count, rng in zip(self.groups, self.counts, rngs)
        ]
        return list(np.concatenate(blocks, axis=1))


class WeightedRandomBatchSampler(WeightedBatchSampler):
    """Each sample's group is drawn with replacement by weight, then a sample from it.

    Within a group, samples come in shuffled passes (reshuffled when exhausted
    and at every epoch), so a group is covered before any sample repeats.
    """

    kind = "random"

    def global_batches(self) -> list[np.ndarray]:
        rngs = self._rng(len(self.groups) + 1)
        choice = rngs[-1].choice(len(self.groups), size=(self.n_batches, self.global_batch_size), p=self.weights)
        batches = np.empty_like(choice, dtype=np.int64)
        for g, (group, rng) in enumerate(zip(self.groups, rngs)):
            chosen = choice == g
            batches[chosen] = _cycle(group, int(chosen.sum()), rng)
        return list(batches)


class SamplerFactory:
    """Builds a weighted sampler from groups, blending population and uniform weights."""

    KINDS = {sampler.kind: sampler for sampler in (WeightedFixedBatchSampler, WeightedRandomBatchSampler)}

    @staticmethod
    def weights(sizes: Sequence[int], alpha: float) -> np.ndarray:
        """``(1 - alpha) * population + alpha * uniform`` over the groups.

        Args:
            sizes: ``(G,)`` group sizes.
            alpha: 0 weighs groups by size (the natural distribution), 1 weighs
                them equally (balanced), in between blends the two.

        Returns:
            ``(G,)`` float64 weights summing to 1.
        """
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.sum() == 0:
            raise DataError("sampler: every group is empty")
        return (1 - alpha) * sizes / sizes.sum() + alpha / len(sizes)

    @classmethod
    def get(
        cls,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        n_batches: int | None = None,
        alpha: float = 0.5,
        kind: str = "fixed",
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> WeightedBatchSampler:
        """A ``kind`` ("fixed" or "random") sampler over ``groups``.

        Args:
            groups: list of G 1-D arrays of dataset indices.
            batch_size: samples per batch on this rank.
            n_batches: batches per epoch; default ``ceil(total / (batch_size * world_size))``,
                one pass over all groups' samples, so a group weighted below its
                share is undersampled.
            alpha: blend of :meth:`weights`, used when ``weights`` is None.
            weights: ``(G,)`` explicit weights, normalised; override ``alpha``.
            seed, rank, world_size: see :class:`EpochBatchSampler`.
        """
        if kind not in cls.KINDS:
            raise ValueError(f"sampler kind must be one of {sorted(cls.KINDS)}, got {kind!r}")
        groups = _as_groups(groups)
        total = sum(len(group) for group in groups)
        if weights is None:
            weights = cls.weights([len(group) for group in groups], alpha)
        if n_batches is None:
            if total == 0:
                raise DataError("sampler: every group is empty")
            n_batches = math.ceil(total / (batch_size * world_size))
        return cls.KINDS[kind](groups, batch_size, n_batches, weights, seed, rank, world_size)


SAMPLERS.register(_shuffle_from_config, name="ShuffleBatchSampler")
SAMPLERS.register(WeightedFixedBatchSampler.from_config, name="WeightedFixedBatchSampler")
SAMPLERS.register(WeightedRandomBatchSampler.from_config, name="WeightedRandomBatchSampler")


def class_balance_groups(has_defect: np.ndarray) -> list[np.ndarray]:
    """Group images by their rarest defect class, for class-balanced sampling.

    Each image with defects goes to the group of its rarest present class
    (rarity: fewest images with that class in the whole ``has_defect``; ties go
    to the lower class index); defect-free images form the last group. Empty
    groups are dropped (and logged), so the result may hold fewer than C + 1
    groups — weigh them with ``alpha``, not with per-class explicit weights.

    Args:
        has_defect: ``(N, C)`` bool (or 0/1), whether image n has class c.

    Returns:
        Non-empty 1-D int64 arrays of row indices into ``has_defect``, in
        class order, then the defect-free group.
    """
    has_defect = np.asarray(has_defect).astype(bool)
    if has_defect.ndim != 2:
        raise ValueError(f"has_defect must be (N, C), got shape {has_defect.shape}")
    if len(has_defect) == 0:
        raise DataError("class balancing: no images")
    counts = has_defect.sum(axis=0)
    rarity = np.where(has_defect, counts, np.iinfo(np.int64).max)
    rarest = np.where(has_defect.any(axis=1), rarity.argmin(axis=1), has_defect.shape[1])
    groups = [np.flatnonzero(rarest == label) for label in range(has_defect.shape[1] + 1)]
    empty = [label for label, group in enumerate(groups) if len(group) == 0]
    if empty:
        logger.info("class balancing: no images for group(s) %s (group %d is defect-free); dropped",
                    empty, has_defect.shape[1])
    return [group for group in groups if len(group)]
