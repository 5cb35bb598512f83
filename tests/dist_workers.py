"""Process entry points for the torch.distributed tests (importable by spawned children)."""

from __future__ import annotations

import os

import torch


def _setup(rank: int, world: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from protomdm.distributed import init_distributed

    return init_distributed("cpu", timeout_s=120)


def localize(rank, world, port, ckpt, folder, out, resume=False, die_rank=-1, die_after=0):
    dist = _setup(rank, world, port)
    from protomdm.jobs.folder import localize_folder
    from protomdm.jobs.localize import LocalizeJob

    job = LocalizeJob.load(ckpt, method="upsample")
    if rank == die_rank:
        real, seen = LocalizeJob.write, []

        def dying(self, image, j, loc, probability, dest, stem):
            if len(seen) == die_after:
                os._exit(3)  # killed mid-run, without any cleanup
            seen.append(stem)
            return real(self, image, j, loc, probability, dest, stem)

        LocalizeJob.write = dying
    localize_folder(job, folder, out, resume=resume, progress=False, dist=dist)
    torch.distributed.destroy_process_group()


def train(rank, world, port, cfg_dict, out):
    _setup(rank, world, port)
    from protomdm.config import from_dict
    from protomdm.training import train as run
    from protomdm.training.config import TrainConfig

    run(from_dict(TrainConfig, cfg_dict), out, progress=False)
    torch.distributed.destroy_process_group()


def evaluate(rank, world, port, ckpt, out):
    dist = _setup(rank, world, port)
    from protomdm.evaluation.runner import evaluate as run

    run(ckpt, out, dataset="synthetic", methods=["upsample"], limit=5, deletion_steps=4, progress=False, dist=dist)
    torch.distributed.destroy_process_group()
