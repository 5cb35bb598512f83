#!/usr/bin/env python
"""Which MDM loss and area weight point at the evidence? (issue 27)

Trains (or reuses, under --out) three small models on the built-in synthetic data: the demo's ProtoPNet, the
synthetic XProtoNet (multi-label, grey) and a plain CNN classifier. On held-out images (a seed that training and the
tests never use) it explains, per image, the most activated own prototype of each present finding (prototype
networks) or the true class's logit (the CNN), for every setting of a grid in one batched search per model
(protomdm.evaluation.tuning): lambda_l1 of the normalised loss on a log grid, the paper's literal loss (lambda1 of
CUB and NIH, lambda2 1) and gamma. It prints, per model and setting, Dice/IoU of the top-20/10/5% masks and of the
mask with the object's own area, the pointing game, deletion/insertion AUC and the heatmap's non-zero area, beside
the upsampling search (the networks' own) where there is one, and writes the long table to OUT/study.csv.

    python scripts/mdm_study.py --out runs/mdm_study                   # 3 models, 8 images each, about 30 min here
    python scripts/mdm_study.py --out runs/mdm_study --models cnn --images 4 --gammas 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from schedule_study import trained_model

from protomdm import LogitSelector, MDMConfig, UpsampleLocalizer
from protomdm.config import from_dict
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.errors import UserError
from protomdm.evaluation.faithfulness import deletion_insertion
from protomdm.evaluation.metrics import curve_auc
from protomdm.evaluation.tuning import MDMGrid, Target, default_targets, grid_scores, heatmap_metrics, setting_means
from protomdm.jobs.demo import demo_config
from protomdm.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 1000  # training uses seeds 0 (train) and 1 (test); the tests use small seeds


def model_and_targets(kind: str, out: Path, n: int, seed: int):
    """The trained model, its config, held-out images ``(B, C, H, W)``, a selector and the targets."""
    cfg = load_train_config(ROOT / "configs/synthetic_xprotonet.yaml") if kind == "xprotonet" else demo_config()
    model = trained_model(kind, cfg, out)
    data = SyntheticLesions(cfg.model.class_names, n=n, size=cfg.model.img_size[0], channels=cfg.model.in_channels,
                            multilabel=kind == "xprotonet", seed=seed)
    samples = [data.sample(i) for i in range(n)]
    x = model_input(torch.stack([torch.from_numpy(s.image) for s in samples]), cfg.model)
    findings = [(b, int(c), s.masks[c], f"{seed}-{b}", cfg.model.class_names[c])
                for b, s in enumerate(samples) for c in np.flatnonzero(s.labels)]
    if kind == "cnn":
        return model, x, LogitSelector(model, [0, 1, 2]), [Target(b, c, t, i, f) for b, c, t, i, f in findings]
    return model, x, *default_targets(model, x, findings)


def upsample_scores(model, x, selector, targets, percentiles, deletion_steps) -> pd.DataFrame:
    """The networks' own search on the same targets, in the grid's columns (setting ``upsample``)."""
    rows = []
    for t in targets:
        sel = selector.single(t.k)
        loc = UpsampleLocalizer().localize(x[t.image], sel)
        found = heatmap_metrics(loc.heatmap, t.truth, percentiles)
        if deletion_steps:
            with torch.no_grad():
                full = float(sel(x[t.image:t.image + 1]).float().mean())
            dele, ins = deletion_insertion(sel, x[t.image], loc.heatmap, deletion_steps)
            found += [("deletion_auc", np.nan, float(curve_auc(dele / full))),
                      ("insertion_auc", np.nan, float(curve_auc(ins / full)))]
        rows += [{"image": t.image_id, "finding": t.finding, "loss": "upsample", "metric": m, "percentile": p,
                  "value": v} for m, p, v in found]
    return pd.DataFrame(rows)


def table(means: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, one column per metric (percentile in the name)."""
    m = means.assign(col=[f"{a}@p{p:g}" if p == p else a for a, p in zip(means.metric, means.percentile)])
    keys = ["model", "loss", "lambda_l1", "lambda1", "lambda2", "gamma"]
    wide = m.pivot_table(index=keys, columns="col", values="value", dropna=False, sort=False).reset_index()
    cols = ["dice@p80", "dice@p90", "dice_ceiling@p90", "dice@p95", "iou@p90", "dice_area", "iou_area", "pointing_game",
            "deletion_auc", "insertion_auc", "nonzero_area"]
    return wide[keys + [c for c in cols if c in wide]].dropna(axis=0, how="all", subset=[c for c in cols if c in wide])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="protopnet,xprotonet,cnn")
    ap.add_argument("--images", type=int, default=8, help="held-out images per model (default 8)")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--lambdas", default="0.001,0.003,0.01,0.03,0.1,0.3,1,3,10,30")
    ap.add_argument("--paper", default="0.01:1,0.001:1", help="lambda1:lambda2 pairs of the paper's loss (CUB, NIH)")
    ap.add_argument("--gammas", default="0,2,5,10")
    ap.add_argument("--deletion-steps", type=int, default=16)
    ap.add_argument("--mdm", default="", help="MDM overrides as key=value,... (e.g. time_scale=10,tol=0)")
    ap.add_argument("--out", default="runs/mdm_study")
    ap.add_argument("--fresh", action="store_true", help="recompute models whose OUT/study_MODEL.csv exists")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:  # values read as YAML scalars (null, false, 10), checked as a config file's are
        base = from_dict(MDMConfig, {k: yaml.safe_load(v) for k, _, v in
                                     (kv.partition("=") for kv in args.mdm.split(",") if kv)}, where="--mdm")
    except UserError as e:
        ap.error(str(e))
    grid = MDMGrid(lambdas=tuple(float(v) for v in args.lambdas.split(",") if v),
                   paper=tuple((float(a), float(b)) for a, b in (p.split(":") for p in args.paper.split(",") if p)),
                   gammas=tuple(float(v) for v in args.gammas.split(",")))
    frames = []
    for kind in args.models.split(","):
        done = out / f"study_{kind}.csv"  # one file per model, so an interrupted study resumes where it stopped
        if done.exists() and not args.fresh:
            frames.append(pd.read_csv(done))
            print(f"{kind}: reusing {done}")
            continue
        model, x, sel, targets = model_and_targets(kind, out, args.images, args.seed)
        t0 = time.perf_counter()
        scores = grid_scores(x, sel, targets, grid, base, deletion_steps=args.deletion_steps, progress=True)
        print(f"{kind}: {len(targets)} targets x {len(grid.losses())} losses in {time.perf_counter() - t0:.0f} s",
              flush=True)
        parts = [scores]
        if kind != "cnn":
            parts.append(upsample_scores(model, x, sel, targets, (80, 90, 95), args.deletion_steps))
        frames.append(pd.concat(parts, ignore_index=True).assign(model=kind))
        frames[-1].to_csv(done, index=False)
    scores = pd.concat(frames, ignore_index=True)
    scores.to_csv(out / "study.csv", index=False)
    means = pd.concat([setting_means(f).assign(model=f.model.iloc[0]) for _, f in scores.groupby("model", sort=False)])
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_columns", 30):
        print(table(means).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
