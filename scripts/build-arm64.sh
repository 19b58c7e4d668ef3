#!/usr/bin/env bash
# Cross-compiles the addon for linux-arm64 (glibc, CPU backend: no CUDA, no
# MPI) into build-arm64/Release/margin_softmax.node, with Debian's
# g++-aarch64-linux-gnu (`apt-get install g++-aarch64-linux-gnu`). An N-API
# addon links nothing of Node on Linux and the node-api headers are the same
# for every architecture, so no arm64 Node is needed to build it.
# scripts/prebuild.js packs the result as prebuilds/linux-arm64/node.napi.glibc.node;
# scripts/test-arm64.sh runs it under qemu-aarch64. Incremental (cmake-js compile).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX_ARM64=${CXX_ARM64:-aarch64-linux-gnu-g++}
command -v "$CXX_ARM64" >/dev/null || { echo "build-arm64: $CXX_ARM64 not found (apt-get install g++-aarch64-linux-gnu)" >&2; exit 1; }
npx cmake-js compile -O build-arm64 --arch arm64 \
  --CDMS_DISABLE_CUDA=ON \
  --CDCMAKE_SYSTEM_NAME=Linux --CDCMAKE_SYSTEM_PROCESSOR=aarch64 \
  --CDCMAKE_CXX_COMPILER="$CXX_ARM64"
