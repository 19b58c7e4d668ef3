#!/usr/bin/env bash
# Omniglot recipe: the small ResNet with the adaptive angular margin, trained
# on 75 % of the background set's characters and tested on the 25 % held out
# (--split-seed 0; characters the model never saw), 32×32 input, no flips
# (a mirrored character is another character), a random affine warp as in
# the one-shot literature (±10° rotation, ±15 % scale, ±10° shear, ±2 px
# shift), 40 epochs, learning rate ×0.1 at epochs 25 and 35. Then verification
# and 20-way one-shot (nearest prototype, 1000 episodes) on the held-out
# characters. Measured on 2026-12-07 (seed 0, Intel Xeon Emerald Rapids, one
# core, the other one busy): 96.60 % verification and 93.47 % 20-way 1-shot on
# the 61 held-out characters, in 36 minutes; --workers auto (the default) uses
# both cores of an idle machine. The settings and the measurements behind them
# are in docs/results/pilots/README.md.
# Uses ../../shared/data relative to train/examples; skips when it is absent.
# Extra arguments are passed to train (for example --workers 1 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../../shared/data/omniglot_background
if [ ! -d "$DATA" ]; then echo "skipping: $DATA not found (Omniglot lives in ../../shared/data)"; exit 0; fi
OUT=${OUT:-runs/omniglot-recipe}
node dist/cli.js train --data "$DATA" --out "$OUT" --overwrite \
  --margin adaptive --m1 0.03 --m2 0.5 --size 32 \
  --flip 0 --rotate 10 --scale-jitter 0.15 --shear 10 --shift 2 \
  --epochs 40 --lr 0.1 --lr-steps 25,35 "$@"
node dist/cli.js eval --checkpoint "$OUT" --data "$DATA" --n-way 20 --k-shot 1 --episodes 1000
