#!/usr/bin/env python
"""Epoch time of the table dataset with and without the image cache, on NIH-format synthetic data: 1024 x 1024
grey PNGs listed in a CSV, read at the model's input size (issue 13's loading benchmark).

    python scripts/bench_cache.py --images 200 --size 224 [--workers 0] [--out runs/bench_cache]

Prints seconds per epoch (a full pass of a DataLoader, batch 32): without the cache (every image decoded and resized
every epoch), the first epoch with the cache (which builds it) and the next epochs (reading the memory map), and
the cache's size on disk.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sized
from pathlib import Path
from typing import cast

from torch.utils.data import DataLoader

from protomdm.config import ModelConfig
from protomdm.data import dataset_source
from protomdm.data.config import DataConfig
from protomdm.data.synthetic import write_table


def epoch_seconds(dataset, workers: int) -> float:
    t0 = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=32, num_workers=workers):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=224, help="model input side (default 224)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2, help="cached epochs timed after the first (default 2)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_cache"))
    args = ap.parse_args()
    root = args.out / "data"
    if not (root / "labels.csv").exists():
        print(f"writing {args.images} 1024 x 1024 grey PNGs to {root} ...")
        write_table(root, args.images, size=64, channels=1, scale=16, test_fraction=0.5)
    model = ModelConfig(architecture="protopnet", backbone="tiny", class_names=("disk", "square", "cross"),
                        img_size=(args.size, args.size), in_channels=1, mean=(0.5,), std=(0.25,))
    cache = args.out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    plain, _, _ = dataset_source(DataConfig(dataset="table", root=str(root), table="labels.csv",
                                            cache_dir="none")).training(model)
    rows.append(("no cache (decode every epoch)", epoch_seconds(plain, args.workers)))
    t0 = time.perf_counter()
    cached, cached_test, _ = dataset_source(DataConfig(dataset="table", root=str(root), table="labels.csv",
                                             cache_dir=str(cache))).training(model)
    build = time.perf_counter() - t0
    rows.append(("cache: first epoch (builds it, test split too)", build + epoch_seconds(cached, args.workers)))
    for _ in range(args.epochs):
        rows.append(("cache: later epoch", epoch_seconds(cached, args.workers)))
    size = sum(p.stat().st_size for p in cache.glob("*"))
    n_train, n_cached = len(cast(Sized, plain)), len(cast(Sized, cached)) + len(cast(Sized, cached_test))
    print(f"{n_train} training images of 1024 x 1024 at {args.size} px, {args.workers} worker(s):")
    print("| epoch | seconds | images/s |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {n_train / s:.0f} |")
    print(f"cache on disk: {size / 1e6:.1f} MB for {n_cached} images "
          f"({args.size * args.size} bytes per grey image)")


if __name__ == "__main__":
    main()
