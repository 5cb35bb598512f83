#!/usr/bin/env python
"""Our evaluation tables next to the MDM paper's headline numbers.

    python scripts/paper_tables.py --dataset nih runs/reproduce_nih/eval [more eval folders] > tables.md

Reads each folder's summary.csv (written by `protomdm evaluate`) and prints, per folder, Dice/IoU/PPV/Sensitivity
per method and percentile (the layout of the paper's Tables 1-6) and the faithfulness table, then the paper's
headline Dice for ProtoPNet's upsampling search and for MDM beside ours. The paper states those two numbers per
dataset; we do not guess the rest of its tables.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PAPER_DICE = {"nih": {"upsample": 0.256, "mdm": 0.283}, "cub": {"upsample": 0.432, "mdm": 0.516}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(PAPER_DICE))
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    for folder in args.folders:
        summary = folder / "summary.md"
        if not summary.exists():
            raise SystemExit(f"{summary} not found: run protomdm evaluate into {folder} first")
        print(f"<!-- {folder} -->\n{summary.read_text()}")
        with open(folder / "summary.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "dice" and r["finding"] == "all"]
        print("## Dice: ours against the paper's headline numbers\n")
        print("| method | paper | " + " | ".join(f"ours p{r['percentile']}" for r in rows if r["method"] == "mdm") + " |")
        print("|---|---|" + "---|" * sum(r["method"] == "mdm" for r in rows))
        for method, paper in PAPER_DICE[args.dataset].items():
            ours = [float(r["value"]) for r in rows if r["method"] == method]
            print(f"| {method} | {paper:.3f} | " + " | ".join(f"{v:.3f}" for v in ours) + " |")
        print()


if __name__ == "__main__":
    main()
