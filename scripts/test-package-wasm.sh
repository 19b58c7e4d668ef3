#!/usr/bin/env bash
# The package without a native addon, as a user gets it where none fits:
# `npm pack`, then two fresh projects that install the tarball with plain
# `npm install` (tfjs from the registry) and run test/package/wasm-example.mjs
# (the library loads, 'auto' is the wasm backend, the loss matches the float64
# reference, a tiny tfjs model trains through a MarginHead):
#   1. the prebuilt addon installed, then deleted (prebuilds/, build/);
#   2. a tarball without prebuilds/, installed with only node, npm and sh on
#      the PATH: the automatic source build fails (no compiler) and the
#      install must still succeed, falling back to the wasm backend.
# Needs build/Release and wasm/margin_softmax.wasm (npm pack's prepack packs both).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/margin-softmax-package-wasm.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== npm pack"
tgz="$work/$(npm pack --pack-destination "$work" --silent | tail -1)"
tar -tzf "$tgz" | grep -q '^package/wasm/margin_softmax.wasm$' || { echo "the tarball lacks wasm/margin_softmax.wasm"; exit 1; }

new_project() {  # dir
  mkdir -p "$1"
  echo '{ "name": "user-project", "version": "1.0.0", "private": true, "type": "module" }' > "$1/package.json"
  cp "$root/test/package/wasm-example.mjs" "$root/test/reference.mjs" "$1/"
}
mkdir -p "$work/bin"
ln -s "$(command -v node)" "$work/bin/node"
ln -s "$(command -v npm)" "$work/bin/npm"
ln -s "$(command -v sh)" "$work/bin/sh"

echo "== 1. installed with the prebuilt addon, which is then deleted"
p="$work/deleted"
new_project "$p"
(cd "$p" && PATH="$work/bin" npm install --no-audit --no-fund "$tgz" @tensorflow/tfjs 2>&1 | tail -2)
rm -rf "$p/node_modules/margin-softmax/prebuilds" "$p/node_modules/margin-softmax/build"
(cd "$p" && node wasm-example.mjs)

echo "== 2. no prebuilt addon and no compiler: the install falls back to wasm"
mkdir -p "$work/repack" && tar -xzf "$tgz" -C "$work/repack"
rm -rf "$work/repack/package/prebuilds"
tgz2="$work/no-prebuilds.tgz"
tar -czf "$tgz2" -C "$work/repack" package
p="$work/no-compiler"
new_project "$p"
(cd "$p" && PATH="$work/bin" npm install --no-audit --no-fund --foreground-scripts "$tgz2" @tensorflow/tfjs 2>&1 | grep -E '^margin-softmax:' || true)
if [ -e "$p/node_modules/margin-softmax/build/Release/margin_softmax.node" ]; then echo "an addon was built although no compiler was on the PATH"; exit 1; fi
(cd "$p" && node wasm-example.mjs)
echo "package test (wasm): the library loads and computes without a native addon"
