#!/usr/bin/env bash
# The package as a user gets it: `npm pack` the library, install the tarball
# into fresh projects with plain `npm install` (tfjs from the registry), and run
# test/package/example.mjs there (lossAndGrad, and a tiny tfjs model trained
# through margin-softmax/tfjs). The tarball is linted first (publint,
# @arethetypeswrong/cli).
#   1. prebuilt: PATH holds node and npm only (no CMake, compiler or nvcc);
#      the addon must come from prebuilds/ and nothing may be compiled.
#   2. --build-from-source without cmake-js: npm's node-gyp builds the CPU backend.
#   3. --margin-softmax-cpu-only with cmake-js installed: cmake-js, CUDA disabled.
# Needs build/Release (the addon to ship; `npm ci` builds it). SKIP_SOURCE_BUILDS=1
# runs only the first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/margin-softmax-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== npm pack"
tgz="$work/$(npm pack --pack-destination "$work" --silent | tail -1)"
tar -tzf "$tgz" | grep -E '^package/(prebuilds/|dist/index\.js|LICENSE|scripts/install\.js)' | sort
if tar -tzf "$tgz" | grep -qE '^package/(build/|lib/|train/|test/|tsconfig)'; then
  echo "the tarball carries build outputs, sources or the training package:"; tar -tzf "$tgz" | grep -E '^package/(build|lib|train|test|tsconfig)' | head; exit 1
fi
echo "tarball: $(du -h "$tgz" | cut -f1)"

echo "== publint and attw on the tarball"
# publint: package.json's fields against the files shipped (--strict: warnings
# fail too); attw: every entry point's types resolve under node10, node16 (CJS
# and ESM) and bundler resolution. Both exit non-zero on a problem.
npx --no-install publint run "$tgz" --strict
npx --no-install attw "$tgz"

new_project() {  # dir
  mkdir -p "$1"
  echo '{ "name": "user-project", "version": "1.0.0", "private": true, "type": "module" }' > "$1/package.json"
  cp "$root/test/package/example.mjs" "$1/"
}

echo "== 1. prebuilt addon, no build tools on the PATH (node, npm, sh only)"
mkdir -p "$work/bin"
ln -s "$(command -v node)" "$work/bin/node"
ln -s "$(command -v npm)" "$work/bin/npm"
ln -s "$(command -v sh)" "$work/bin/sh"   # npm runs the install script with sh
p="$work/prebuilt"
new_project "$p"
start=$(date +%s)
(cd "$p" && PATH="$work/bin" npm install --no-audit --no-fund --foreground-scripts "$tgz" @tensorflow/tfjs 2>&1 | tail -5)
echo "install: $(( $(date +%s) - start )) s, node_modules $(du -sh "$p/node_modules" | cut -f1)"
if [ -e "$p/node_modules/margin-softmax/build" ]; then echo "the prebuilt install compiled something (build/ exists)"; exit 1; fi
(cd "$p" && EXPECT_ADDON=prebuilds node example.mjs)

if [ "${SKIP_SOURCE_BUILDS:-0}" = 1 ]; then exit 0; fi

echo "== 2. npm install --build-from-source (no cmake-js: node-gyp, CPU only)"
p="$work/from-source"
new_project "$p"
(cd "$p" && npm install --no-audit --no-fund --foreground-scripts --build-from-source "$tgz" @tensorflow/tfjs 2>&1 | grep -E '^margin-softmax:|gyp info ok|error' || true)
(cd "$p" && EXPECT_ADDON=build EXPECT_CUDA=0 node example.mjs)

echo "== 3. npm install --margin-softmax-cpu-only (cmake-js, CUDA disabled)"
p="$work/cpu-only"
new_project "$p"
(cd "$p" && npm install --no-audit --no-fund --foreground-scripts --margin-softmax-cpu-only "$tgz" @tensorflow/tfjs cmake-js 2>&1 | grep -E '^margin-softmax:|CPU backend only|error' || true)
(cd "$p" && EXPECT_ADDON=build EXPECT_CUDA=0 node example.mjs)
echo "package test: all installs work"
