#!/usr/bin/env bash
# netns-mpirun.sh — one Open MPI job whose ranks share nothing but TCP.
#
#   bash test/hosts/netns-mpirun.sh <hosts> <dir> [mpirun options] -- <program> [args]
#
# Builds <hosts> "hosts" h0 … h<K-1>: one Linux network namespace each, joined
# by virtual Ethernet pairs to a bridge in a switch namespace, with the
# addresses 10.77.0.1 … 10.77.0.K/24 on those links only (no route, no
# address, nothing added in the namespace this script runs in). mpirun runs
# in h0 and starts one daemon per host through test/hosts/netns-agent.sh (its
# "ssh": `ip netns exec`, plus a host name of its own); the ranks are one MPI
# job, placed one per host in rank order (--map-by node).
#
# All MPI traffic crosses TCP on those links: the point-to-point layer is
# ob1 over the tcp and self transports only (no shared memory, no UCX), the
# collectives have no shared-memory component, and the daemons' out-of-band
# channel uses the same interfaces. Each host gets its own working folder
# <dir>/h<k> (the ranks start in it, with TMPDIR in it), so nothing is shared
# through the file system but what the caller passes by path.
#
# On exit (also on an error or a signal) the namespaces are deleted and any
# process left in them is killed. SIGINT / SIGTERM to this script go to
# mpirun. Writes <dir>/traffic.json: the bytes each host's link sent and
# received during the job. Exit status: mpirun's. Needs root and iproute2.
set -euo pipefail

usage='usage: netns-mpirun.sh <hosts> <dir> [mpirun options] -- <program> [args]'
hosts=${1:?$usage}
dir=${2:?$usage}
shift 2
options=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do options+=("$1"); shift; done
if [ $# -lt 2 ]; then echo "netns-mpirun.sh: no program after --; $usage" >&2; exit 2; fi
shift
if ! [[ $hosts =~ ^[1-9][0-9]?$ ]] || [ "$hosts" -gt 64 ]; then
  echo "netns-mpirun.sh: expected a number of hosts in [1, 64] but received '$hosts'" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# Names unique to this job (several jobs may run at once on one machine).
prefix="ms$$x"
subnet=10.77.0
switch="${prefix}sw"
created=()

cleanup() {
  local ns pid
  for ns in "${created[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Namespaces left by a job of this script that was killed outright (SIGKILL
# skips the trap): their creator's pid is in the name.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^ms[0-9]+x' || true); do
  owner=${ns#ms}
  owner=${owner%%x*}
  if ! kill -0 "$owner" 2>/dev/null; then
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  fi
done

ip netns add "$switch"
created+=("$switch")
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
: > "$dir/hostfile"
for ((k = 0; k < hosts; k++)); do
  ns="${prefix}h$k"
  ip netns add "$ns"
  created+=("$ns")
  # The pair is created inside the host's namespace, one end then moved into
  # the switch's: neither end ever exists in the caller's namespace.
  ip -n "$ns" link add eth0 type veth peer name "h$k" netns "$switch"
  ip -n "$switch" link set "h$k" master br0 up
  ip -n "$ns" addr add "$subnet.$((k + 1))/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  mkdir -p "$dir/h$k/tmp"
  echo "h$k slots=64" >> "$dir/hostfile"
done

counters() {
  local k sep=''
  printf '['
  for ((k = 0; k < hosts; k++)); do
    printf '%s{"host":"h%d","txBytes":%s,"rxBytes":%s}' "$sep" "$k" \
      "$(ip netns exec "${prefix}h$k" cat /sys/class/net/eth0/statistics/tx_bytes)" \
      "$(ip netns exec "${prefix}h$k" cat /sys/class/net/eth0/statistics/rx_bytes)"
    sep=','
  done
  printf ']\n'
}

# The agent reads these from its environment (mpirun passes its own on).
export MARGIN_SOFTMAX_NETNS_PREFIX=$prefix MARGIN_SOFTMAX_HOSTS_DIR=$dir
export OMPI_MCA_plm_rsh_agent="$here/netns-agent.sh"
export OMPI_MCA_plm_rsh_no_tree_spawn=1
export OMPI_MCA_orte_keep_fqdn_hostnames=1
ip netns exec "${prefix}h0" mpirun --allow-run-as-root \
  --hostfile "$dir/hostfile" --map-by node \
  --mca pml ob1 --mca btl tcp,self --mca coll '^sm' --mca osc '^ucx' \
  --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24" \
  "${options[@]}" sh -c 'cd "$MARGIN_SOFTMAX_HOST_DIR" && exec "$@"' sh "$@" &
mpirun_pid=$!
trap 'kill -INT $mpirun_pid 2>/dev/null || true' INT
trap 'kill -TERM $mpirun_pid 2>/dev/null || true' TERM
status=0
# wait returns early when a trapped signal arrives: wait again until mpirun is gone.
while :; do
  wait "$mpirun_pid" && status=0 || status=$?
  kill -0 "$mpirun_pid" 2>/dev/null || break
done
counters > "$dir/traffic.json"
exit "$status"
