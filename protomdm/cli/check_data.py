"""``protomdm check-data``."""

from __future__ import annotations

import argparse

from ..data import list_datasets
from .options import data_config


def add_parser(sub, methods: list[str]) -> None:
    p = sub.add_parser("check-data", help="check a copy of NIH ChestX-ray14 or CUB-200-2011 against its manifest, "
                       "or your own table",
                       description="NIH and CUB: compares the files, columns and row counts of your copy with the "
                       "manifest shipped inside protomdm (protomdm/data/manifests/DATASET.yaml). table: reads the "
                       "table, boxes and masks as training would and says what they hold and what is wrong. Exit 1 "
                       "if something needed is missing.")
    p.add_argument("--dataset", required=True, choices=[d for d in list_datasets() if d != "synthetic"])
    p.add_argument("--root", help="the folder you unpacked the dataset into (table: the folder the paths are "
                   "relative to)")
    p.add_argument("--config", help="table: YAML with a data: section (a training config will do)")
    p.add_argument("--split", choices=("val", "test"), help="chexlocalize: which of its sets (default val)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import dataset_source

    checks = dataset_source(data_config(args)).check()
    for c in checks:
        print(f"{c.status:>9}  {c.item}: {c.detail}")
    bad = [c for c in checks if c.status in ("missing", "malformed")]
    print(f"{args.dataset} at {data_config(args).root}: " + ("complete" if all(c.status in ("ok", "optional") for c in checks)
                                                 else f"{len(bad)} problem(s)" if bad else "usable, partial copy"))
    return 1 if bad else 0
