#!/usr/bin/env bash
# Installs the Debian packages the cluster and its tests need, only when missing.
set -euo pipefail
need=()
# debootstrap builds the Python base of the component images where no registry is reachable.
for pkg in docker.io etcd-server busybox-static iproute2 iptables nftables debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
