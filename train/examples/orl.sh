#!/usr/bin/env bash
# ORL faces recipe: the small ResNet with the adaptive angular margin, trained
# on 30 people and verified on the 10 held out (--split-seed 0), 32×32 input,
# horizontal flips (a mirrored face is the same person) and a small random
# affine warp (±10° rotation, ±10 % scale, ±5° shear, ±2 px shift), 16 epochs,
# learning rate ×0.1 at epochs 10 and 14. The settings and what each one
# bought are in docs/results/pilots/README.md. Writes the run folder and
# re-evaluates the checkpoint with `eval`.
# Uses ../../shared/data relative to train/examples; skips when it is absent.
# Extra arguments are passed to train (for example --workers 2 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../../shared/data/orl_faces
if [ ! -d "$DATA" ]; then echo "skipping: $DATA not found (the ORL faces live in ../../shared/data)"; exit 0; fi
OUT=${OUT:-runs/orl-recipe}
node dist/cli.js train --data "$DATA" --out "$OUT" --overwrite \
  --margin adaptive --m1 0.03 --m2 0.5 --size 32 \
  --flip 0.5 --rotate 10 --scale-jitter 0.1 --shear 5 --shift 2 \
  --epochs 16 --lr 0.1 --lr-steps 10,14 "$@"
node dist/cli.js eval --checkpoint "$OUT" --data "$DATA" --eval-flip
