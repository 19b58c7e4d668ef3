#!/usr/bin/env bash
# The Table-3-shaped comparison: every loss, same backbone, data, split and seeds.
# ORL (a few minutes per seed and loss) and Omniglot (longer: fewer epochs by default here).
# Uses ../shared/data relative to the project root; skips a set that is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=()
for d in ../shared/data/orl_faces ../shared/data/omniglot_background; do
  if [ -d "$d" ]; then ARGS+=(--data "$d"); else echo "skipping $d: not found"; fi
done
if [ ${#ARGS[@]} -eq 0 ]; then echo "no data sets found: skipping"; exit 0; fi
node dist/cli.js compare "${ARGS[@]}" --seeds 0,1,2 --epochs "${EPOCHS:-8}" --out "${OUT:-runs/compare}"
