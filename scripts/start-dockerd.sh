#!/usr/bin/env bash
# Starts dockerd in the background when no daemon answers, and waits for it.
# --userland-proxy=false: published loopback ports go through iptables, which
# doubles their request rate on these machines.
set -euo pipefail
log_dir="${1:-/var/log/kybernetes}"
if docker info >/dev/null 2>&1; then exit 0; fi
mkdir -p "$log_dir"
echo "starting dockerd (log: $log_dir/dockerd.log)"
# Its own session: it outlives the shell (and process group) that started it.
setsid nohup dockerd --userland-proxy=false >"$log_dir/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 0.5
done
echo "dockerd did not start; last lines of $log_dir/dockerd.log:" >&2
tail -n 30 "$log_dir/dockerd.log" >&2
exit 1
