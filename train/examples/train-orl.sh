#!/usr/bin/env bash
# Train the small ResNet with the adaptive angular margin on ORL faces (30 people),
# verify on the 10 held-out people, then re-evaluate the checkpoint with `eval`.
# Uses ../../shared/data relative to the training package (train/); skips when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../../shared/data/orl_faces
if [ ! -d "$DATA" ]; then echo "skipping: $DATA not found (the ORL faces live in ../../shared/data)"; exit 0; fi
OUT=${OUT:-runs/orl-adaptive}
rm -rf "$OUT"
node dist/cli.js train --data "$DATA" --out "$OUT" --margin adaptive --m1 0.03 --m2 0.5 --epochs 8 --lr-steps 6
node dist/cli.js eval --checkpoint "$OUT" --data "$DATA" --eval-flip
echo "plots: $OUT/plots/training.svg $OUT/plots/roc.svg $OUT/plots/theta.svg"
