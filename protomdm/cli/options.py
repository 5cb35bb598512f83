"""Options and settings that several commands share: MDM's flags and each method's settings, what a localize job
explains, the job flags, the data config."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..errors import UserError
from ..models import list_architectures


def parse_classes(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one class name, comma-separated")
    return names


def images_per_search_help() -> str:
    """``--batch-images``' default, in the words of :func:`~protomdm.explain.mdm.images_per_search`'s constants."""
    from ..explain.mdm import CPU_IMAGES, GPU_SHARE, MAX_IMAGES_PER_SEARCH

    return (f"default {CPU_IMAGES} on the CPU; on a GPU as many as {GPU_SHARE * 100:.0f}%% of its free memory "
            f"holds, measured on the model, at most {MAX_IMAGES_PER_SEARCH}")  # %%: argparse's %


def add_mdm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method-config", metavar="[METHOD=]YAML", action="append", help="a method's settings from a "
                   "YAML file (the fields of its settings, e.g. masks: 2000 for rise); METHOD= names the method when "
                   "it is not --method (evaluate: rise=rise.yaml); repeatable")
    g = p.add_argument_group("MDM settings (defaults: configs/mdm.yaml; the paper's masks, optimiser and 2000-step "
                             "schedule in 300 passes)")
    g.add_argument("--mdm-config", metavar="YAML", help="read MDM settings from a YAML file; flags below override it "
                   "(the same as --method-config mdm=YAML)")
    g.add_argument("--steps", type=int, help="schedule length per mask (default 2000, the paper's)")
    g.add_argument("--adam-steps", "--passes", dest="adam_steps", type=int, metavar="N", help="model passes per "
                   "mask, each followed by --steps / N of the schedule's Adam steps (default 300; 0: one pass "
                   "per schedule step); --passes is the same")
    g.add_argument("--between-passes", choices=("linear", "scaled"), help="linear (default): every Adam step of the "
                   "schedule, the gradient between passes from the activation linearised at the last pass; scaled: "
                   "one Adam step per pass, of --steps / N schedule steps (lr x that, Adam's decay rates ^ that)")
    g.add_argument("--extrapolate-after", type=int, metavar="N", help="take at most N passes, then extrapolate "
                   "each mask's trajectory linearly to the schedule's end (default: no cap)")
    g.add_argument("--tol", type=float, help="stop an image's masks once their projected p90 mask changes by at most "
                   "this (1 - Dice) over two checks (default: no adaptive stop)")
    g.add_argument("--full-schedule", action="store_true", help="run the model at every step of --steps, as the "
                   "paper does (no adaptive stop, no extrapolation): slow, the reference")
    g.add_argument("--lambda", dest="lambda_l1", type=float, help="weight of the L1 mask-area term (default 3)")
    g.add_argument("--loss", choices=("normalised", "paper"), help="normalised (default: the reconstruction term "
                   "divided by the effect of masking everything, weighted against --lambda) or paper (Algorithm 1 as "
                   "written: --lambda1 x the squared change + --lambda2 x mean|d|)")
    g.add_argument("--lambda1", type=float, help="--loss paper: weight of the squared change (default 1e-3; the "
                   "paper: 1e-2 CUB, 1e-3 NIH)")
    g.add_argument("--lambda2", type=float, help="--loss paper: weight of mean|d| (default 1)")
    g.add_argument("--time-scale", type=float, metavar="K", help="each pass stands for K of the schedule's steps: "
                   "--steps / K passes (default --steps / --adam-steps)")
    g.add_argument("--gamma", type=float, help="heatmap = sum of masks, zero where the sum < gamma (default 5)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 3e-3)")
    g.add_argument("--baseline", choices=("zero", "blur", "mean"), help="what masked-out pixels become (default zero)")
    g.add_argument("--batch-masks", type=int, help="most masked images per forward pass (halved on out-of-memory)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="autocast precision of the "
                   "passes; auto: bf16 where the first step's passes run >= 15%% faster in it, else fp32")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="lay the network's weights and "
                   "the masked images out channels-last (default: yes)")
    g.add_argument("--fold-batchnorm", action=argparse.BooleanOptionalAction, help="fold BatchNorm into the "
                   "convolution before it for the search, where that keeps the activations (default: yes)")


def add_explained_options(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """--model, --ckpt, --prototype | --class, --method and --percentile: what a LocalizeJob explains and how."""
    from ..jobs.localize import LocalizeJob

    p.add_argument("--model", choices=list_architectures(), help="refuse a checkpoint of another architecture")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint (see init-model / train)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--prototype", type=int, help="prototype index (default: the most activated prototype of "
                     "--class, or of the predicted class)")
    who.add_argument("--class", dest="class_name", help="class name: explain its most activated prototype")
    p.add_argument("--method", metavar="METHOD", help="a registered localizer: " + ", ".join(methods)
                   + f" (default {LocalizeJob.method}; upsample is the network's own search)")
    p.add_argument("--percentile", type=float, help="keep the top (100-p)%% of the heatmap (default "
                   f"{LocalizeJob.percentile:g})")


def job_settings(args: argparse.Namespace, **more) -> dict:
    """The LocalizeJob settings given on the command line (what was not given keeps the job's default)."""
    given = dict(architecture=args.model, method=args.method, prototype=args.prototype, class_name=args.class_name,
                 percentile=args.percentile, method_configs=method_configs(args), device=args.device,
                 keep_phi=args.keep_phi,
                 **more)
    return {k: v for k, v in given.items() if v is not None}


def add_job_options(p: argparse.ArgumentParser, resume: str | None = None) -> None:
    """--device, --out, --overwrite, [--resume] and --quiet, and the MDM settings: what every job command takes."""
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda "
                   "or cuda:N (default auto)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    if resume:
        p.add_argument("--resume", action="store_true", help=resume)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_mdm_options(p)


def method_configs(args: argparse.Namespace) -> dict:
    """Each method's settings from --method-config (a method without METHOD= is --method's, else MDM's), MDM's
    with its own flags applied."""
    from ..explain.registry import list_localizers, method_settings

    configs = {}
    for spec in args.method_config or []:
        name, sep, path = spec.partition("=")
        if not sep or name not in list_localizers():
            name, path = getattr(args, "method", None) or "mdm", spec
        configs[name] = method_settings(name, path)
    configs["mdm"] = mdm_config(args, configs.get("mdm"))
    return configs


def mdm_config(args: argparse.Namespace, base=None):
    from ..explain.mdm import MDMConfig, load_mdm_config

    cfg = load_mdm_config(args.mdm_config) if args.mdm_config else (base or MDMConfig())
    overrides = {k: getattr(args, k) for k in ("steps", "loss", "lambda_l1", "lambda1", "lambda2", "time_scale", "gamma",
                                                "lr", "baseline", "batch_masks", "precision", "channels_last",
                                                "fold_batchnorm", "between_passes")
                 if getattr(args, k) is not None}
    if args.tol is not None:
        overrides["tol"] = args.tol if args.tol > 0 else None
    if args.extrapolate_after is not None:
        overrides["extrapolate_after"] = args.extrapolate_after if args.extrapolate_after > 0 else None
    if args.adam_steps is not None:
        overrides["adam_steps"] = args.adam_steps if args.adam_steps > 0 else None
    if args.full_schedule:
        overrides.update(tol=None, extrapolate_after=None, time_scale=1.0)
    return dataclasses.replace(cfg, **overrides)


def data_config(args: argparse.Namespace):
    """The data config of --config (its data: section), with --dataset and --root over it."""
    from ..config import from_dict, load_yaml
    from ..data.config import DataConfig

    section: dict[str, Any] = {}
    if args.config:
        raw = load_yaml(args.config)
        section = raw["data"] if "data" in raw else raw
        if not isinstance(section, dict):
            raise UserError(f"{args.config}: its data: section is not a mapping")
    section = {**section, "dataset": args.dataset}
    if args.root:
        section["root"] = args.root
    if getattr(args, "split", None):
        section["split"] = args.split
    if args.dataset != "synthetic" and not section.get("root"):
        raise UserError(f"the {args.dataset} dataset needs `root` (the folder of your copy), or a `config` naming it")
    return from_dict(DataConfig, section, where=f"{args.config}: data" if args.config else "data")
