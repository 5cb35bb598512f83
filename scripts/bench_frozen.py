#!/usr/bin/env python
"""How much folding BatchNorm and the channels-last layout speed up a search's passes (issue 21, item 2).

Bare forward + backward passes to the input, in batches as MDM runs them (27 masks per task), through the network
as a search freezes it, for each of the four settings of ``fold_batchnorm`` and ``channels_last``; the rounds
interleave the settings, and each is the median over them. Random weights: speed does not depend on them.

    python scripts/bench_frozen.py            # the tiny backbones at 64 px, ResNet-18 and DenseNet-121 at 224
    python scripts/bench_frozen.py --cases tiny --rounds 7
"""

from __future__ import annotations

import argparse
import statistics

import torch

from protomdm import MDMConfig
from protomdm.explain.selectors import PrototypeSelector
from protomdm.jobs.bench import bare_pass_seconds, bench_model

CASES = {  # name: (architecture, backbone, size, masked images per batch)
    "tiny": [("protopnet", "tiny", 64, 135), ("xprotonet", "tiny", 64, 135)],
    "large": [("protopnet", "resnet18", 224, 27), ("xprotonet", "densenet121", 224, 9)],
}
SETTINGS = [(False, False), (False, True), (True, False), (True, True)]  # (fold_batchnorm, channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="tiny,large", help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| model | batch | ms per pass (neither) | " + " | ".join(f"fold {f:d}, channels-last {c:d}"
                                                           for f, c in SETTINGS[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(SETTINGS) - 1))
    for arch, backbone, size, batch in [c for name in args.cases.split(",") for c in CASES[name]]:
        model, _ = bench_model(arch, backbone, size, None, 0, False)
        x = torch.rand(1, model.config.in_channels, size, size)
        sel = PrototypeSelector(model.eval(), 0)
        seconds: dict[tuple[bool, bool], list[float]] = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for fold, cl in SETTINGS:
                cfg = MDMConfig(fold_batchnorm=fold, channels_last=cl)
                seconds[fold, cl].append(bare_pass_seconds(sel, x, batch, repeats=5 if size <= 64 else 2,
                                                           min_seconds=0, mdm=cfg))
        base = statistics.median(seconds[False, False])
        print(f"| {arch}/{backbone} at {size} px | {batch} | {base * 1000:.2f} | "
              + " | ".join(f"{base / statistics.median(seconds[s]):.2f}x" for s in SETTINGS[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
