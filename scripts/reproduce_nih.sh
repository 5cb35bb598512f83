#!/usr/bin/env bash
# Reproduce the MDM paper's NIH ChestX-ray14 comparison for users with the data and a GPU: train XProtoNet with the
# published settings (configs/nih_xprotonet.yaml), evaluate every method against the 984 boxes of
# BBox_List_2017.csv (the best of each finding's prototypes by Dice, as the paper), and write the tables, per
# finding too, beside the paper's numbers. Every step resumes where it stopped when the script is run again.
# The paper's NIH headline (Dice 0.256 -> 0.283) is for ProtoPNet: CONFIG= a ProtoPNet NIH config compares like
# with like.
#
#   [DEVICE=cuda] [CONFIG=configs/nih_xprotonet.yaml] scripts/reproduce_nih.sh /data/NIH [runs/reproduce_nih]
set -euo pipefail
ROOT=${1:?usage: scripts/reproduce_nih.sh NIH_ROOT [OUT_DIR]}
OUT=${2:-runs/reproduce_nih}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/nih_xprotonet.yaml}
METHODS=upsample,mdm,gradcam,gradcampp,scorecam,ablationcam
mkdir -p "$OUT"
protomdm check-data --dataset nih --root "$ROOT"
python - "$ROOT" "$OUT/config.yaml" "$CONFIG" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[3]))
cfg["data"]["root"] = sys.argv[1]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
RESUME=(); [ -f "$OUT/model/last.pt" ] && RESUME=(--resume "$OUT/model/last.pt")
protomdm train --config "$OUT/config.yaml" --out "$OUT/model" --device "$DEVICE" "${RESUME[@]}"
AGAIN=(); [ -f "$OUT/eval/results.csv" ] && AGAIN=(--resume)
protomdm evaluate --dataset nih --root "$ROOT" --ckpt "$OUT/model/best.pt" --methods "$METHODS" \
  --percentiles 50,60,70,80,90,95 --prototype-policy best-dice --device "$DEVICE" --out "$OUT/eval" \
  "${AGAIN[@]}" --quiet
python scripts/paper_tables.py --dataset nih "$OUT/eval" > "$OUT/tables.md"
echo "tables: $OUT/tables.md"
