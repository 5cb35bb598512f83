#!/usr/bin/env bash
# The GPU figures of issue 21: the paper's MDM schedule against ours, seconds per image (one image at a time, as
# `protomdm localize` runs), peak GPU memory and agreement, for ResNet-50 at 224 px (ProtoPNet) and DenseNet-121 at
# 512 px (XProtoNet), in fp32 and with precision auto (bf16 where its passes are measured faster; the prec column
# says which). The paper's sequential schedule is timed over REF_STEPS steps per mask and projected to 2000 (the
# table says so). With random weights the agreement column is meaningless; pass trained checkpoints as
# PROTOPNET_CKPT / XPROTONET_CKPT for meaningful agreement.
set -euo pipefail
REF_STEPS=${REF_STEPS:-20}
IMAGES=${IMAGES:-2}
run() {  # model backbone size precision [ckpt] [more bench flags]
  local ckpt=()
  [ -n "${5:-}" ] && ckpt=(--ckpt "$5")
  echo "== $1 / $2 at $3 px, $4 ${*:6}"
  ${PROTOMDM:-protomdm} bench --model "$1" --backbone "$2" --img-size "$3" --precision "$4" --device cuda \
    --images "$IMAGES" --ref-steps "$REF_STEPS" --quiet "${ckpt[@]}" "${@:6}"
}
for precision in fp32 auto; do
  run protopnet resnet50 224 "$precision" "${PROTOPNET_CKPT:-}"
  run xprotonet densenet121 512 "$precision" "${XPROTONET_CKPT:-}"
done
# the network as it is (on this project's CPU DenseNet-121 ran slower channels-last): does the GPU differ?
run xprotonet densenet121 512 fp32 "${XPROTONET_CKPT:-}" --no-channels-last
run protopnet resnet50 224 fp32 "${PROTOPNET_CKPT:-}" --no-channels-last --no-fold-batchnorm
