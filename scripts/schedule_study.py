#!/usr/bin/env python
"""Which MDM schedule reproduces the paper's full 2000-step result, on every kind of model? (issue 12)

Trains (or reuses, under --out) three small models on the built-in synthetic data: the demo's ProtoPNet, the
synthetic XProtoNet (multi-label) and a plain CNN classifier, at 64 px on the tiny backbone (``--trained-at`` and
``--backbone``: another side, another backbone). For each model and each input size (the models are
fully convolutional, so they run at that size on larger images of the same generator, whose objects keep the size
they had in training: at 224 px the image holds more background, and the masks' cells are 3.5 times as many
pixels), it explains, per test image, one
activation: the best own prototype's score of every present finding (prototype networks) or the true class's logit
(the CNN). It computes the paper's schedule (every mask 2000 Adam steps; batched, which equals one mask at a time
exactly; on the network as it is, without the BatchNorm folding and channels-last layout that searches use by
default, as the cached references were computed) once (cached; activations beyond those cached are added), then runs
each candidate schedule and prints its agreement with the full schedule: Dice of the p90 masks (mean and minimum over
the explained activations), Pearson r of the heatmaps, passes per mask, and seconds per activation, every task of
a model and size in one batched search.

    python scripts/schedule_study.py --out runs/schedule_study                  # all models, sizes 48 and 64
    python scripts/schedule_study.py --out runs/schedule_study --models cnn --sizes 64 --images 2
    python scripts/schedule_study.py --sizes 224 --at-model-size --images 4 --max-activations 4   # the README's set B
    python scripts/schedule_study.py --models xprotonet --trained-at 224 --sizes 224 --images 4 --max-activations 4

Each row also scores the heatmaps against the planted objects (p90 Dice and pointing game), the reference's too: a
schedule can disagree with the full one and still find the evidence as well. The last two columns are the final MDM
loss (mean over the activations and their masks) and its ratio to the full schedule's (where the cache has it): above
1, the schedule stopped in a worse optimum of the same objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from protomdm import LogitSelector, MDMConfig, MDMLocalizer, PrototypeSelector, load_model
from protomdm.data.groundtruth import resize_mask
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.evaluation.metrics import dice, pointing_game, top_percentile_mask
from protomdm.jobs.demo import demo_config
from protomdm.models.backbones import build_backbone
from protomdm.training import train, trainer
from protomdm.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
FULL = {"time_scale": 1.0}  # the paper's schedule: every one of the 2000 steps taken
PLAIN = {"fold_batchnorm": False, "channels_last": False}  # the network as it is, not prepared for speed
REFERENCE = {**FULL, **PLAIN}  # what the cached references were computed with (before folding and channels-last)
OLD = {"time_scale": 1.0, "tol": 0.005, "extrapolate_after": 1000}  # the default before the 400-step schedule
SCALED = {"between_passes": "scaled"}  # one Adam step of steps / adam_steps schedule steps per pass (the old engine)
CANDIDATES: dict[str, dict[str, Any]] = {  # name: MDMConfig overrides
    "default": {},
    "200 passes": {"adam_steps": 200},
    "150 passes": {"adam_steps": 150},
    "100 passes": {"adam_steps": 100},
    "600 passes": {"adam_steps": 600},
    "400 scaled steps (old default)": {"adam_steps": 400, **SCALED},
    "300 scaled steps": {"adam_steps": 300, **SCALED},
    "adaptive stop (older default)": OLD,
    "tol 0.02": {**OLD, "tol": 0.02},
    "400 -> 2000 extrapolated": {**OLD, "extrapolate_after": 400, "tol": None},
    "400 steps, cut short": {"steps": 400, **FULL},
    "600 scaled steps": {"adam_steps": 600, **SCALED},
    "1000 scaled steps": {"adam_steps": 1000, **SCALED},
    "full schedule from 0.501": {**FULL, "init": 0.501},  # is the reference itself stable?
    "default in bf16": {"precision": "bf16"},  # the forward and backward passes in bfloat16 (autocast)
    "default on the network as it is": PLAIN,  # without BatchNorm folded and channels-last: do they change maps?
    "full schedule on the prepared network": FULL,  # the reference's schedule with them: rounding alone
}


class PlainCNN(nn.Module):
    """A plain classifier: a backbone (default the tiny one), global average pooling and a linear layer."""

    def __init__(self, classes: int, backbone: str = "tiny") -> None:
        super().__init__()
        self.features, ch = build_backbone(backbone, False, 3)
        self.head = nn.Linear(ch, classes)
        self.num_classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def train_cnn(path: Path, cfg) -> PlainCNN:
    """The plain CNN on the synthetic data at ``cfg``'s input size and backbone, trained to ``path`` or read from
    there."""
    torch.manual_seed(0)
    model = PlainCNN(cfg.model.num_classes, cfg.model.backbone)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    data = SyntheticLesions(cfg.model.class_names, n=600, size=cfg.model.img_size[0], seed=0)
    xs = model_input(torch.stack([data[i][0] for i in range(len(data))]), cfg.model)
    ys = torch.tensor([int(data[i][1]) for i in range(len(data))])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(xs)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def trained_as(cfg) -> str:
    """The suffix of the names of models trained with ``cfg``: its backbone and side, where they are not the demo's
    (the tiny models trained at 64 px keep their names)."""
    backbone, side = cfg.model.backbone, cfg.model.img_size[0]
    return ("" if backbone == "tiny" else f"_{backbone}") + ("" if side == 64 else f"_{side}px")


def trained_model(kind: str, cfg, out: Path) -> nn.Module:
    """The study's ``kind`` of model (protopnet | xprotonet | cnn) trained with ``cfg`` under ``out`` (as
    ``kind`` + :func:`trained_as`), or reused from there.

    A prototype network on a backbone other than the tiny one, on 3-channel images, starts from the backbone of the
    study's plain CNN of the same backbone and side (trained first if absent), as the paper's start from ImageNet's:
    from random weights a ProtoPNet on a ResNet-18 stayed near chance for 4 epochs."""
    suffix = trained_as(cfg)
    name = kind + suffix
    if kind == "cnn":
        return train_cnn(out / f"{name}.pt", cfg)
    if not (out / name / "best.pt").exists():
        cfg = dataclasses.replace(cfg, device="cpu")
        if cfg.model.backbone == "tiny" or cfg.model.in_channels != 3:
            train(cfg, out / name, progress=False)
        else:
            features = train_cnn(out / f"cnn{suffix}.pt", cfg).features.state_dict()
            build = trainer.create_model

            def from_cnn(model_cfg):  # the model the trainer builds, its backbone the CNN's
                model = build(model_cfg)
                model.get_submodule("features").load_state_dict(features)
                return model

            with mock.patch.object(trainer, "create_model", from_cnn):
                train(cfg, out / name, progress=True)
    return load_model(out / name / "best.pt")


def tasks(kind: str, model, cfg, size: int, n: int, at_model_size: bool = False):
    """Images ``(B, C, H, W)``, a selector, the (image, target) pairs to explain and each pair's ground-truth mask at
    the input's size. ``at_model_size``: the images are generated at ``size`` with objects in proportion, then
    resized to the model's input size (the study's "set B" at 224), instead of run at ``size``."""
    multilabel = kind == "xprotonet"
    trained = SyntheticLesions(cfg.model.class_names, size=cfg.model.img_size[0],  # the objects' size in training
                               object_size=cfg.data.object_size)
    data = SyntheticLesions(cfg.model.class_names, n=n, size=size, channels=cfg.model.in_channels,
                            multilabel=multilabel, seed=cfg.data.seed + 1,
                            object_size=None if at_model_size else trained.object_size)
    samples = [data.sample(i) for i in range(n)]
    # the model runs at ``size`` (it is fully convolutional), or at its own size
    spec = cfg.model if at_model_size else dataclasses.replace(cfg.model, img_size=(size, size))
    x = model_input(torch.stack([torch.from_numpy(s.image) for s in samples]), spec)
    truth = lambda b, c: resize_mask(samples[b].masks[c], tuple(x.shape[-2:]))  # noqa: E731
    if kind == "cnn":
        pairs = [(b, int(s.labels.argmax())) for b, s in enumerate(samples)]
        return x, LogitSelector(model, list(range(cfg.model.num_classes))), pairs, [truth(b, c) for b, c in pairs]
    with torch.no_grad():
        scores = model.prototype_scores(x)
    targets, pairs, truths = [], [], []
    for b, s in enumerate(samples):
        for c in np.nonzero(s.labels)[0]:
            own = model.prototypes_of_class(int(c))
            j = own[int(scores[b, own].argmax())]
            targets += [j] if j not in targets else []
            pairs.append((b, targets.index(j)))
            truths.append(truth(b, int(c)))
    return x, PrototypeSelector(model, targets), pairs, truths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3, help="test images per model and size (default 3)")
    ap.add_argument("--max-activations", type=int, default=2, help="at most this many explained activations per "
                    "model and size, the first ones (default 2: the reference costs minutes each on a CPU)")
    ap.add_argument("--sizes", default="48,64", help="input sides (default 48,64; the models were trained at 64)")
    ap.add_argument("--models", default="protopnet,xprotonet,cnn")
    ap.add_argument("--only", help="comma-separated candidate names to run (default all)")
    ap.add_argument("--at-model-size", action="store_true", help="generate the images at each size with objects in "
                    "proportion and resize them to the models' input side (the README's set B: --sizes 224)")
    ap.add_argument("--trained-at", type=int, default=64, help="the input side the models are trained at (default "
                    "64, the demo's; another is trained on the spot, objects in proportion, under --out as "
                    "<model>_<side>px, e.g. XProtoNet at 224: --trained-at 224 --sizes 224)")
    ap.add_argument("--backbone", default="tiny", help="the models' backbone (default tiny; another, e.g. resnet18, "
                    "is trained on the spot under --out as <model>_<backbone>[_<side>px], a CNN from random weights, "
                    "a ProtoPNet from that CNN's backbone)")
    ap.add_argument("--out", default="runs/schedule_study")
    args = ap.parse_args()
    out = Path(args.out)
    configs = {"protopnet": demo_config(), "xprotonet": load_train_config(ROOT / "configs/synthetic_xprotonet.yaml"),
               "cnn": demo_config()}
    names = args.only.split(",") if args.only else list(CANDIDATES)
    print(f"{'model':<10} {'size':>4} {'n':>3} {'schedule':<28} {'passes':>6} {'s/activation':>12} "
          f"{'Dice p90 mean':>13} {'min':>6} {'Pearson r':>9} {'vs truth: Dice p90':>18} {'pointing':>8} {'loss':>9} "
          f"{'loss/full':>9}", flush=True)
    side, backbone = args.trained_at, args.backbone
    for kind in args.models.split(","):
        base = configs[kind]
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, img_size=(side, side), backbone=backbone))
        model, suffix = trained_model(kind, cfg, out), trained_as(cfg)
        for size in (int(v) for v in args.sizes.split(",")):
            x, sel, pairs, truths = tasks(kind, model, cfg, size, args.images, args.at_model_size)
            pairs = pairs[:args.max_activations]

            def run(overrides: dict, todo: list | None = None) -> tuple[list, float]:
                todo = todo or pairs
                t0 = time.perf_counter()
                locs = MDMLocalizer(dataclasses.replace(MDMConfig(), **overrides)).localize_pairs(x, sel, todo)
                return locs, (time.perf_counter() - t0) / len(todo)

            def against_truth(heat: list) -> str:
                """Mean p90 Dice against the pairs' objects and the pointing game, as the last two columns."""
                gt = [float(dice(top_percentile_mask(h, 90), t)) for h, t in zip(heat, truths)]
                hits = [bool(pointing_game(h, t)) for h, t in zip(heat, truths)]
                return f"{np.mean(gt):>18.3f} {np.mean(hits):>8.2f}"

            # the first activations' heatmaps, in order (set B keeps the name it was cached under first)
            cache = out / (f"reference_{kind}_{size}{suffix}.npz" if args.at_model_size
                           else f"reference_{kind}_{size}px{suffix}.npz")
            ref, ref_s, ref_loss = [], 0.0, []
            if cache.exists():  # the activations cached so far; the rest are computed and added
                saved = np.load(cache)
                ref, ref_s = list(saved["heat"])[:len(pairs)], float(saved["seconds"])
                ref_loss = list(saved["loss"] if "loss" in saved else [np.nan] * len(saved["heat"]))[:len(pairs)]
            if len(ref) < len(pairs):
                locs, new_s = run(REFERENCE, pairs[len(ref):])
                ref_s = (ref_s * len(ref) + new_s * len(locs)) / len(pairs)
                ref += [lo.heatmap for lo in locs]
                ref_loss += [lo.settings["final_loss"] or np.nan for lo in locs]
                np.savez(cache, heat=np.stack(ref), seconds=ref_s, loss=np.array(ref_loss))
            print(f"{kind:<10} {size:>4} {len(pairs):>3} {'paper (2000 steps)':<28} {2000:>6} {ref_s:>12.1f} "
                  f"{'':>13} {'':>6} {'':>9} {against_truth(ref)} {np.nanmean(ref_loss):>9.4f}", flush=True)
            for name in names:
                locs, sec = run(CANDIDATES[name])
                heat = [lo.heatmap for lo in locs]
                d = [float(dice(lo.binary(90), top_percentile_mask(r, 90)))
                     for lo, r in zip(locs, ref)]
                r = [float(np.corrcoef(h.ravel(), g.ravel())[0, 1]) for h, g in zip(heat, ref)
                     if h.std() > 0 and g.std() > 0]
                steps = np.mean([lo.steps for lo in locs])
                loss = np.array([lo.settings["final_loss"] or np.nan for lo in locs])
                known = np.isfinite(ref_loss)  # the mean over the activations whose reference loss is cached, if any
                ratio = loss[known] / np.asarray(ref_loss)[known]
                loss = loss[known] if known.any() else loss
                print(f"{kind:<10} {size:>4} {len(pairs):>3} {name:<28} {steps:>6.0f} {sec:>12.1f} "
                      f"{np.mean(d):>13.3f} {np.min(d):>6.3f} {np.mean(r) if r else float('nan'):>9.3f} "
                      f"{against_truth(heat)} {np.nanmean(loss):>9.4f} {np.mean(ratio) if len(ratio) else np.nan:>9.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
