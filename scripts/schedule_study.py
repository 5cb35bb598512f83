#!/usr/bin/env python
"""Which MDM schedule reproduces the paper's 2000-step result in fewer steps? (issue: speed)

Trains (or reuses) the demo's synthetic ProtoPNet, computes the 2000-step reference (lr 3e-3, batched, which equals
the paper's one-mask-at-a-time schedule exactly) for N test images once (cached), then runs candidate schedules and
prints, per candidate: steps, seconds per image, and agreement with the reference (Dice of the p90 masks, mean and
minimum over images; Pearson r of the heatmaps).

    python scripts/schedule_study.py --images 6 --out runs/schedule_study
    python scripts/schedule_study.py --config configs/synthetic_xprotonet.yaml --out runs/schedule_study_xpn
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from protomdm import MDMConfig, MDMLocalizer, PrototypeSelector, load_model
from protomdm.config import load_train_config
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.demo import demo_config
from protomdm.evaluation.metrics import dice, top_percentile_mask
from protomdm.pipeline import choose_prototype
from protomdm.training import train

FULL = {"extrapolate_after": None}  # the paper's schedule: every step taken
CANDIDATES = {  # name: MDMConfig overrides
    "paper 2000 @ 3e-3": FULL,
    "200 @ 3e-3 (cut short)": {**FULL, "steps": 200},
    "tol 0.02": {**FULL, "tol": 0.02},
    "1000 @ 6e-3": {**FULL, "steps": 1000, "lr": 6e-3},
    "400 @ 1.5e-2": {**FULL, "steps": 400, "lr": 1.5e-2},
    "200 @ 3e-2": {**FULL, "steps": 200, "lr": 3e-2},
    "100 @ 6e-2": {**FULL, "steps": 100, "lr": 6e-2},
    "200 -> 2000 extrapolated": {"extrapolate_after": 200},
    "400 -> 2000 extrapolated (default)": {"extrapolate_after": 400},
    "600 -> 2000 extrapolated": {"extrapolate_after": 600},
    "1000 -> 2000 extrapolated": {"extrapolate_after": 1000},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--out", default="runs/schedule_study")
    ap.add_argument("--only", help="comma-separated candidate names to run (default all)")
    ap.add_argument("--config", help="a synthetic training config (default: the demo's ProtoPNet)")
    args = ap.parse_args()
    out = Path(args.out)
    cfg = load_train_config(args.config) if args.config else demo_config()
    if not (out / "model" / "best.pt").exists():
        train(cfg, out / "model", progress=False)
    model = load_model(out / "model" / "best.pt")
    data = SyntheticLesions(cfg.model.class_names, n=args.images, size=cfg.model.img_size[0],
                            channels=cfg.model.in_channels, multilabel=cfg.data.multilabel, seed=cfg.data.seed + 1)
    x = model_input(torch.stack([torch.from_numpy(data.sample(i).image) for i in range(args.images)]), model.config)
    protos = [choose_prototype(model, x[i:i + 1], None, None) for i in range(args.images)]

    def run(overrides: dict) -> tuple[list[np.ndarray], float, int]:
        loc = MDMLocalizer(dataclasses.replace(MDMConfig(), **overrides))
        t0 = time.perf_counter()
        locs = [loc.localize(x[i], PrototypeSelector(model, j)) for i, j in enumerate(protos)]
        return [lo.heatmap for lo in locs], (time.perf_counter() - t0) / len(locs), max(lo.steps for lo in locs)

    cache = out / f"reference_{args.images}.npz"
    if cache.exists():
        ref = list(np.load(cache)["heat"])
        ref_s = float(np.load(cache)["seconds"])
    else:
        ref, ref_s, _ = run(FULL)
        np.savez(cache, heat=np.stack(ref), seconds=ref_s)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    print(f"{'schedule':<26} {'steps':>6} {'s/image':>8} {'Dice p90 mean':>14} {'min':>6} {'Pearson r':>10}")
    for name in names:
        if name == "paper 2000 @ 3e-3":
            heat, sec, steps = ref, ref_s, 2000
        else:
            heat, sec, steps = run(CANDIDATES[name])  # steps: the most Adam steps taken
        d = [float(dice(top_percentile_mask(h, 90), top_percentile_mask(r, 90))) for h, r in zip(heat, ref)]
        r = [float(np.corrcoef(h.ravel(), g.ravel())[0, 1]) for h, g in zip(heat, ref) if h.std() > 0 and g.std() > 0]
        r_mean = float(np.mean(r)) if r else float("nan")  # flat heatmaps (nothing kept) have no correlation
        print(f"{name:<26} {steps:>6} {sec:>8.1f} {np.mean(d):>14.3f} {np.min(d):>6.3f} {r_mean:>10.3f}",
              flush=True)


if __name__ == "__main__":
    main()
