"""User and system seconds of one MDM search, with glibc's allocator as it is and as protomdm.runtime sets it.

    python scripts/bench_malloc.py [--steps 100] [--size 64]

Each setting runs in its own process (mallopt is per process); the table is the children's rusage, so the ratio
between the rows is what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

SEARCH = """
import torch
from protomdm.config import ModelConfig
from protomdm.explain.mdm import MDMConfig
from protomdm.explain import MDMLocalizer, PrototypeSelector
from protomdm.models import build_model
from protomdm.runtime import keep_freed_memory
print(keep_freed_memory())
torch.manual_seed(0)
model = build_model(ModelConfig(backbone="tiny", class_names=("a", "b", "c"), prototypes_per_class=2,
                                img_size=({size}, {size}))).eval()
cfg = MDMConfig(steps={steps}, tol=None, extrapolate_after=None)
MDMLocalizer(cfg).localize_many(torch.rand(1, 3, {size}, {size}), PrototypeSelector(model, 0))
"""


def run(env: dict[str, str], steps: int, size: int) -> tuple[float, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", SEARCH.format(steps=steps, size=size)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    print(f"{'allocator':<22}{'wall s':>9}{'user s':>9}{'system s':>10}")
    for name, value in (("glibc as it is", "system"), ("keep_freed_memory", "")):
        wall, user, system = run({**os.environ, "PROTOMDM_MALLOC": value}, a.steps, a.size)
        print(f"{name:<22}{wall:>9.2f}{user:>9.2f}{system:>10.2f}")


if __name__ == "__main__":
    main()
