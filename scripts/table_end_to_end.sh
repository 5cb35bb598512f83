#!/usr/bin/env bash
# Issue 13's end-to-end run on the CPU: a synthetic collection written the way users' data comes (images/*.png at
# 256 px, labels.csv with |-separated findings, split and patient, boxes.csv in the PNGs' pixels), trained as a
# table with `protomdm train` (a multi-label ProtoPNet and an XProtoNet), then `protomdm evaluate --dataset table`:
# MDM beside the networks' own upsampling search, Dice per finding.
#   bash scripts/table_end_to_end.sh [OUT] [IMAGES] [EVAL_IMAGES]
set -euo pipefail
OUT=${1:-runs/table_end_to_end}
N=${2:-600}
LIMIT=${3:-12}
mkdir -p "$OUT"
python - "$OUT" "$N" <<'PY'
import sys, yaml
from pathlib import Path
from protomdm.data.synthetic import write_table
out, n = Path(sys.argv[1]), int(sys.argv[2])
if not (out / "data" / "labels.csv").exists():
    write_table(out / "data", n, size=64, channels=1, scale=4)
for arch in ("protopnet", "xprotonet"):
    cfg = yaml.safe_load(open(f"configs/synthetic_{arch}.yaml"))
    cfg["model"].update(in_channels=1, mean=[0.5], std=[0.25])
    if arch == "protopnet":  # multi-label grey findings take it longer than the single-label colour demo
        cfg["optim"].update(joint_epochs=24, push_epochs=[])  # one push, at the end
    cfg["data"] = {"dataset": "table", "root": str(out / "data"), "table": "labels.csv", "boxes": "boxes.csv",
                   "batch_size": 32, "cache_dir": str(out / "cache")}
    yaml.safe_dump(cfg, open(out / f"{arch}.yaml", "w"), sort_keys=False)
PY
for ARCH in protopnet xprotonet; do
  [ -f "$OUT/$ARCH/best.pt" ] || protomdm train --config "$OUT/$ARCH.yaml" --out "$OUT/$ARCH" --device cpu --quiet
  protomdm evaluate --dataset table --config "$OUT/$ARCH.yaml" --ckpt "$OUT/$ARCH/best.pt" --methods upsample,mdm \
    --percentiles 80,90,95 --limit "$LIMIT" --no-faithfulness --device cpu --out "$OUT/eval_$ARCH" --overwrite --quiet
done
