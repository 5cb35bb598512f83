#!/usr/bin/env python
"""Schedules the default was measured against (issue 21), on the schedule study's models and activations: variants
of one Adam step per pass (``between_passes: scaled``, the engine's only way before the linear steps between passes).

Against the full schedule's cached heatmaps (run scripts/schedule_study.py first), each variant prints the p90 Dice
agreement (mean, min, per activation) and the mean Adam steps per mask:

- ``reference``: the full schedule again, from masks started at 0.501 instead of 0.5 (is the reference stable?);
- ``scales``: Adam steps whose time scale changes over the run (300 with small steps first, last, or growing;
  the paper's own steps first, then steps of 5);
- ``per-size``: each mask size its own number of Adam steps (300 on average), coarse masks fewer than fine ones or
  the reverse, each step standing for 2000 / that number of the schedule's;
- ``settle``: a 600-step run whose masks leave the batch once their cells moved by less than ``eps`` over the last
  ``lag`` Adam steps (simulated from snapshots every 25 steps, as the engine's active set would stop them);
- ``trajectory``: the full schedule and the old default (400 scaled steps of 5) side by side, every 250 schedule
  steps: the share of the image the heatmap keeps, its p90 Dice against the full schedule's final one, the largest
  mask sum on the planted object and off it, and the loss (mean over the masks): where the two part, and which
  optimum is lower.

    python scripts/schedule_variants.py --model protopnet --size 224 --at-model-size    # the README's set B
    python scripts/schedule_variants.py --size 224 --max-activations 1 --only trajectory   # the 224-px miss
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from schedule_study import ROOT, tasks, trained_model

from protomdm import MDMConfig, MDMLocalizer
from protomdm.evaluation.metrics import dice, top_percentile_mask
from protomdm.explain.mdm import ADAM_BETAS, ADAM_EPS, MaskUpsampler, MDMLoss, masks_to_heatmap
from protomdm.jobs.demo import demo_config
from protomdm.training.config import load_train_config


class VaryingScale(MDMLocalizer):
    """MDM whose Adam step ``t`` stands for ``scales[t - 1]`` schedule steps (the bias corrections follow the
    schedule's time); optionally keeps a snapshot of the packed masks and moments every 25 steps."""

    def __init__(self, scales: list[float], keep: dict | None = None) -> None:
        super().__init__(MDMConfig(adam_steps=len(scales), between_passes="scaled"))
        self.scales, self.elapsed, self.keep = scales, np.concatenate([[0.0], np.cumsum(scales)]), keep

    def _adam_update(self, p, g, m, v, active, t) -> None:
        k, tau = self.scales[t - 1], self.elapsed[t]
        b1, b2 = ADAM_BETAS[0] ** k, ADAM_BETAS[1] ** k
        keep = active[..., None, None]
        m.copy_(torch.where(keep, b1 * m + (1 - b1) * g, m))
        v.copy_(torch.where(keep, b2 * v + (1 - b2) * g * g, v))
        denom = v.sqrt() / math.sqrt(1 - ADAM_BETAS[1] ** tau) + ADAM_EPS
        p.copy_(torch.where(keep, p - self.config.lr * k / (1 - ADAM_BETAS[0] ** tau) * m / denom, p).clamp_(0, 1))
        if self.keep is not None and t % 25 == 0:
            self.keep[t] = (p.clone(), m.clone(), v.clone())


class PerSize(MDMLocalizer):
    """MDM whose mask ``i`` takes ``steps[i]`` Adam steps of ``2000 / steps[i]`` schedule steps each (a coarse mask
    fewer and longer ones than a fine mask, or the reverse), then stops."""

    def __init__(self, steps: list[int]) -> None:
        super().__init__(MDMConfig(adam_steps=max(steps), between_passes="scaled"))
        self.n = torch.tensor(steps, dtype=torch.float32)
        self.k = (2000 / self.n)[None, :, None, None]  # (1, N, 1, 1) schedule steps per Adam step

    def _adam_update(self, p, g, m, v, active, t) -> None:
        b1, b2 = ADAM_BETAS[0] ** self.k, ADAM_BETAS[1] ** self.k
        keep = active[..., None, None]
        m.copy_(torch.where(keep, b1 * m + (1 - b1) * g, m))
        v.copy_(torch.where(keep, b2 * v + (1 - b2) * g * g, v))
        denom = v.sqrt() / (1 - b2**t).sqrt() + ADAM_EPS
        p.copy_(torch.where(keep, p - self.config.lr * self.k / (1 - b1**t) * m / denom, p).clamp_(0, 1))
        active &= (t < self.n)[None, :]  # a mask that took its steps stops


def two_phases(n1: int, k1: float, n: int = 300, total: int = 2000) -> list[float]:
    return [k1] * n1 + [(total - n1 * k1) / (n - n1)] * (n - n1)


def geometric(k0: float, n: int = 300, total: int = 2000) -> list[float]:
    lo, hi = 1.0, 1.2
    for _ in range(100):  # the ratio r with k0 (r^n - 1) / (r - 1) = total
        r = (lo + hi) / 2
        lo, hi = (r, hi) if k0 * (r**n - 1) / (r - 1) < total else (lo, r)
    return [k0 * r**i for i in range(n)]


SCALES = {
    "constant 6.67 (300 steps)": [2000 / 300] * 300,
    "200 x 2, then 100 x 16": two_phases(200, 2),
    "100 x 3, then 200 x 8.5": two_phases(100, 3),
    "100 x 12, then 200 x 4": two_phases(100, 12),
    "geometric from 2": geometric(2.0),
    "300 x 1, then 340 x 5 (640 steps)": [1.0] * 300 + [5.0] * 340,
    "150 x 1, then 370 x 5 (520 steps)": [1.0] * 150 + [5.0] * 370,
    "linear 9 -> 1 (400 steps)": list(np.linspace(9, 1, 400)),
    "300 x 5.67, then 5 -> 1 (400 steps)": [17 / 3] * 300 + list(np.linspace(5, 1, 100)),
}


def mask_loss(p: torch.Tensor, x: torch.Tensor, sel, pairs, ups: MaskUpsampler) -> np.ndarray:
    """The default (normalised) loss of packed masks ``p (T, N, A, A)``, mean over the N masks, per task."""
    cfg, out = MDMConfig(), []
    with torch.no_grad():
        for t, (b, k) in enumerate(pairs):
            f_x, f_0 = sel.targets(torch.cat([x[b:b + 1], 0 * x[b:b + 1]]))[:, k]
            rec_w, l1_w = MDMLoss.of(cfg).weights(float(((f_x - f_0) ** 2).sum()))
            f_m = sel.targets(x[b:b + 1] * ups(p[t:t + 1])[0][:, None])[:, k]
            rec = rec_w * ((f_m - f_x) ** 2).reshape(len(f_m), -1).sum(1)
            out.append(float((rec + l1_w * p[t].abs().sum((1, 2)) / ups.cells).mean()))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="protopnet", choices=("protopnet", "xprotonet", "cnn"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--at-model-size", action="store_true")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--max-activations", type=int, default=4)
    ap.add_argument("--only", default="reference,scales,settle")
    ap.add_argument("--out", default="runs/schedule_study")
    args = ap.parse_args()
    out = Path(args.out)
    cfg = load_train_config(ROOT / "configs/synthetic_xprotonet.yaml") if args.model == "xprotonet" else demo_config()
    model = trained_model(args.model, cfg, out)
    x, sel, pairs, truths = tasks(args.model, model, cfg, args.size, args.images, args.at_model_size)
    pairs, truths = pairs[:args.max_activations], truths[:args.max_activations]
    cache = out / (f"reference_{args.model}_{args.size}.npz" if args.at_model_size
                   else f"reference_{args.model}_{args.size}px.npz")
    if not cache.exists():
        raise SystemExit(f"{cache} not found: run scripts/schedule_study.py with the same model and size first")
    ref = list(np.load(cache)["heat"])[:len(pairs)]

    def show(name: str, masks: torch.Tensor, steps: float) -> None:
        d = [float(dice(top_percentile_mask(masks_to_heatmap(m, 5.0), 90), top_percentile_mask(r, 90)))
             for m, r in zip(masks, ref)]
        print(f"{name:<44} Dice p90 {np.mean(d):.3f} / min {np.min(d):.3f}  steps {steps:5.0f}  ("
              + " ".join(f"{v:.3f}" for v in d) + ")", flush=True)

    todo = args.only.split(",")
    if "reference" in todo:
        show("full schedule from 0.501", MDMLocalizer(MDMConfig(time_scale=1.0, init=0.501)).fit_masks(
            x, sel, pairs).masks, 2000)
    if "scales" in todo:
        for name, scales in SCALES.items():
            show(name, VaryingScale(scales).fit_masks(x, sel, pairs).masks, len(scales))
    if "per-size" in todo:
        n = len(MDMConfig().sizes)
        for name, lo, hi in (("every mask 300 steps", 300, 300), ("coarse 200 -> fine 400 steps", 200, 400),
                             ("coarse 400 -> fine 200 steps", 400, 200), ("coarse 150 -> fine 450 steps", 150, 450)):
            steps = [round(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            show(name, PerSize(steps).fit_masks(x, sel, pairs).masks, float(np.mean(steps)))
    if "settle" in todo:
        snaps: dict = {}
        engine = VaryingScale([2000 / 600] * 600, keep=snaps)
        engine.fit_masks(x, sel, pairs)
        ups = MaskUpsampler(engine.config.sizes, tuple(x.shape[-2:]), "bilinear", torch.device("cpu"))
        last = max(snaps)
        show("600 steps, every mask to the end", ups(snaps[last][0]), last)
        for lag in (25, 50, 100):
            for eps in (0.005, 0.02, 0.05):
                final = snaps[last][0].clone()
                stopped = torch.full(final.shape[:2], last)  # the step at which each mask settled
                done = torch.zeros(final.shape[:2], dtype=torch.bool)
                for t in sorted(snaps):
                    if t - lag in snaps and t >= 100:
                        new = ((snaps[t][0] - snaps[t - lag][0]).abs().amax((2, 3)) < eps) & ~done
                        final[new], stopped[new], done = snaps[t][0][new], t, done | new
                show(f"settle: lag {lag}, eps {eps}", ups(final), float(stopped.float().mean()))
    if "trajectory" in todo:
        ups = MaskUpsampler(MDMConfig().sizes, tuple(x.shape[-2:]), "bilinear", torch.device("cpu"))
        for name, k in (("full schedule", 1.0), ("old default (400 x 5)", 5.0)):
            snaps = {}
            VaryingScale([k] * round(2000 / k), keep=snaps).fit_masks(x, sel, pairs)
            for t in sorted(snaps):
                if round(t * k) % 250:
                    continue
                p, masks = snaps[t][0], ups(snaps[t][0])
                loss = mask_loss(p, x, sel, pairs, ups)
                for i, (m, r, truth) in enumerate(zip(masks, ref, truths)):
                    heat, total, on = masks_to_heatmap(m, 5.0), m.sum(0).numpy(), np.asarray(truth) > 0
                    d = float(dice(top_percentile_mask(heat, 90), top_percentile_mask(r, 90)))
                    print(f"{name:<18} activation {i} schedule step {round(t * k):>4}: keeps {(heat > 0).mean():.4f}"
                          f", Dice p90 vs the full's end {d:.3f}, mask sum max on the object {total[on].max():.2f}"
                          f", off it {total[~on].max():.2f}, loss {loss[i]:.4f}", flush=True)


if __name__ == "__main__":
    main()
