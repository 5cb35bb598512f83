#!/usr/bin/env bash
# Reproduce the MDM paper's NIH ChestX-ray14 comparison, for users with the data and a GPU: XProtoNet with the
# published settings (configs/nih_xprotonet.yaml), every method evaluated against the 984 boxes of
# BBox_List_2017.csv with the best of each finding's prototypes by Dice (as the paper), the tables (per finding too)
# beside the paper's numbers in OUT/tables.md. The paper's NIH headline (Dice 0.256 -> 0.283) is for ProtoPNet:
# point CONFIG at a ProtoPNet NIH config to compare like with like.
#
#   [DEVICE=cuda] [CONFIG=configs/nih_xprotonet.yaml] scripts/reproduce_nih.sh /data/NIH [runs/reproduce_nih]
exec "$(dirname "$0")/reproduce.sh" nih "$@"
