"""torch.distributed, as ``torchrun`` sets it up: who am I, sharding, and the few collectives we use.

Run any command under ``torchrun --nproc-per-node N`` (one node) or with ``--nnodes``/``--rdzv-*`` (several): the
process group is created from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...),
with NCCL on GPUs and Gloo on CPUs. Without torchrun everything runs as one process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th from position ``rank`` (stable, disjoint, covering)."""
        return list(items[self.rank::self.world_size])

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank; CPUs are shared."""
        if device.type == "cuda" and self.active:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def part(self, path: Path) -> Path:
        """Where this rank writes its share of ``path`` (``results.csv`` -> ``results.rank1.csv``); ``path`` itself
        outside torchrun."""
        return path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}") if self.active else path

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one outside torchrun)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)
        return t


def rank_parts(path: Path) -> list[Path]:
    """The per-rank shares of ``path`` that a torchrun run left unmerged (see :meth:`DistEnv.part`)."""
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}")) if path.parent.is_dir() else []


def init_distributed(device: torch.device | str = "cpu", timeout_s: float = 1800) -> DistEnv:
    """The process group of a ``torchrun`` launch (created once), or a single-process :class:`DistEnv`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
