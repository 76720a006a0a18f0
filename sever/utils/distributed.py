"""Multi-process training and prediction on ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node N -m sever train -c CONFIG`` (or ``sever train
--nproc N``) starts N copies of sever; each reads its rank from the environment
that torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the process
group (NCCL on GPUs, gloo on CPU) and trains its shard of every batch.
``sever predict --nproc N`` shards the images the same way
(:mod:`sever.inference.sharding`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, TensorBoard and checkpoints."""
        return self.rank == 0

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over every rank in place (a no-op alone)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sync_buffers_(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift apart between DDP syncs)."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def gather(self, value) -> list | None:
        """Every rank's ``value`` (any picklable object) in rank order on rank 0, None on the others.

        Alone: ``[value]``.
        """
        if not self.enabled:
            return [value]
        box = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, box, dst=0)
        return box

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def torchrun_command(nproc: int, sever_args: Sequence[str]) -> list[str]:
    """The command line that runs ``sever SEVER_ARGS`` in ``nproc`` processes on this machine.

    ``nproc`` > 1: under torchrun (``python -m torch.distributed.run --standalone
    --nproc_per_node N -m sever ...``); 1: one plain ``python -m sever ...``. The one
    builder of such commands: ``sever train --nproc`` relaunches itself with it, a study's
    fold processes are started with it.
    """
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return [*launcher, "-m", "sever", *sever_args]


def from_environment() -> Distributed:
    """The rank layout torchrun put in the environment (single process when absent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(context: Distributed, device: torch.device) -> torch.device:
    """Join the process group; returns the device this rank trains on.

    Each rank takes ``cuda:LOCAL_RANK`` when the config asked for CUDA.
    """
    if not context.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
        logger.info("rank %d/%d joined the %s process group on %s", context.rank, context.world_size, backend, device)
    return device


def quiet_other_ranks(context: Distributed) -> None:
    """Only rank 0 logs information; the other ranks log warnings and errors."""
    if not context.is_main:
        logging.getLogger("sever").setLevel(logging.WARNING)


def teardown(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
