#!/usr/bin/env bash
# Reproduce the MDM paper's NIH ChestX-ray14 tables, for users with the data and a GPU: ProtoPNet (its Table 5,
# configs/nih_protopnet.yaml: multi-label, as XProtoNet's paper trains its ProtoPNet baseline) and XProtoNet (its
# Table 6, configs/nih_xprotonet.yaml), trained with the published settings, every method evaluated against the 984
# boxes of BBox_List_2017.csv with the best of each finding's prototypes by Dice (as the paper); the two models'
# tables side by side, beside the paper's headline numbers, in OUT/tables.md.
#
#   [DEVICE=cuda] [CONFIGS="configs/nih_protopnet.yaml configs/nih_xprotonet.yaml"] \
#     scripts/reproduce_nih.sh /data/NIH [runs/reproduce_nih]
exec "$(dirname "$0")/reproduce.sh" nih "$@"
