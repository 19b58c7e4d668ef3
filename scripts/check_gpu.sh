#!/usr/bin/env bash
# check_gpu.sh — the one-shot check of the CUDA backend on a GPU machine.
#
#   scripts/check_gpu.sh          run the check (on the GPU machine)
#   scripts/check_gpu.sh pack     (on a machine with Node and node_modules) pack the Node
#                                 binary and the node_modules the check needs into
#                                 .gpu-carry/ for a GPU machine without network or Node
#
# Writes ${OUT:-./gpu-check-out}/results.json (every step's status and time, the
# self-test cases, the benchmarks) and check.log (every step's output). Two
# files on purpose: some runners bring back only a few.
#
# Steps, most important first (each under its own timeout and a global
# deadline, CHECK_DEADLINE_S, default 540 s, so a 10-minute runner still gets
# the files back):
#   env           nvidia-smi, nvcc, node, python/torch versions
#   native_build  nvcc builds ms_cuda_selftest and ms_cuda_bench (no Node, no
#                 CMake needed) for this GPU's architecture only
#   selftest      CUDA backend vs CPU backend in C++ (every margin kind, edge
#                 cases, bf16, filter, the N=512/C=100003/d=512 shape, MarginHead extras)
#   bench_native  kernel timings on device-resident data (N=512, d=512,
#                 C=1e5 and 1e6, adaptive margin, s=64; TF32 and BF16)
#   memcheck      compute-sanitizer --tool memcheck on a small case
#   racecheck     compute-sanitizer --tool racecheck on a small case
#   torch         bench/torch_reference.py (eager PyTorch and the bare matmuls)
#   node_setup    Node + node_modules: present, or unpacked from .gpu-carry/, or npm ci
#   addon_build   cmake-js build of the addon with CUDA (this GPU's architecture only)
#   vitest        REQUIRE_CUDA=1 npx vitest run test/gpu
#   sanitize_node compute-sanitizer memcheck + racecheck on a tiny Node script
#   bench_js      bench/gpu_bench.mjs (API-level loss timings, host copies included; MarginHead.step on the device)
# STEPS="selftest bench_native" runs a subset (native_build is implied when needed).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# ---- pack mode ----------------------------------------------------------------------
if [ "${1:-}" = "pack" ]; then
  mkdir -p .gpu-carry
  grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
  node_bin="$(readlink -f "$(command -v node)")"
  tar -C "$(dirname "$node_bin")" -cJf .gpu-carry/node.tar.xz "$(basename "$node_bin")"
  # Everything the check needs (cmake-js, node-addon-api, node-api-headers,
  # bindings, vitest and its tree), without the heavy packages it does not use.
  tar -C "$root" -cJf .gpu-carry/node_modules.tar.xz \
    --exclude='node_modules/@tensorflow' --exclude='node_modules/typescript' --exclude='node_modules/vega*' \
    --exclude='node_modules/core-js' --exclude='node_modules/@webgpu' --exclude='node_modules/.cache' node_modules
  du -sh .gpu-carry/*
  echo "carry .gpu-carry (name it in the runner's carry list); the check unpacks it"
  exit 0
fi

OUT="${OUT:-./gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d /tmp/ms-gpu-check.XXXXXX)"
logs="$work/logs"
mkdir -p "$logs"
deadline=$(( $(date +%s) + ${CHECK_DEADLINE_S:-540} ))
steps="${STEPS:-env native_build selftest bench_native memcheck racecheck torch node_setup addon_build vitest sanitize_node bench_js}"
: > "$work/status.tsv"
bin="$work/bin"
mkdir -p "$bin"

want() { [[ " $steps " == *" $1 "* ]]; }

# run_step NAME TIMEOUT_S CMD... — runs CMD with output in logs/NAME.log, records status.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local now left t0 rc status
  now=$(date +%s)
  left=$(( deadline - now ))
  if [ "$left" -le 10 ]; then
    printf '%s\tskipped (deadline)\t0\n' "$name" >> "$work/status.tsv"
    echo "== $name: skipped (deadline)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s.%N)
  # Through bash -c so that steps can be shell functions (exported below).
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$logs/$name.log" 2>&1
  rc=$?
  local dt
  dt=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))" 2>/dev/null || echo 0)
  if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="timeout"; else status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >> "$work/status.tsv"
  echo "   $status in ${dt}s"
  tail -n 3 "$logs/$name.log" | sed 's/^/   | /'
  [ $rc -eq 0 ]
}

skip_step() {
  printf '%s\tskipped (%s)\t0\n' "$1" "$2" >> "$work/status.tsv"
  echo "== $1: skipped ($2)"
}

# ---- GPU architecture -------------------------------------------------------------------
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
arch="${CUDA_ARCH:-${cap:-90}}"
cuda_home="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}"
export root work bin arch cuda_home

# ---- env --------------------------------------------------------------------------------------
env_info() {
  echo "date: $(date -u +%FT%TZ)"
  echo "uname: $(uname -a)"
  nvidia-smi || true
  nvcc --version || true
  echo "arch: sm_$arch  CUDA_HOME: $cuda_home"
  command -v compute-sanitizer && compute-sanitizer --version | head -2
  command -v node && node --version
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || true
  nproc
}
export -f env_info
want env && run_step env 60 env_info

# ---- native build (nvcc only) ------------------------------------------------------------------
native_build() {
  set -e
  local obj="$work/obj"
  mkdir -p "$obj"
  local nv=(nvcc -std=c++17 -O3 -arch="sm_$arch" --expt-relaxed-constexpr -lineinfo -Xcompiler -O3,-ffp-contract=fast,-fno-strict-aliasing)
  local pids=()
  for f in native/cuda/small_kernels native/cuda/forward_tiles native/cuda/backward_dx native/cuda/backward_dw \
           native/cuda/loss_cuda native/tools/cuda_selftest native/tools/cuda_bench; do
    "${nv[@]}" -c "$f.cu" -o "$obj/$(basename "$f").o" & pids+=($!)
  done
  for f in native/cpu/*.cc; do
    g++ -std=c++17 -O3 -pthread -ffp-contract=fast -fno-strict-aliasing -Wno-psabi -c "$f" -o "$obj/cpu_$(basename "$f" .cc).o" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  local kernels=("$obj"/small_kernels.o "$obj"/forward_tiles.o "$obj"/backward_dx.o "$obj"/backward_dw.o "$obj"/loss_cuda.o)
  nvcc -arch="sm_$arch" "$obj/cuda_selftest.o" "${kernels[@]}" "$obj"/cpu_*.o -o "$bin/ms_cuda_selftest" -lpthread
  nvcc -arch="sm_$arch" "$obj/cuda_bench.o" "${kernels[@]}" "$obj"/cpu_*.o -o "$bin/ms_cuda_bench" -lpthread
  ls -la "$bin"
}
export -f native_build
need_native=0
for s in selftest bench_native memcheck racecheck; do want "$s" && need_native=1; done
native_ok=0
if [ $need_native -eq 1 ] || want native_build; then
  run_step native_build 300 native_build && native_ok=1
fi

# ---- native checks --------------------------------------------------------------------------------
if want selftest; then
  if [ $native_ok -eq 1 ]; then run_step selftest 300 "$bin/ms_cuda_selftest" --json "$work/selftest.json"; else skip_step selftest "no build"; fi
fi
if want bench_native; then
  bench_native() {
    "$bin/ms_cuda_bench" --n 512 --d 512 --c 100000,1000000 --iters 20 --warmup 3 &&
      "$bin/ms_cuda_bench" --n 512 --d 512 --c 100000,1000000 --iters 20 --warmup 3 --bf16
  }
  export -f bench_native
  if [ $native_ok -eq 1 ]; then run_step bench_native 240 bench_native; else skip_step bench_native "no build"; fi
fi
sanitizer_ok=0
command -v compute-sanitizer > /dev/null && sanitizer_ok=1
for tool in memcheck racecheck; do
  if want $tool; then
    if [ $native_ok -eq 0 ]; then skip_step $tool "no build"
    elif [ $sanitizer_ok -eq 0 ]; then skip_step $tool "compute-sanitizer not found"
    else run_step $tool 240 compute-sanitizer --tool $tool --error-exitcode 99 "$bin/ms_cuda_selftest" --small
    fi
  fi
done

# ---- PyTorch reference --------------------------------------------------------------------------------
if want torch; then
  run_step torch 240 env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --json "$work/torch.json"
fi

# ---- Node stage ---------------------------------------------------------------------------------------
node_setup() {
  set -e
  if [ -f .gpu-carry/node.tar.xz ] && ! command -v node > /dev/null; then
    mkdir -p "$work/node/bin"
    tar -C "$work/node/bin" -xJf .gpu-carry/node.tar.xz
  fi
  export PATH="$work/node/bin:$PATH"
  command -v node
  node --version
  if [ ! -d node_modules/vitest ] || [ ! -d node_modules/cmake-js ]; then
    if [ -f .gpu-carry/node_modules.tar.xz ]; then
      tar -C "$root" -xJf .gpu-carry/node_modules.tar.xz
    else
      npm ci --ignore-scripts --no-audit --no-fund || npm install --ignore-scripts --no-audit --no-fund
    fi
  fi
  test -d node_modules/vitest && test -d node_modules/cmake-js && test -d node_modules/node-addon-api
}
export -f node_setup
node_ok=0
if want node_setup || want addon_build || want vitest || want sanitize_node || want bench_js; then
  run_step node_setup 180 node_setup && node_ok=1
  export PATH="$work/node/bin:$PATH"
fi
addon_ok=0
if want addon_build; then
  if [ $node_ok -eq 1 ]; then
    run_step addon_build 300 npx cmake-js compile --CDCMAKE_CUDA_ARCHITECTURES="$arch" && addon_ok=1
  else skip_step addon_build "no Node"; fi
fi
if want vitest; then
  if [ $addon_ok -eq 1 ]; then
    run_step vitest 300 env REQUIRE_CUDA=1 npx vitest run test/gpu --reporter=verbose
  else skip_step vitest "no addon"; fi
fi
if want sanitize_node; then
  if [ $addon_ok -eq 1 ] && [ $sanitizer_ok -eq 1 ]; then
    sanitize_node() {
      compute-sanitizer --tool memcheck --error-exitcode 99 node test/gpu/sanitize_case.mjs &&
        compute-sanitizer --tool racecheck --error-exitcode 99 node test/gpu/sanitize_case.mjs
    }
    export -f sanitize_node
    run_step sanitize_node 240 sanitize_node
  else skip_step sanitize_node "no addon or no compute-sanitizer"; fi
fi
if want bench_js; then
  if [ $addon_ok -eq 1 ]; then
    run_step bench_js 240 node --expose-gc bench/gpu_bench.mjs --json "$work/bench_js.json" --native "$bin/ms_cuda_bench"
  else skip_step bench_js "no addon"; fi
fi

# ---- results ---------------------------------------------------------------------------------------------
{
  for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    echo "################ $(basename "$f" .log)"
    # Keep each step's log under 2 MB (head and tail).
    if [ "$(wc -c < "$f")" -gt 2000000 ]; then head -c 1000000 "$f"; echo; echo "[… cut …]"; tail -c 1000000 "$f"; else cat "$f"; fi
  done
} > "$OUT/check.log"

python3 - "$work" "$OUT/results.json" "$arch" <<'PY'
import json, os, sys
work, out, arch = sys.argv[1], sys.argv[2], sys.argv[3]
res = {"arch": "sm_" + arch, "steps": {}}
for line in open(os.path.join(work, "status.tsv")):
    name, status, secs = line.rstrip("\n").split("\t")
    res["steps"][name] = {"status": status, "seconds": float(secs or 0)}
def load(path):
    try:
        return json.load(open(path))
    except Exception as e:  # missing or partial
        return None
res["selftest"] = load(os.path.join(work, "selftest.json"))
bench = []
p = os.path.join(work, "logs", "bench_native.log")
if os.path.exists(p):
    for line in open(p):
        line = line.strip()
        if line.startswith("{"):
            try:
                bench.append(json.loads(line))
            except Exception:
                pass
res["bench_native"] = bench
res["torch"] = load(os.path.join(work, "torch.json"))
res["bench_js"] = load(os.path.join(work, "bench_js.json"))
p = os.path.join(work, "logs", "vitest.log")
if os.path.exists(p):
    res["vitest_summary"] = [l.strip() for l in open(p, errors="replace") if l.strip().startswith(("Test Files", "Tests", "FAIL"))][:60]
env = os.path.join(work, "logs", "env.log")
if os.path.exists(env):
    res["env"] = open(env, errors="replace").read()[-4000:]
res["ok"] = all(v["status"] == "ok" for v in res["steps"].values() if not v["status"].startswith("skipped"))
json.dump(res, open(out, "w"), indent=1)
print(json.dumps({k: v["status"] for k, v in res["steps"].items()}, indent=1))
print("overall:", "ok" if res["ok"] else "FAILED")
PY
echo "results: $OUT/results.json, log: $OUT/check.log"
rm -rf "$work"
