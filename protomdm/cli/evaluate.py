"""``protomdm evaluate``."""

from __future__ import annotations

import argparse

from ..config import BASELINES
from ..data import list_datasets
from ..evaluation.runner import EXPORTS, POLICIES, EvalSettings
from .options import add_job_options, data_config, images_per_search_help, method_configs


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("evaluate", help="score prototype localization against ground truth (NIH, CUB, synthetic)",
                       description="For each image and ground-truth finding, localize the prototypes of its class "
                       "with every method and write results.csv (long format), summary.csv/.md (the paper's "
                       "tables), metrics_vs_percentile.png and deletion_insertion.png.")
    p.add_argument("--dataset", required=True, choices=list_datasets())
    p.add_argument("--root", help="your copy of the dataset (nih, cub, table); check it with protomdm check-data")
    p.add_argument("--config", help="YAML with a data: section (a training config will do): a table's files, "
                   "columns and split; --dataset and --root override it")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.add_argument("--ckpt", required=True, help="protomdm checkpoint trained on that dataset's classes")
    d = EvalSettings()
    p.add_argument("--methods", help="comma-separated, of " + ", ".join(methods) + f" (default {','.join(d.methods)})")
    p.add_argument("--percentiles", help=f"comma-separated (default {','.join(f'{v:g}' for v in d.percentiles)})")
    p.add_argument("--limit", type=int, help="at most N images (synthetic: default 50)")
    p.add_argument("--prototype-policy", choices=POLICIES,
                   help="which of the class's prototypes (default: best-dice on nih, first otherwise)")
    p.add_argument("--seed", type=int, help=f"picks the synthetic images (default {d.seed}: the shipped configs' "
                   "test set, as their training data uses seed 0) and the stability noise")
    p.add_argument("--truth", choices=("segmentation", "parts", "bbox"), help=f"CUB ground truth (default {d.truth})")
    p.add_argument("--part-half-width", type=int, help="CUB part squares' half side, original pixels (default "
                   f"{d.part_half_width})")
    p.add_argument("--no-faithfulness", action="store_true", help="skip Average Drop/Increase and "
                   "deletion/insertion (faster)")
    p.add_argument("--batch-images", type=int, metavar="N", help="images localized in one search (MDM trains all "
                   f"their masks together; {images_per_search_help()})")
    p.add_argument("--deletion-steps", type=int, help=f"deletion/insertion curve steps (default {d.deletion_steps})")
    p.add_argument("--faithfulness-baseline", choices=BASELINES, help="what removed pixels become in "
                   f"deletion/insertion (default {d.baseline}; zero = the normalisation mean)")
    p.add_argument("--maps", metavar="DIR", help="also score heatmaps made elsewhere, as method `maps`: one "
                   "<image id>_<finding>_map.pkl (CheXlocalize's gradcam_maps layout) or .npy per image and finding, "
                   "ids and findings as results.csv names them; alone (no --methods), only these are scored")
    p.add_argument("--export", choices=EXPORTS, help="chexlocalize: also write each method's maps (_map.pkl) and "
                   "masks (segmentations.json, at p90) under --out/chexlocalize/METHOD/, for CheXlocalize's eval.py")
    add_job_options(p, resume="continue an interrupted run in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..distributed import init_distributed
    from ..evaluation.runner import EvalSettings, evaluate

    dist = init_distributed(resolve_device(args.device))
    methods = args.methods if args.methods is not None or args.maps is None else ""  # --maps alone: only the maps
    given = {"data": data_config(args), "methods": methods, "percentiles": args.percentiles,
             "limit": args.limit, "prototype_policy": args.prototype_policy, "seed": args.seed, "truth": args.truth,
             "part_half_width": args.part_half_width, "deletion_steps": args.deletion_steps,
             "baseline": args.faithfulness_baseline, "batch_images": args.batch_images,
             "method_configs": method_configs(args),
             "maps": args.maps, "export": args.export and [args.export]}
    settings = EvalSettings(**{k: v for k, v in given.items() if v is not None},
                            faithfulness=not args.no_faithfulness)
    res = evaluate(args.ckpt, args.out, settings, device=args.device, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.quiet, dist=dist)
    if not dist.is_main:
        return 0
    print((res.out_dir / "summary.md").read_text())
    if res.skipped:
        print(f"skipped {len(res.skipped)} image(s), listed with reasons in {res.out_dir / 'skipped.txt'}")
    names = ("results.csv", "curves.csv", "summary.csv", "differences.csv", "summary.md", "metrics_vs_percentile.png",
             "deletion_insertion.png", "skipped.txt", "chexlocalize")
    print(f"results in {res.out_dir}: " + ", ".join(n for n in names if (res.out_dir / n).exists()))
    return 0
