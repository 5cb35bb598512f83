#!/usr/bin/env bash
# The methods' comparison: MDM beside the networks' own search (upsample), RISE, extremal perturbation, Grad-CAM,
# Grad-CAM++, saliency, SmoothGrad and PRP on the synthetic benchmark: Dice/IoU/PPV/sensitivity at p80/90/95,
# deletion/insertion AUC, Average Drop/Increase and seconds per localization, for the trained demo model (run
# `protomdm demo` first) or CKPT. Saliency, SmoothGrad and PRP need `pip install 'protomdm[attribution]'`.
#   bash scripts/compare_methods.sh [CKPT] [OUT]      # DEVICE=cpu|cuda, IMAGES=24, METHODS=mdm,prp,...
set -euo pipefail
CKPT=${1:-protomdm-demo/model/best.pt}
OUT=${2:-runs/compare_methods}
[ -f "$CKPT" ] || { echo "no checkpoint at $CKPT: run 'protomdm demo' first, or pass one" >&2; exit 2; }
PROTOMDM=${PROTOMDM:-protomdm}
$PROTOMDM evaluate --dataset synthetic --ckpt "$CKPT" --limit "${IMAGES:-24}" --percentiles 80,90,95 \
  --methods "${METHODS:-upsample,mdm,rise,extremal,gradcam,gradcampp,saliency,smoothgrad,prp}" \
  --device "${DEVICE:-auto}" --out "$OUT" --overwrite --quiet
cat "$OUT/summary.md"
echo "seconds per localization (timings.csv):"
"${PYTHON:-python3}" -c "import sys, pandas as pd; print(pd.read_csv(sys.argv[1]).groupby('method').seconds.mean().round(3).to_string())" "$OUT/timings.csv"
