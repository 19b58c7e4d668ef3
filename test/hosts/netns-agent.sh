#!/usr/bin/env bash
# netns-agent.sh — Open MPI's remote-shell agent for test/hosts/netns-mpirun.sh:
# mpirun calls it as `netns-agent.sh <host> <command…>`, as it would call ssh.
# The command runs in the host's network namespace, with the host's name
# (a UTS namespace of its own), in the host's working folder, with TMPDIR
# there (Open MPI's session files), like a login on that machine.
set -euo pipefail
host=$1
shift
: "${MARGIN_SOFTMAX_NETNS_PREFIX:?netns-agent.sh runs under netns-mpirun.sh}"
: "${MARGIN_SOFTMAX_HOSTS_DIR:?netns-agent.sh runs under netns-mpirun.sh}"
if ! [[ $host =~ ^h[0-9]+$ ]]; then
  echo "netns-agent.sh: expected a host named h<k> but received '$host'" >&2
  exit 2
fi
home="$MARGIN_SOFTMAX_HOSTS_DIR/$host"
exec ip netns exec "$MARGIN_SOFTMAX_NETNS_PREFIX$host" unshare --uts \
  env TMPDIR="$home/tmp" MARGIN_SOFTMAX_HOST_DIR="$home" \
  sh -c 'hostname "$1"; cd "$2" || exit 1; shift 2; eval "$*"' sh "$host" "$home" "$@"
