#!/usr/bin/env bash
# Builds a Debian bookworm image with Python 3 from Debian's packages
# (debootstrap), for machines with no image registry; with iproute2,
# iptables and nftables, which the pod network and kube-proxy need. Done once: skipped when the
# image exists at this recipe's version.
set -euo pipefail
image="${1:-kybernetes/python-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
version=3
if [ "$(docker image inspect -f '{{index .Config.Labels "io.kybernetes.base-version"}}' "$image" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "building $image with debootstrap (once; about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,iproute2,iptables,nftables \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["python3"]' \
  --change "LABEL io.kybernetes.base-version=$version" - "$image" >/dev/null
