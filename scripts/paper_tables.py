#!/usr/bin/env python
"""Our evaluation tables next to the MDM paper's headline numbers, several models side by side.

    python scripts/paper_tables.py --dataset nih protopnet=runs/reproduce_nih/nih_protopnet/eval_boxes \
        xprotonet=runs/reproduce_nih/nih_xprotonet/eval_boxes > tables.md

Reads each folder's summary.csv (written by `protomdm evaluate`; a folder may be named NAME=FOLDER) and prints
Dice per method and percentile for every folder side by side (the paper's Tables 5 and 6 on NIH: ProtoPNet and
XProtoNet), each folder's full tables (Dice/IoU/PPV/Sensitivity, faithfulness), and the paper's headline Dice for
ProtoPNet's upsampling search and for MDM beside ours. The paper states those two numbers per dataset; we do not
guess the rest of its tables.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PAPER_DICE = {"nih": {"upsample": 0.256, "mdm": 0.283}, "cub": {"upsample": 0.432, "mdm": 0.516}}


def read_dice(folder: Path) -> dict[tuple[str, float], float]:
    """Mean Dice over all findings per (method, percentile) from an evaluation's summary.csv."""
    with open(folder / "summary.csv", newline="") as f:
        return {(r["method"], float(r["percentile"])): float(r["value"]) for r in csv.DictReader(f)
                if r["metric"] == "dice" and r["finding"] == "all" and r["percentile"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(PAPER_DICE))
    ap.add_argument("folders", nargs="+", help="evaluation folders, each as FOLDER or NAME=FOLDER")
    args = ap.parse_args()
    runs = [(f.split("=", 1) if "=" in f else (Path(f).name, f)) for f in args.folders]
    runs = [(name, Path(folder)) for name, folder in runs]
    for _, folder in runs:
        if not (folder / "summary.csv").exists():
            raise SystemExit(f"{folder / 'summary.csv'} not found: run protomdm evaluate into {folder} first")
    dice = {name: read_dice(folder) for name, folder in runs}
    ps = sorted({p for d in dice.values() for _, p in d})
    methods = list(dict.fromkeys(m for d in dice.values() for m, _ in d))
    print("## Dice of the top-(100-p)% mask, side by side\n")
    print("| method | " + " | ".join(f"{name} p{p:g}" for name, _ in runs for p in ps) + " |")
    print("|---|" + "---|" * (len(runs) * len(ps)))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{dice[name].get((m, p), float('nan')):.3f}" for name, _ in runs for p in ps)
              + " |")
    print("\n## The paper's headline Dice (ProtoPNet) beside ours\n")
    print("| method | paper | " + " | ".join(f"{name} (best p)" for name, _ in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for method, paper in PAPER_DICE[args.dataset].items():
        best = [max((v for (m, _), v in dice[name].items() if m == method), default=float("nan")) for name, _ in runs]
        print(f"| {method} | {paper:.3f} | " + " | ".join(f"{v:.3f}" for v in best) + " |")
    for name, folder in runs:
        print(f"\n<!-- {name}: {folder} -->\n{(folder / 'summary.md').read_text()}")


if __name__ == "__main__":
    main()
