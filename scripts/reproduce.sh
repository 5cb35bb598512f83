#!/usr/bin/env bash
# Shared steps of reproduce_cub.sh and reproduce_nih.sh: check the data, train with the published settings, evaluate
# every method, write the tables beside the paper's numbers. Each step resumes where it stopped when run again.
#
#   [DEVICE=cuda] [CONFIGS="a.yaml b.yaml"] scripts/reproduce.sh {cub|nih} DATA_ROOT [OUT_DIR]
# Each config trains into OUT_DIR/<its name>; the tables of all of them are written side by side.
set -euo pipefail
DATASET=${1:?"usage: scripts/reproduce.sh cub|nih DATA_ROOT [OUT_DIR]"}
ROOT=${2:?"usage: scripts/reproduce.sh cub|nih DATA_ROOT [OUT_DIR]"}
OUT=${3:-runs/reproduce_$DATASET}
DEVICE=${DEVICE:-cuda}
case "$DATASET" in
  cub) CONFIGS=${CONFIGS:-configs/cub_protopnet.yaml}; POLICY=first; TRUTHS=(parts)
       if [ -d "$ROOT/segmentations" ] || [ -d "$ROOT/../segmentations" ]; then TRUTHS=(segmentation parts)
       else echo "no segmentations/ beside $ROOT (a separate archive): evaluating against the part locations only"; fi ;;
  nih) CONFIGS=${CONFIGS:-"configs/nih_protopnet.yaml configs/nih_xprotonet.yaml"}; POLICY=best-dice; TRUTHS=(boxes) ;;
  *) echo "dataset must be cub or nih" >&2; exit 2 ;;
esac
METHODS=upsample,mdm,gradcam,gradcampp,scorecam,ablationcam
mkdir -p "$OUT"
protomdm check-data --dataset "$DATASET" --root "$ROOT"
EVALS=()
for CONFIG in $CONFIGS; do
  NAME=$(basename "$CONFIG" .yaml); RUN="$OUT/$NAME"; mkdir -p "$RUN"
  python - "$ROOT" "$RUN/config.yaml" "$CONFIG" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[3]))
cfg["data"]["root"] = sys.argv[1]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
  RESUME=(); [ -f "$RUN/model/last.pt" ] && RESUME=(--resume "$RUN/model/last.pt")
  protomdm train --config "$RUN/config.yaml" --out "$RUN/model" --device "$DEVICE" "${RESUME[@]}"
  for TRUTH in "${TRUTHS[@]}"; do
    EVAL="$RUN/eval_$TRUTH"; EVALS+=("$NAME=$EVAL")
    AGAIN=(); [ -f "$EVAL/results.csv" ] && AGAIN=(--resume)
    TRUTH_FLAG=(); [ "$DATASET" = cub ] && TRUTH_FLAG=(--truth "$TRUTH")
    protomdm evaluate --dataset "$DATASET" --root "$ROOT" --ckpt "$RUN/model/best.pt" "${TRUTH_FLAG[@]}" \
      --methods "$METHODS" --percentiles 50,60,70,80,90,95 --prototype-policy "$POLICY" --device "$DEVICE" \
      --out "$EVAL" "${AGAIN[@]}" --quiet
  done
done
python scripts/paper_tables.py --dataset "$DATASET" "${EVALS[@]}" > "$OUT/tables.md"
echo "tables: $OUT/tables.md"
