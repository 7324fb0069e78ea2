#!/usr/bin/env bash
# Installs the Debian packages the cluster and its tests need, only when missing.
set -euo pipefail
need=()
# debootstrap builds the Python base of the component images where no registry is reachable.
for pkg in docker.io etcd-server busybox-static iproute2 iptables nftables debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The Node.js client test (a client generated from protos/ at test time) needs node and npm;
# a machine that has them from elsewhere keeps its own.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
