#!/usr/bin/env bash
# Reproduce the MDM paper's CUB-200-2011 comparison, for users with the data and a GPU: ProtoPNet with the published
# settings (configs/cub_protopnet.yaml), every method evaluated against the segmentations and the part locations
# with the first prototype of each class (as the paper), the tables beside the paper's numbers in OUT/tables.md.
#
#   [DEVICE=cuda] [CONFIG=configs/cub_protopnet.yaml] scripts/reproduce_cub.sh /data/CUB_200_2011 [runs/reproduce_cub]
exec "$(dirname "$0")/reproduce.sh" cub "$@"
