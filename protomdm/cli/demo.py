"""``protomdm demo``."""

from __future__ import annotations

import argparse

from .options import add_mdm_options, mdm_config


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("demo", help="train a small synthetic ProtoPNet (once) and compare MDM with upsampling",
                       description="The built-in demo: no downloads, no data needed. Trains the synthetic ProtoPNet "
                       "of configs/synthetic_protopnet.yaml into OUT/model (reused on later runs), localizes test "
                       "images' prototypes with MDM and with the upsampling search, and writes OUT/report.png and "
                       "OUT/report.csv.")
    p.add_argument("--out", default="protomdm-demo", help="output folder (default protomdm-demo)")
    p.add_argument("--images", type=int, default=4, help="test images to localize (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace the report already in --out (the trained "
                   "model there is reused either way)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_mdm_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..jobs.demo import run_demo

    res = run_demo(args.out, args.images, mdm_config(args), progress=not args.quiet, overwrite=args.overwrite)
    print("\nmethod     mean Dice  mean IoU  s/image   (top 10% of the heatmap vs the planted object)")
    for m, v in res["means"].items():
        print(f"{m:<10} {v['dice']:>9.3f} {v['iou']:>9.3f} {v['seconds']:>8.2f}")
    me = res["measures"]
    print(f"\nthe demo model: test accuracy {me['test_accuracy']:.3f}; prototypes pushed onto an object of their own "
          f"class {me['prototypes_on_own_object']:.0%}; MDM pointing game {me['mdm_pointing_game']:.2f} (the "
          "heatmap's maximum on the explained object)")
    print(f"\nreport: {res['figure']} and {res['table']} (model: {res['model']})")
    print(f"prototype gallery: {res['gallery']}\ncase report: {res['case_report']}")
    return 0
