"""``protomdm tune``."""

from __future__ import annotations

import argparse

from ..data import list_datasets
from ..errors import UserError
from ..evaluation.tuning import OBJECTIVES
from .options import add_job_options, data_config, images_per_search_help, mdm_config


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("tune", help="choose MDM's lambda, gamma and mask sizes against ground truth by k-fold "
                       "cross-validation (the paper's selection); writes an mdm.yaml for --mdm-config",
                       description="Explain each ground-truth finding's most activated prototype of its class on "
                       "the first --limit images of a dataset with boxes or masks, with every setting of the grid in "
                       "one batched search per --batch-images images (the base settings, from --mdm-config and the "
                       "flags, always among them), and pick the setting with the best mean --metric by --folds-fold "
                       "cross-validation over images. Writes mdm.yaml (the base settings with the chosen loss, "
                       "lambda, gamma and sizes), folds.csv (per fold: the setting chosen without it, its score on "
                       "it, the base setting's score there), settings.csv, scores.csv and summary.md.")
    p.add_argument("--dataset", default="synthetic", choices=list_datasets(), help="default synthetic")
    p.add_argument("--root", help="your copy of the dataset (all but synthetic)")
    p.add_argument("--config", help="YAML with a data: section (a training config will do); --dataset and --root "
                   "override it")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint trained on that dataset's classes")
    p.add_argument("--limit", type=int, default=20, help="images used (default 20: a labelled subset, as the paper "
                   "uses part of the dataset)")
    p.add_argument("--seed", type=int, default=1, help="picks the synthetic images and the folds (default 1)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5, the paper's)")
    p.add_argument("--lambdas", default="0.3,1,3,10", help="lambda values of the normalised loss (default "
                   "0.3,1,3,10)")
    p.add_argument("--paper", default="", metavar="L1:L2,...", help="(lambda1:lambda2) pairs of the paper's loss, "
                   "e.g. 0.01:1,0.001:1 (default none)")
    p.add_argument("--gammas", default="2,5,10", help="heatmap thresholds (default 2,5,10)")
    p.add_argument("--sizes", default="6-32", metavar="A-B,...", help="ranges of mask sizes (default 6-32, the "
                   "paper's 27 masks), e.g. 6-32,6-20,12-32")
    p.add_argument("--metric", default="dice", choices=OBJECTIVES, help="what is maximised (default dice)")
    p.add_argument("--percentile", type=float, default=90.0, help="of --metric dice or iou: the top-(100-p)%% mask "
                   "(default 90; the other metrics have none)")
    p.add_argument("--batch-images", type=int, metavar="N",
                   help=f"images in one search ({images_per_search_help()})")
    add_job_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.tuning import MDMGrid, tune

    def numbers(text: str, what: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise UserError(f"{what} must be numbers separated by commas, got {text!r}") from None

    def pairs(text: str, what: str, sep: str) -> tuple[tuple[float, ...], ...]:
        parts = [p for p in text.split(",") if p.strip()]
        if any(len(p.split(sep)) != 2 for p in parts):
            raise UserError(f"{what} must be A{sep}B pairs separated by commas, got {text!r}")
        return tuple(numbers(p.replace(sep, ","), what) for p in parts)

    grid = MDMGrid(lambdas=numbers(args.lambdas, "--lambdas"), paper=pairs(args.paper, "--paper", ":"),
                   gammas=numbers(args.gammas, "--gammas"), sizes=pairs(args.sizes, "--sizes", "-"))
    res = tune(args.ckpt, args.out, data_config(args), grid, base=mdm_config(args), limit=args.limit,
               seed=args.seed, folds=args.folds, metric=args.metric, percentile=args.percentile,
               batch_images=args.batch_images, device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    print((res.out_dir / "summary.md").read_text())
    print(f"wrote {res.out_dir / 'mdm.yaml'} (use it with --mdm-config), folds.csv, settings.csv, scores.csv")
    return 0
