#!/usr/bin/env bash
# Runs the CUDA backend's real kernel sources on the CPU (no GPU, no driver):
# native/cuda/*.cu are compiled as plain C++ with emu.h force-included and the
# reference WMMA (mma.h here) shadowing the real one, with AddressSanitizer and
# UBSan, and linked with the CPU backend and native/tools/cuda_selftest.cu. The
# self-test then compares the emulated CUDA backend with the CPU backend.
#
#   test/gpu/emu/run.sh            the --emu suite (a few minutes on 2 cores)
#   test/gpu/emu/run.sh --small    three tiny cases
#
# Needs g++ ≥ 11 and the CUDA headers (CUDA_HOME, default /usr/local/cuda);
# nvcc itself is not used. Build output goes to ${EMU_OUT:-/tmp/ms-cuda-emu}.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
out="${EMU_OUT:-/tmp/ms-cuda-emu}"
mkdir -p "$out"
cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
flags=(-std=c++20 -O2 -g $san -pthread -Wall -Wno-unknown-pragmas -Wno-unused-function
       -I test/gpu/emu -I "$cuda_inc" -include test/gpu/emu/emu.h)
objs=()
pids=()
for f in native/cuda/small_kernels native/cuda/forward_tiles native/cuda/backward_dx native/cuda/backward_dw \
         native/cuda/loss_cuda native/tools/cuda_selftest; do
  g++ -x c++ "${flags[@]}" -c "$f.cu" -o "$out/$(basename "$f").o" &
  pids+=($!)
  objs+=("$out/$(basename "$f").o")
done
for f in $(cd native/cpu && ls *.cc | sed "s/\.cc$//"); do
  g++ -std=c++17 -O2 -g $san -pthread -ffp-contract=fast -fno-strict-aliasing -Wno-psabi -c "native/cpu/$f.cc" -o "$out/$f.o" &
  pids+=($!)
  objs+=("$out/$f.o")
done
g++ -std=c++20 -O2 -g $san -pthread -I test/gpu/emu -I "$cuda_inc" -c test/gpu/emu/emu_runtime.cc -o "$out/emu_runtime.o" &
pids+=($!)
objs+=("$out/emu_runtime.o")
for p in "${pids[@]}"; do wait "$p"; done
g++ $san -pthread "${objs[@]}" -o "$out/selftest_emu"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--emu)
ASAN_OPTIONS=detect_leaks=0 "$out/selftest_emu" "${args[@]}"
