#!/usr/bin/env bash
# Runs the GPU test suite (test/gpu/*.test.ts) against an addon whose CUDA
# backend is the CPU emulation of the real kernel sources (see emu.h): a check
# of the tests themselves (tolerances, API paths, async calls) without a GPU.
# Works in a scratch copy of the repository (${EMU_REPO:-/tmp/ms-emu-repo}), so
# the checkout's own build/ is never touched. The cases sized for a GPU
# (10⁵ classes; gpuOnlyTest in gpu-helpers.ts, listed in test/gpu/README.md)
# are skipped unless EMU_FULL=1: minutes each when every CTA is emulated.
# CI runs this script (npm run test:gpu-emu): about 2–3 minutes on 2 cores.
#
#   test/gpu/emu/vitest_emu.sh [extra vitest args]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
repo="${EMU_REPO:-/tmp/ms-emu-repo}"
cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
rm -rf "$repo"
mkdir -p "$repo"
tar -C "$root" --exclude=./node_modules --exclude='./build*' --exclude=./.git -cf - . | tar -C "$repo" -xf -
ln -sfn "$root/node_modules" "$repo/node_modules"
cd "$repo"
obj="$repo/build/emu-obj"
mkdir -p "$obj" build/Release
napi_inc="$(node -p "require('node-api-headers').include_dir")"
addon_inc="$(node -p "require('node-addon-api').include_dir")"
common=(-O2 -g -fPIC -pthread -w -DMS_WITH_CUDA=1 -DMS_MPI_DISABLED=1 -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED)
pids=()
for f in native/cuda/*.cu; do  # the CUDA backend (its programs live in native/tools)
  g++ -x c++ -std=c++20 "${common[@]}" -I test/gpu/emu -I "$cuda_inc" -include test/gpu/emu/emu.h \
    -c "$f" -o "$obj/$(basename "$f" .cu).o" &
  pids+=($!)
done
for f in native/cpu/*.cc native/addon.cc native/napi/*.cc native/comm/mpi_stub.cc; do
  g++ -std=c++17 "${common[@]}" -ffp-contract=fast -fno-strict-aliasing -I "$napi_inc" -I "$addon_inc" \
    -c "$f" -o "$obj/$(basename "$f" .cc).o" &
  pids+=($!)
done
g++ -std=c++20 "${common[@]}" -I test/gpu/emu -I "$cuda_inc" -c test/gpu/emu/emu_runtime.cc -o "$obj/emu_runtime.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
g++ -shared -pthread "$obj"/*.o -o build/Release/margin_softmax.node
node -e "const i=require('./build/Release/margin_softmax.node').info(); console.log('emulated addon:', JSON.stringify(i.cuda))"
# One file at a time: two emulated files side by side on 2 cores starve
# vitest's worker RPC ("Timeout calling onTaskUpdate").
REQUIRE_CUDA=1 npx vitest run test/gpu --no-file-parallelism --testTimeout=1800000 "$@"
