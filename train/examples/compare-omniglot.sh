#!/usr/bin/env bash
# The 7-loss × 3-seed comparison on the Omniglot recipe (train/examples/omniglot.sh's
# settings, with each loss at its paper parameters), one run at a time, each
# finished run recorded as docs/results/compare-omniglot/<loss>-seed<k>.json
# (commit them). A run whose file exists is skipped, so the comparison
# accumulates over several sittings: run this again to continue (LOSSES=a,b and
# SEEDS=0 run a part, for example one loss per core). At the end
# (and with REPORT_ONLY=1 alone) the report merges the files present, names
# the runs still missing, and gives each loss minus ArcFace seed by seed:
# docs/results/compare-omniglot/compare.md.
# One run is about 45 minutes on a quiet 2-core machine; 21 runs about 16 h.
# EPOCHS=N and STEPS=a,b shorten it (a different configuration: its files are
# kept apart in the report, so use another RESULTS folder).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../../shared/data/omniglot_background
RESULTS=${RESULTS:-../docs/results/compare-omniglot}
ALL_LOSSES=softmax,arcface,cosface,combined,elastic-arc,cvm,adaptive
ALL_SEEDS=0,1,2
LOSSES=${LOSSES:-$ALL_LOSSES}
SEEDS=${SEEDS:-$ALL_SEEDS}
EPOCHS=${EPOCHS:-40}
STEPS=${STEPS:-25,35}
if [ ! -d "$DATA" ]; then echo "skipping: $DATA not found (Omniglot lives in ../../shared/data)"; exit 0; fi
mkdir -p "$RESULTS"
if [ "${REPORT_ONLY:-0}" != 1 ]; then
  for seed in ${SEEDS//,/ }; do
    for loss in ${LOSSES//,/ }; do
      file="$RESULTS/$loss-seed$seed.json"
      if [ -f "$file" ]; then echo "have $file"; continue; fi
      out="runs/compare-omniglot/$loss/seed$seed"
      node dist/cli.js train --data "$DATA" --out "$out" --overwrite --quiet --no-plots \
        --margin "$loss" --seed "$seed" --size 32 \
        --flip 0 --rotate 10 --scale-jitter 0.15 --shear 10 --shift 2 \
        --epochs "$EPOCHS" --lr 0.1 --lr-steps "$STEPS" "$@"
      node dist/cli.js eval --checkpoint "$out" --data "$DATA" --n-way 20 --k-shot 1 --episodes 1000 --json "$out/oneshot.json" > /dev/null
      node dist/commands/ledger.js record "$out" "$out/oneshot.json" "$file"
      echo "recorded $file"
    done
  done
fi
# The report covers the whole comparison, whichever LOSSES and SEEDS this call ran.
node dist/commands/ledger.js report "$RESULTS" --losses "$ALL_LOSSES" --seeds "$ALL_SEEDS" --reference arcface
