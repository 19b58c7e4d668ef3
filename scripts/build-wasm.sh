#!/usr/bin/env bash
# Builds the WebAssembly backend: wasm/margin_softmax.wasm, one self-contained
# module (no JavaScript glue; lib/wasm/ instantiates it in Node and in the
# browser). It is the CPU backend's own code (native/cpu's fused loss, top-k
# and SGD update, native/margin_math.h) on the portable kernels compiled for
# SIMD128, plus the small C entry of native/wasm/.
#
# Toolchain: Emscripten from Debian's packages (`apt-get install emscripten`,
# 3.1.6 on bookworm). Its clang 14 lowers the kernels' 4-lane vector types to
# SIMD128; its libc++/libc++abi give the C++ the backend uses (exceptions, as
# native WebAssembly exceptions with -fwasm-exceptions: no JS glue), and
# -sSTANDALONE_WASM makes a module whose few imports are WASI calls that
# lib/wasm/imports.ts provides. The module is single-threaded.
#
# Memory: the module's memory grows on demand up to 4 GiB (wasm32's address
# space); lib/wasm/ refuses a call whose arrays cannot fit.
#
# Usage: scripts/build-wasm.sh [out-dir]   (default: wasm/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wasm}
if ! command -v em++ >/dev/null; then
  echo "build-wasm: em++ not found: install Emscripten (Debian: apt-get install -y emscripten)" >&2
  exit 1
fi
# Debian's emscripten runs its JS tools with the system's node, which must see
# Debian's node modules (acorn); a Node from elsewhere does not look there.
export NODE_PATH=${NODE_PATH:+$NODE_PATH:}/usr/share/nodejs
# Debian ships a frozen cache of prebuilt system libraries without the
# variants for native wasm exceptions: build those (once, about a minute) into
# a writable cache whose other files link to Debian's.
export EM_CACHE=${EM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/margin-softmax-emscripten}
export EM_FROZEN_CACHE=0
if [ ! -e "$EM_CACHE/sysroot" ]; then
  mkdir -p "$EM_CACHE"
  cp -rs /usr/share/emscripten/cache/. "$EM_CACHE/"
fi
mkdir -p "$out"

sources=(
  native/wasm/loss_wasm.cc
  native/wasm/topk_wasm.cc
  native/wasm/module_wasm.cc
  native/cpu/fused_loss_cpu.cc
  native/cpu/topk_cpu.cc
  native/cpu/sgd_cpu.cc
  native/cpu/simd_dispatch.cc
  native/cpu/bf16_gemm.cc
  native/cpu/neon_bf16_gemm.cc
  native/cpu/thread_pool.cc
)
flags=(
  -std=c++17 -O3 -msimd128 -ffp-contract=fast -fno-strict-aliasing -Wall -Wno-psabi
  -fwasm-exceptions
)
link=(
  --no-entry -sSTANDALONE_WASM=1
  -sALLOW_MEMORY_GROWTH=1 -sINITIAL_MEMORY=16777216 -sMAXIMUM_MEMORY=4294967296
  -sTOTAL_STACK=1048576
  -sERROR_ON_UNDEFINED_SYMBOLS=1
)
em++ "${flags[@]}" "${link[@]}" "${sources[@]}" -o "$out/margin_softmax.wasm"
echo "build-wasm: $out/margin_softmax.wasm ($(stat -c %s "$out/margin_softmax.wasm") bytes)"
