#!/usr/bin/env bash
# Reproduce the MDM paper's CUB-200-2011 comparison for users with the data and a GPU: train ProtoPNet with the
# published settings (configs/cub_protopnet.yaml), evaluate every method against the segmentations and the part
# locations (the first prototype of each class, as the paper), and write the tables beside the paper's numbers.
# Every step resumes where it stopped when the script is run again.
#
#   [DEVICE=cuda] [CONFIG=configs/cub_protopnet.yaml] scripts/reproduce_cub.sh /data/CUB_200_2011 [runs/reproduce_cub]
set -euo pipefail
ROOT=${1:?usage: scripts/reproduce_cub.sh CUB_ROOT [OUT_DIR]}
OUT=${2:-runs/reproduce_cub}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/cub_protopnet.yaml}
METHODS=upsample,mdm,gradcam,gradcampp,scorecam,ablationcam
mkdir -p "$OUT"
protomdm check-data --dataset cub --root "$ROOT"
python - "$ROOT" "$OUT/config.yaml" "$CONFIG" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[3]))
cfg["data"]["root"] = sys.argv[1]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
RESUME=(); [ -f "$OUT/model/last.pt" ] && RESUME=(--resume "$OUT/model/last.pt")
protomdm train --config "$OUT/config.yaml" --out "$OUT/model" --device "$DEVICE" "${RESUME[@]}"
for TRUTH in segmentation parts; do
  EVAL="$OUT/eval_$TRUTH"
  AGAIN=(); [ -f "$EVAL/results.csv" ] && AGAIN=(--resume)
  protomdm evaluate --dataset cub --root "$ROOT" --ckpt "$OUT/model/best.pt" --truth "$TRUTH" \
    --methods "$METHODS" --percentiles 50,60,70,80,90,95 --prototype-policy first --device "$DEVICE" \
    --out "$EVAL" "${AGAIN[@]}" --quiet
done
python scripts/paper_tables.py --dataset cub "$OUT/eval_segmentation" "$OUT/eval_parts" > "$OUT/tables.md"
echo "tables: $OUT/tables.md"
