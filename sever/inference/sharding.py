"""Prediction shared by several processes: ``sever predict --nproc N``, or under ``torchrun``.

The folder's images, sorted by name, are cut into the batches one process would
predict (``batch_size`` at a time, :func:`shard_names`); batch ``k`` goes to rank
``k mod N``. Each image is therefore predicted in the very batch it would meet in a
single process (same neighbours, same runs of one size), so a sharded prediction is
byte-identical to a single-process one on the same kind of device with the same number
of threads per process (``torchrun`` gives each CPU process one, ``OMP_NUM_THREADS=1``).

Each rank writes its images' probability maps and overlays into the shared folders
itself. The submission rows travel to rank 0 through the process group (so several
machines need no shared file system for the CSV); rank 0 puts them in the
single-process order and writes the CSV atomically. A rank that fails sends its error
instead of rows: then no CSV is written (one already there stays as it was), rank 0
fails with a :class:`~sever.exceptions.DistributedError` naming each failed rank and
its error, and the failed rank exits with its own error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sever.data_loader.datasets import list_images
from sever.exceptions import DistributedError, Interrupted, SeverError
from sever.inference.outputs import PredictionSummary, Submission, predict_directory
from sever.inference.predictor import Predictor
from sever.model.postprocess import PostProcessing
from sever.utils import distributed
from sever.utils.config import OutputClasses
from sever.utils.device import resolve_device
from sever.utils.distributed import Distributed

logger = logging.getLogger(__name__)


def shard_names(names: Sequence[str], batch_size: int, rank: int, world_size: int) -> list[str]:
    """The images of rank ``rank``: batches ``rank, rank + world_size, ...`` of ``names``, in batches of ``batch_size``."""
    step = batch_size * world_size
    return [name for start in range(rank * batch_size, len(names), step) for name in names[start:start + batch_size]]


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[Distributed, str]]:
    """Join the job torchrun describes in the environment (none: a single process) for one command.

    Yields ``(context, device)``: this rank's place and the device it predicts on
    (``cuda:LOCAL_RANK`` on GPUs). Ranks other than 0 log warnings and errors only.
    The process group is left on the way out.
    """
    context = distributed.from_environment()
    torch_device = distributed.setup(context, resolve_device(device))
    distributed.quiet_other_ranks(context)
    try:
        yield context, str(torch_device)
    finally:
        distributed.teardown(context)


@dataclass
class ShardRows:
    """What one rank sends rank 0: its submission rows, or its error."""

    rank: int
    image_ids: list[str]
    encodings: list[list[str]]
    class_images: np.ndarray
    error: str | None = None


def predict_sharded(context: Distributed, predictor: Predictor, settings: PostProcessing, image_dir: str | Path,
                    output: str | Path, fmt: str = "current", save_probs: str | Path | None = None,
                    visualize: str | Path | None = None, labels: str | Path | None = None, batch_size: int = 8,
                    num_workers: int = 2) -> PredictionSummary | None:
    """Predict this rank's share of ``image_dir``; rank 0 merges every rank's rows into ``output``.

    Arguments as :func:`~sever.inference.outputs.predict_directory`; alone it is that function.

    Returns:
        The summary of the whole prediction on rank 0 (every rank's images), None on the others.

    Raises:
        DistributedError: on rank 0, when any rank failed (nothing written to ``output``).
        Exception: on a failed rank other than 0, its own error.
    """
    if not context.enabled:
        return predict_directory(predictor, settings, image_dir, output, fmt, save_probs, visualize, labels,
                                 batch_size, num_workers)
    started = time.perf_counter()
    names = list_images(image_dir)
    mine = shard_names(names, batch_size, context.rank, context.world_size)
    failure = None
    try:
        summary = predict_directory(predictor, settings, image_dir, output, fmt, save_probs, visualize, labels,
                                    batch_size, num_workers, names=mine, write_csv=False)
        rows = ShardRows(context.rank, summary.submission.image_ids, summary.submission.encodings,
                         summary.class_images)
    except Exception as exc:  # every rank must reach the gather, or the others wait for it forever
        failure = exc
        if context.is_main and not isinstance(exc, SeverError):  # its DistributedError hides the traceback
            logger.exception("rank 0 of %d failed", context.world_size)
        rows = ShardRows(context.rank, [], [], np.zeros(settings.classes, np.int64), f"{type(exc).__name__}: {exc}")
    shards = context.gather(rows)
    if isinstance(failure, Interrupted):
        raise failure  # a stop, not a failure: the CLI says how to continue
    if not context.is_main:
        if failure is not None:
            raise failure
        return None
    failed = [shard for shard in shards if shard.error is not None]
    if failed:
        errors = "; ".join(f"rank {shard.rank}: {shard.error}" for shard in failed)
        kept = " (the one there is unchanged)" if Path(output).exists() else ""
        raise DistributedError(f"{len(failed)} of {context.world_size} processes failed, so {output} was not "
                               f"written{kept}: {errors}") from failure
    submission = merge_rows(shards, names, settings.classes, predictor.outputs)
    path = submission.write(output, fmt)
    class_images = np.sum([shard.class_images for shard in shards], axis=0)
    return PredictionSummary(len(names), class_images, time.perf_counter() - started, path)


def merge_rows(shards: Sequence[ShardRows], names: Sequence[str], classes: int,
               outputs: OutputClasses | None = None) -> Submission:
    """One submission of every shard's rows in the order of ``names`` (the single-process order);
    ``outputs``: the dataset classes of the rows' channels (:class:`~sever.inference.outputs.Submission`).

    Raises:
        DistributedError: an image of ``names`` that no shard predicted, or one predicted twice.
    """
    rows: dict[str, list[str]] = {}
    for shard in shards:
        for name, encodings in zip(shard.image_ids, shard.encodings):
            if name in rows:
                raise DistributedError(f"image {name} was predicted by two processes")
            rows[name] = encodings
    missing = [name for name in names if name not in rows]
    if missing:  # the ranks listed different folders (several machines, each with its own copy)
        raise DistributedError(f"{len(missing)} image(s) were predicted by no process, e.g. {missing[0]}: does "
                               f"every machine hold the same images?")
    submission = Submission(classes, outputs)
    submission.image_ids = list(names)
    submission.encodings = [rows[name] for name in names]
    return submission
