#!/usr/bin/env bash
# The Table-3-shaped comparison in the README: every loss, same backbone, data,
# split and seeds 0, 1, 2. ORL faces: 8 epochs (about 25 min here); Omniglot:
# 5 epochs (about 1 h 50 min on 2 cores). Extra arguments are passed on
# (for example --resume to reuse finished runs after an interruption).
# Uses ../../shared/data relative to the training package (train/); skips a set that is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {  # data dir, epochs, out
  if [ -d "$1" ]; then
    node dist/cli.js compare --data "$1" --seeds 0,1,2 --epochs "$2" --out "$3" "${@:4}"
  else
    echo "skipping $1: not found"
  fi
}
run ../../shared/data/orl_faces "${ORL_EPOCHS:-8}" runs/compare-orl "$@"
run ../../shared/data/omniglot_background "${OMNIGLOT_EPOCHS:-5}" runs/compare-omniglot "$@"
